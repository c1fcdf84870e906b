// The cluster page: topologies (each linking to its page), supervisors with their slots,
// and the nimbus leader and standbys, from GET /api/v1/cluster.

import { api, badge, count, duration, el, live, rate, table } from "./common.js";

function topologyRow(t) {
  return el("tr", { "data-topology": t.name },
    el("td", {}, el("a", { href: `/topology/${encodeURIComponent(t.name)}` }, t.name)),
    el("td", {}, badge(t.status)),
    el("td", { class: "num" }, duration(t.uptime)),
    el("td", { class: "num" }, count(t.workers)),
    el("td", { class: "num" }, count(t.tasks)),
    el("td", { class: "num" }, rate(t.rate)));
}

function supervisorRow(s) {
  const used = s.used ?? 0;
  const share = s.slots ? used / s.slots : 0;
  return el("tr", { "data-supervisor": s.id },
    el("td", {}, s.id),
    el("td", {}, s.host),
    el("td", { class: "num" }, count(s.slots)),
    el("td", { class: "num" }, count(s.used)),
    el("td", { class: "num" }, count(s.slots - used)),
    el("td", {}, el("div", { class: "bar", title: `${used} of ${s.slots} slots used` },
      el("div", { class: share >= 1 ? "fill full" : "fill", style: { width: `${Math.round(share * 100)}%` } }))));
}

function nimbusRows(cluster) {
  const urls = [...new Set([...(cluster.nimbus || []), ...(cluster.leader ? [cluster.leader] : [])])].sort();
  return urls.map((url) => el("tr", { "data-nimbus": url },
    el("td", {}, /^https?:\/\//.test(url) ? el("a", { href: url }, url) : url),
    el("td", {}, badge(url === cluster.leader ? "leader" : "standby"))));
}

async function refresh() {
  const cluster = await api("GET", "cluster");
  document.getElementById("topologies").replaceChildren(table(
    ["name", "status", ["uptime", "num"], ["workers", "num"], ["tasks", "num"], ["throughput", "num"]],
    [...cluster.topologies].sort((a, b) => a.name.localeCompare(b.name)).map(topologyRow),
    "No topology is running. Submit one with: streamflow submit FILE --name NAME"));
  document.getElementById("supervisors").replaceChildren(table(
    ["id", "host", ["slots", "num"], ["used", "num"], ["free", "num"], "usage"],
    cluster.supervisors.map(supervisorRow),
    "No supervisor is registered."));
  const nimbus = document.getElementById("nimbus");
  nimbus.replaceChildren(table(["address", "role"], nimbusRows(cluster), "No nimbus is registered."));
  if (!cluster.leader) nimbus.prepend(el("p", { class: "warning" }, "No leader at the moment: " +
    "running topologies keep running, but nothing can be submitted or changed."));
}

live(refresh);

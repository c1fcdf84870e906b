// The topology page (/topology/NAME): summary and actions, the DAG, one card per component
// with its counters over the window and since start, the last errors and the workers,
// from GET /api/v1/status/NAME. Actions POST to the same API as the CLI.

import {
  api, badge, count, DASH, duration, el, latency, live, plural, rate, showProblem, table, when,
} from "./common.js";
import { drawDag, flowOrder, HOT_CAPACITY, SYSTEM_KINDS } from "./dag.js";

const NAME = decodeURIComponent(location.pathname.replace(/^\/topology\//, ""));
const COUNTERS = ["emitted", "executed", "acked", "failed", "replayed"];
const ERRORS_SHOWN = 20;
const $ = (id) => document.getElementById(id);

function facts(pairs) {
  return el("dl", { class: "facts" }, pairs.map(([label, value, attrs = {}]) =>
    el("div", attrs, el("dt", {}, label), el("dd", {}, value))));
}

function counters(c) {
  const row = (label, key, values) => el("tr", { "data-window": key }, el("th", {}, label),
    COUNTERS.map((f) => {
      const value = values ? values[f] : null;
      return el("td", { class: f === "failed" && value > 0 ? "num bad" : "num", "data-field": f }, count(value));
    }));
  const windowLabel = c.window ? `last ${duration(c.window.seconds)}` : "last 10 min";
  return el("table", { class: "counters" },
    el("thead", {}, el("tr", {}, el("th"), COUNTERS.map((f) => el("th", { class: "num" }, f)))),
    el("tbody", {}, row(windowLabel, "window", c.window), row("since start", "total", c)));
}

/** A component's own metrics: {name: number | {"label=value": number}}. */
function metrics(values) {
  const rows = Object.entries(values || {}).sort(([a], [b]) => a.localeCompare(b)).flatMap(([name, v]) =>
    typeof v === "object" && v !== null
      ? Object.entries(v).map(([label, n]) => [`${name}{${label}}`, n])
      : [[name, v]]);
  if (rows.length === 0) return null;
  return el("details", { class: "metrics" }, el("summary", {}, `metrics (${rows.length})`),
    el("table", {}, el("tbody", {}, rows.map(([name, n]) =>
      el("tr", {}, el("th", {}, name), el("td", { class: "num" }, count(n)))))));
}

function workerOf(error) {
  return error.host ? `${error.host}:${error.port}` : (error.worker ?? DASH);
}

function componentCard(name, c) {
  const hot = c.capacity > HOT_CAPACITY;
  const error = c.last_error;
  return el("article", { class: `component component-${c.kind}${hot ? " hot" : ""}`, "data-component": name },
    el("header", {},
      el("h3", {}, name),
      el("span", { class: "kind" }, c.kind),
      el("span", {}, plural(c.tasks, "task")),
      el("span", { class: "rate", "data-field": "rate" }, rate(c.rate))),
    counters(c),
    facts([
      ["capacity", c.capacity == null ? DASH : c.capacity.toFixed(3),
        { class: hot ? "hot" : undefined, "data-field": "capacity" }],
      ["execute latency p50 / p99", latency(c.execute_latency_ms)],
      ["complete latency p50 / p99", latency(c.complete_latency_ms)],
      ["queued", count(c.queue)],
      ["backpressure", c.backpressure_seconds == null ? DASH : `${c.backpressure_seconds.toFixed(1)} s`],
      ["errors", count(c.errors)],
    ]),
    metrics(c.metrics),
    error ? el("p", { class: "last-error" },
      el("strong", {}, "last error "), `${when(error.time)}, task ${error.task} on ${workerOf(error)}: `,
      el("code", {}, error.message)) : null);
}

function errorRows(errors) {
  return Object.entries(errors || {})
    .flatMap(([component, list]) => list.map((e) => ({ component, ...e })))
    .sort((a, b) => b.time - a.time)
    .slice(0, ERRORS_SHOWN)
    .map((e) => el("tr", {},
      el("td", { class: "nowrap" }, when(e.time)),
      el("td", {}, e.component),
      el("td", { class: "num" }, e.task ?? DASH),
      el("td", { class: "nowrap", title: e.worker ?? "" }, workerOf(e)),
      el("td", {}, el("code", {}, e.message))));
}

function workerRow(w) {
  const tasks = w.tasks || [];
  return el("tr", {},
    el("td", {}, w.slot),
    el("td", {}, w.host),
    el("td", { class: "num" }, w.port),
    el("td", {}, `${tasks.length} (${tasks.join(", ")})`),
    el("td", {}, badge(w.alive ? "alive" : "dead")),
    el("td", { class: "num" }, duration(w.uptime)),
    el("td", { class: "num" }, w.pid ?? DASH));
}

let parallelismFor = "";

/** One parallelism input per component, rebuilt only when the components change, so that
 * what the user is typing survives refreshes. */
function rebalanceInputs(components) {
  const names = flowOrder(components).filter((n) => !SYSTEM_KINDS.includes(components[n].kind));
  if (names.join("\n") === parallelismFor) return;
  parallelismFor = names.join("\n");
  const inputs = names.map((n) => el("label", {}, n,
    el("input", { type: "number", min: 1, step: 1, "data-component": n })));
  $("rebalance-parallelism").replaceChildren(el("legend", {}, "parallelism"), ...inputs);
}

function render(status) {
  const components = status.components || {};
  const order = flowOrder(components);
  $("status").replaceChildren(badge(status.status));
  $("facts").replaceChildren(facts([
    ["id", status.id],
    ["uptime", duration(status.uptime)],
    ["workers", `${status.workers.filter((w) => w.alive).length} alive of ${status.workers.length}`],
    ["tasks", count(order.reduce((sum, n) => sum + (components[n].tasks || 0), 0))],
  ]));
  $("activate").disabled = status.status !== "inactive";
  $("deactivate").disabled = status.status !== "active";
  $("kill").disabled = status.status === "killed";
  rebalanceInputs(components);
  $("rebalance-workers").placeholder = status.workers.length;
  for (const input of $("rebalance-parallelism").querySelectorAll("input")) {
    input.placeholder = components[input.dataset.component]?.tasks ?? "";
  }
  $("dag").replaceChildren(drawDag(components));
  $("components").replaceChildren(...order.map((n) => componentCard(n, components[n])));
  $("errors").replaceChildren(table(["time", "component", ["task", "num"], "worker", "message"],
    errorRows(status.errors), "No errors."));
  $("workers").replaceChildren(table(
    ["slot", "host", ["port", "num"], "tasks", "state", ["uptime", "num"], ["pid", "num"]],
    status.workers.map(workerRow), "No worker is assigned."));
}

function say(message, failed) {
  const result = $("action-result");
  result.className = failed ? "failed" : "done";
  result.textContent = message;
}

/** POSTs an action, says how it went, and refreshes the page at once. */
async function act(op, body, done) {
  try {
    await api("POST", `${op}/${encodeURIComponent(NAME)}`, body);
    say(done, false);
  } catch (error) {
    if (error.status === 401) showProblem(error);
    say(error.status === 401 ? "Not done: nimbus needs the API token (401)." : error.message, true);
  }
  refreshNow();
}

function numberIn(input) {
  return input.value === "" ? null : Number(input.value);
}

function rebalance(event) {
  event.preventDefault();
  const body = { parallelism: {} };
  const workers = numberIn($("rebalance-workers"));
  if (workers !== null) body.workers = workers;
  for (const input of $("rebalance-parallelism").querySelectorAll("input")) {
    if (numberIn(input) !== null) body.parallelism[input.dataset.component] = numberIn(input);
  }
  if (body.workers === undefined && Object.keys(body.parallelism).length === 0) {
    say("Rebalance: enter a worker count or a component's parallelism first.", true);
    return;
  }
  act("rebalance", body, "Rebalance requested: tasks move over the next seconds.");
  for (const input of $("rebalance-form").querySelectorAll("input")) input.value = "";
}

function kill() {
  const wait = numberIn($("kill-wait"));
  const after = wait === null ? "the message timeout" : `${wait} s`;
  if (!confirm(`Kill topology ${NAME}? Its spouts stop now and its workers after ${after}.`)) return;
  act("kill", wait === null ? {} : { wait }, `Killed: the workers stop after ${after}.`);
}

document.title = `streamflow · ${NAME}`;
$("crumb").textContent = NAME;
$("name").textContent = NAME;
$("activate").addEventListener("click", () => act("activate", {}, "Activated: spouts emit again."));
$("deactivate").addEventListener("click", () => act("deactivate", {}, "Deactivated: spouts stop emitting."));
$("kill").addEventListener("click", kill);
$("rebalance-form").addEventListener("submit", rebalance);
const refreshNow = live(async () => render(await api("GET", `status/${encodeURIComponent(NAME)}`)));

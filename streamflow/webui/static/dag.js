// The topology's DAG as an SVG drawing, layered left to right: spouts in the first column,
// each bolt one column right of its furthest input. Edges carry their grouping (and
// fields, and the stream when it is not "default"); nodes carry their rate and turn red
// when their capacity is above 0.8. Ackers are the engine's, not the user's: left out.

import { plural, rate, svg } from "./common.js";

const NODE_W = 170;
const NODE_H = 58;
const COLUMN_GAP = 130;
const ROW_GAP = 34;
const MARGIN = 16;
export const HOT_CAPACITY = 0.8;

/** Kinds of the engine's own components: not drawn, not rebalanced. */
export const SYSTEM_KINDS = ["acker", "checkpoint"];

/** Column of each component: 0 for those with no input, else one past its furthest input. */
function columns(names, inputs) {
  const column = Object.fromEntries(names.map((n) => [n, 0]));
  for (let pass = 0; pass < names.length; pass++) {  // longest path; bounded even if fed a cycle
    for (const name of names) {
      for (const input of inputs[name]) {
        if (input.source in column) column[name] = Math.max(column[name], column[input.source] + 1);
      }
    }
  }
  return column;
}

/** Components in each column, ordered by where their inputs sit, to keep edges from crossing. */
function rows(names, inputs, column) {
  const layers = [];
  for (const name of names) (layers[column[name]] ||= []).push(name);
  const row = {};
  for (const layer of layers.filter(Boolean)) {
    const mean = (name) => {
      const ys = inputs[name].filter((i) => i.source in row).map((i) => row[i.source]);
      return ys.length ? ys.reduce((a, b) => a + b, 0) / ys.length : 0;
    };
    layer.sort((a, b) => mean(a) - mean(b));
    layer.forEach((name, i) => { row[name] = i - (layer.length - 1) / 2; });
  }
  return row;
}

function edgeLabel(input) {
  const fields = input.fields && input.fields.length ? `(${input.fields.join(", ")})` : "";
  const stream = input.stream && input.stream !== "default" ? `${input.stream}: ` : "";
  return `${stream}${input.grouping}${fields}`;
}

function node(name, component, x, y) {
  const hot = component.capacity > HOT_CAPACITY;
  const shown = name.length > 20 ? `${name.slice(0, 19)}…` : name;
  return svg("g", { class: `node node-${component.kind}${hot ? " hot" : ""}`, "data-component": name,
    transform: `translate(${x},${y})` },
  svg("title", {}, `${name} (${component.kind})`),
  svg("rect", { width: NODE_W, height: NODE_H, rx: 7 }),
  svg("text", { x: 12, y: 20, class: "node-name" }, shown),
  svg("text", { x: 12, y: 37, class: "node-detail" }, `${component.kind} · ${plural(component.tasks, "task")}`),
  svg("text", { x: 12, y: 51, class: "node-rate", "data-field": "rate" }, rate(component.rate)));
}

/** Where each component (ackers and the checkpoint coordinator left out) sits: its column and its row (centred on 0). */
function layout(components) {
  const names = Object.keys(components).filter((n) => !SYSTEM_KINDS.includes(components[n].kind));
  const inputs = Object.fromEntries(names.map((n) => [n, components[n].inputs || []]));
  const column = columns(names, inputs);
  return { names, inputs, column, row: rows(names, inputs, column) };
}

/** Component names in the order a tuple meets them (as the graph reads), ackers last. */
export function flowOrder(components) {
  const { names, column, row } = layout(components);
  const placed = [...names].sort((a, b) => column[a] - column[b] || row[a] - row[b]);
  return [...placed, ...Object.keys(components).filter((n) => !names.includes(n)).sort()];
}

/** The drawing of `components` (the status answer's), as an <svg> element. */
export function drawDag(components) {
  const { names, inputs, column, row } = layout(components);
  const tallest = Math.max(1, ...names.map((n) => Math.abs(row[n]) * 2 + 1));
  const xOf = (n) => MARGIN + column[n] * (NODE_W + COLUMN_GAP);
  const yOf = (n) => MARGIN + (row[n] + (tallest - 1) / 2) * (NODE_H + ROW_GAP);

  const edges = [];
  for (const target of names) {
    const bySource = new Map();  // one line per pair; its streams' labels stacked on it
    for (const input of inputs[target].filter((i) => i.source in column)) {
      bySource.set(input.source, [...(bySource.get(input.source) || []), edgeLabel(input)]);
    }
    for (const [source, labels] of bySource) {
      const x1 = xOf(source) + NODE_W, y1 = yOf(source) + NODE_H / 2;
      const x2 = xOf(target), y2 = yOf(target) + NODE_H / 2;
      const mid = (x1 + x2) / 2;
      edges.push(svg("g", { class: "edge", "data-edge": `${source}->${target}` },
        svg("path", { d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2 - 2},${y2}`, "marker-end": "url(#arrow)" }),
        labels.map((label, i) => svg("text", { class: "edge-label", x: mid, "text-anchor": "middle",
          y: (y1 + y2) / 2 - 6 - (labels.length - 1 - i) * 14 }, label))));
    }
  }
  const width = 2 * MARGIN + (Math.max(0, ...Object.values(column)) + 1) * (NODE_W + COLUMN_GAP) - COLUMN_GAP;
  const height = 2 * MARGIN + tallest * (NODE_H + ROW_GAP) - ROW_GAP;
  return svg("svg", { class: "dag", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": "topology graph" },
  svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7,
    markerHeight: 7, orient: "auto-start-reverse" }, svg("path", { d: "M0,0 L10,5 L0,10 z" }))),
  edges,
  names.map((n) => node(n, components[n], xOf(n), yOf(n))));
}

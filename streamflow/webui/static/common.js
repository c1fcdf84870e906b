// What both pages share: the API client (with the token the user saved), building DOM
// nodes without innerHTML (every text from the API is a text node, so it is never markup),
// number formats, and the live refresh loop.

const TOKEN_KEY = "streamflow.token";
const REFRESH_MS = 2000;
export const DASH = "-";

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** One call to the nimbus API; throws an ApiError with nimbus's one-line reason. */
export async function api(method, path, body) {
  const headers = {};
  const token = localStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  // Nimbus takes a POST only as JSON (so that no cross-origin form can make one): always send a body.
  const posted = method === "GET" ? undefined : JSON.stringify(body ?? {});
  if (posted !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(`/api/v1/${path}`, { method, headers, cache: "no-store", body: posted });
  } catch (error) {
    throw new ApiError(0, `Cannot reach nimbus (${error.message}); retrying.`);
  }
  if (response.status === 401) {
    throw new ApiError(401, "Nimbus needs its API token (401 Unauthorized): enter it in the token field " +
      "at the top of the page and press Save.");
  }
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new ApiError(response.status, answer.error || `${response.status} ${response.statusText}`);
  }
  return answer;
}

function build(node, attrs, children) {
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (typeof value === "function") node.addEventListener(key.replace(/^on/, ""), value);
    // Styles through the CSSOM: the Content-Security-Policy refuses style attributes.
    else if (key === "style") Object.assign(node.style, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** An HTML element: attributes (functions become event listeners), then children (text or nodes). */
export function el(tag, attrs = {}, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element, as el() builds HTML ones. */
export function svg(tag, attrs = {}, ...children) {
  return build(document.createElementNS("http://www.w3.org/2000/svg", tag), attrs, children);
}

/**
 * A table with a header row; rows are <tr> nodes. A header given as [title, "num"] is
 * right-aligned over its numbers. Says `empty` when there are no rows.
 */
export function table(headers, rows, empty) {
  if (rows.length === 0) return el("p", { class: "empty" }, empty);
  return el("table", {},
    el("thead", {}, el("tr", {}, headers.map((h) => {
      const [title, cls] = [].concat(h);
      return el("th", { class: cls }, title);
    }))),
    el("tbody", {}, rows));
}

/** "1 task", "3 tasks", "- tasks". */
export function plural(n, word) {
  return `${count(n)} ${word}${n === 1 ? "" : "s"}`;
}

function missing(value) {
  return value === undefined || value === null || Number.isNaN(value);
}

/** A count with thousands separators. */
export function count(value) {
  return missing(value) ? DASH : Math.round(value).toLocaleString("en-US");
}

/** Tuples per second, short: 0.4/s, 87/s, 12.3k/s. */
export function rate(value) {
  if (missing(value)) return DASH;
  if (value >= 1e6) return `${(value / 1e6).toFixed(1)}M/s`;
  if (value >= 1e4) return `${(value / 1e3).toFixed(1)}k/s`;
  return `${value < 10 ? value.toFixed(1) : Math.round(value).toLocaleString("en-US")}/s`;
}

/** Seconds as the two largest units: 45s, 3m 20s, 5h 2m, 2d 4h. */
export function duration(seconds) {
  if (missing(seconds)) return DASH;
  const s = Math.max(0, Math.floor(seconds));
  const parts = [[Math.floor(s / 86400), "d"], [Math.floor(s / 3600) % 24, "h"], [Math.floor(s / 60) % 60, "m"],
    [s % 60, "s"]];
  const first = parts.findIndex(([n]) => n > 0);
  if (first < 0) return "0s";
  return parts.slice(first, first + 2).filter(([n]) => n > 0).map(([n, unit]) => `${n}${unit}`).join(" ");
}

/** Milliseconds, with the precision that matters at that size. */
function millis(value) {
  if (missing(value)) return DASH;
  return `${value < 10 ? value.toFixed(2) : value < 100 ? value.toFixed(1) : Math.round(value)} ms`;
}

/** p50 / p99 of a latency answer ({"p50", "p99"} or null). */
export function latency(quantiles) {
  return quantiles ? `${millis(quantiles.p50)} / ${millis(quantiles.p99)}` : DASH;
}

/** A Unix time as local date and time. */
export function when(seconds) {
  if (missing(seconds)) return DASH;
  const d = new Date(seconds * 1000);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** A status word as a coloured badge (active, inactive, killed, alive, dead, leader...). */
export function badge(word) {
  return el("span", { class: `badge badge-${String(word).replace(/[^a-z]/g, "")}` }, word);
}

/** Shows an error (or hides the banner for null) in the page's #problem banner. */
export function showProblem(error) {
  const banner = document.getElementById("problem");
  banner.hidden = !error;
  banner.replaceChildren(error ? error.message : "");
  document.getElementById("token").classList.toggle("needed", Boolean(error && error.status === 401));
}

/**
 * Calls `refresh` now and every REFRESH_MS, showing its errors in the banner; returns a
 * function that refreshes at once (after an action, say). Calls never overlap.
 */
export function live(refresh) {
  let timer;
  let queue = Promise.resolve();
  async function once() {
    try {
      await refresh();
      showProblem(null);
      document.getElementById("updated").textContent = `updated ${when(Date.now() / 1000).slice(11)}`;
    } catch (error) {
      showProblem(error);
    }
    clearTimeout(timer);
    timer = setTimeout(now, REFRESH_MS);
  }
  function now() {
    queue = queue.then(once);
  }
  setupToken(now);
  now();
  return now;
}

/** The token form in the header: saves the token in localStorage and refreshes. */
function setupToken(refreshNow) {
  const input = document.getElementById("token");
  input.value = localStorage.getItem(TOKEN_KEY) || "";
  document.getElementById("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = input.value.trim();
    if (token) localStorage.setItem(TOKEN_KEY, token);
    else localStorage.removeItem(TOKEN_KEY);
    refreshNow();
  });
}

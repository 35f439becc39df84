// Small DOM helpers. Everything shown goes through textContent or text nodes: never innerHTML.

const SVG_NS = "http://www.w3.org/2000/svg";

/** Append children (nodes, strings, numbers, nested arrays; null/false skipped) to an element. */
export function append(el, ...children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/**
 * Create an element: h("button", {class: "primary", testid: "x", onclick: fn}, "Label").
 * Props: class, text, testid, dataset, on<event> (listeners), value/checked/disabled/hidden
 * (properties); anything else becomes an attribute.
 */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  setProps(el, props);
  return append(el, ...children);
}

function setProps(el, props) {
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.setAttribute("class", value);
    else if (key === "text") el.textContent = String(value);
    else if (key === "testid") el.dataset.testid = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (["value", "checked", "disabled", "hidden", "selected", "indeterminate"].includes(key)) el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
}

/** Create an SVG element with attributes. */
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "testid") el.dataset.testid = value;
    else el.setAttribute(key, String(value));
  }
  return append(el, ...children);
}

const ICONS = {
  refresh: ["M21 12a9 9 0 1 1-2.64-6.36", "M21 3v6h-6"],
  play: ["M6 4l14 8-14 8z"],
  stop: ["M6 6h12v12H6z"],
  x: ["M18 6 6 18", "M6 6l12 12"],
  left: ["M15 18l-6-6 6-6"],
  right: ["M9 18l6-6-6-6"],
  down: ["M12 5v14", "M19 12l-7 7-7-7"],
  up: ["M12 19V5", "M5 12l7-7 7 7"],
  filter: ["M22 3H2l8 9.46V19l4 2v-8.54z"],
  copy: ["M9 9h11v11H9z", "M5 15H4a1 1 0 0 1-1-1V4a1 1 0 0 1 1-1h10a1 1 0 0 1 1 1v1"],
  key: ["M21 2l-2 2", "M15.5 7.5l3 3L22 7l-3-3", "M11.39 11.61a5.5 5.5 0 1 1-7.78 7.78 5.5 5.5 0 0 1 7.78-7.78z",
    "M11.4 11.6 19 4"],
  trash: ["M3 6h18", "M19 6l-1 14a2 2 0 0 1-2 2H8a2 2 0 0 1-2-2L5 6", "M10 11v6", "M14 11v6",
    "M9 6V4a1 1 0 0 1 1-1h4a1 1 0 0 1 1 1v2"],
  plus: ["M12 5v14", "M5 12h14"],
  db: ["M4 6c0-1.66 3.58-3 8-3s8 1.34 8 3-3.58 3-8 3-8-1.34-8-3z", "M4 6v12c0 1.66 3.58 3 8 3s8-1.34 8-3V6",
    "M4 12c0 1.66 3.58 3 8 3s8-1.34 8-3"],
  bolt: ["M13 2 3 14h9l-1 8 10-12h-9l1-8z"],
  tag: ["M20.59 13.41 13.42 20.58a2 2 0 0 1-2.83 0L2 12V2h10l8.59 8.59a2 2 0 0 1 0 2.82z", "M7 7h.01"],
  clock: ["M12 22a10 10 0 1 0 0-20 10 10 0 0 0 0 20z", "M12 6v6l4 2"],
};

/** A stroke icon from the set above (decorative: hidden from assistive technology). */
export function icon(name) {
  return s("svg", { viewBox: "0 0 24 24", fill: "none", stroke: "currentColor", "stroke-width": 2,
    "stroke-linecap": "round", "stroke-linejoin": "round", "aria-hidden": "true" },
  (ICONS[name] || []).map((d) => s("path", { d })));
}

// ---------- Formatting ----------

const intFormat = new Intl.NumberFormat("en-US");
const rateFormat = new Intl.NumberFormat("en-US", { maximumFractionDigits: 1 });

export function fmtInt(n) {
  return n === null || n === undefined || Number.isNaN(Number(n)) ? "–" : intFormat.format(Number(n));
}

export function fmtRate(n) {
  return rateFormat.format(Number(n) || 0);
}

/** Bytes as "812 B", "1.4 MB", "3.2 GB" (powers of 1024). */
export function fmtBytes(n) {
  if (n === null || n === undefined || Number.isNaN(Number(n))) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = Number(n);
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit === 0 ? value : value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

function pad(n, width = 2) {
  return String(n).padStart(width, "0");
}

/** ISO 8601 text as "YYYY-MM-DD HH:MM:SS.mmm" (UTC); the raw text when unparsable. */
export function fmtTime(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  return `${date.getUTCFullYear()}-${pad(date.getUTCMonth() + 1)}-${pad(date.getUTCDate())} `
    + `${pad(date.getUTCHours())}:${pad(date.getUTCMinutes())}:${pad(date.getUTCSeconds())}`
    + `.${pad(date.getUTCMilliseconds(), 3)}`;
}

/** "12 s ago", "5 min ago", "3 h ago", "2 d ago". */
export function fmtAgo(iso) {
  const date = new Date(iso);
  if (!iso || Number.isNaN(date.getTime())) return "";
  const seconds = Math.max(0, Math.round((Date.now() - date.getTime()) / 1000));
  if (seconds < 60) return `${seconds} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return `${Math.floor(seconds / 86400)} d ago`;
}

/** Seconds as "3d 4h 05m", "1h 02m 03s", "4m 09s", "12s". */
export function fmtDuration(total) {
  const seconds = Math.max(0, Math.floor(Number(total) || 0));
  const d = Math.floor(seconds / 86400);
  const hours = Math.floor((seconds % 86400) / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const sec = seconds % 60;
  if (d > 0) return `${d}d ${hours}h ${pad(m)}m`;
  if (hours > 0) return `${hours}h ${pad(m)}m ${pad(sec)}s`;
  if (m > 0) return `${m}m ${pad(sec)}s`;
  return `${sec}s`;
}

/** JSON text pretty-printed with 2 spaces; {text, raw: true} when it is not JSON. */
export function prettyJson(text) {
  if (text === null || text === undefined || text === "") return { text: "", raw: false, empty: true };
  try {
    return { text: JSON.stringify(JSON.parse(text), null, 2), raw: false, empty: false };
  } catch {
    return { text: String(text), raw: true, empty: false };
  }
}

// A small live area chart of a write rate (events per second over time), drawn in SVG.

import { fmtRate, s } from "./dom.js";

const HEIGHT = 72;
const PAD_TOP = 6;
const PAD_BOTTOM = 4;
const PAD_RIGHT = 34; // room for the y-axis labels
export const WINDOW_SECONDS = 120; // the chart shows the last two minutes, the newest sample at the right

/** A sample's time in milliseconds: ISO text, epoch seconds or epoch milliseconds. */
function timeOf(t) {
  if (typeof t === "number") return t > 1e12 ? t : t * 1000;
  const parsed = Date.parse(t);
  if (!Number.isNaN(parsed)) return parsed;
  const n = Number(t);
  return Number.isNaN(n) ? NaN : (n > 1e12 ? n : n * 1000);
}

/** A round ceiling for the y axis: 1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10, 15, 20, ... */
function niceMax(value) {
  if (!(value > 0)) return 1;
  const exponent = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) {
    if (value <= step * exponent) return step * exponent;
  }
  return 10 * exponent;
}

function clock(ms) {
  const date = new Date(ms);
  return date.toTimeString().slice(0, 8);
}

export class RateChart {
  /**
   * @param {(text: string|null) => void} onHover called with a readout while the pointer is over
   *   the chart, and with null when it leaves.
   */
  constructor(onHover) {
    this.points = [];
    this.onHover = onHover || (() => {});
    this.hoverIndex = null;
    this.el = s("svg", { class: "rate-chart", testid: "rate-chart", role: "img", "aria-label": "Write rate" });
    this.grid = s("g");
    this.area = s("path", { class: "area" });
    this.line = s("path", { class: "line" });
    this.cursor = s("line", { class: "cursor", visibility: "hidden" });
    this.dot = s("circle", { class: "dot", r: 3.5, visibility: "hidden" });
    this.el.append(this.grid, this.area, this.line, this.cursor, this.dot);
    this.el.addEventListener("mousemove", (event) => this.hover(event));
    this.el.addEventListener("mouseleave", () => this.leave());
    this.resizeObserver = new ResizeObserver(() => this.draw());
    this.resizeObserver.observe(this.el);
  }

  /** New samples: [{t, events_per_second}]. */
  update(samples) {
    this.points = (samples || [])
      .map((p) => ({ t: timeOf(p.t), v: Math.max(0, Number(p.events_per_second) || 0) }))
      .filter((p) => !Number.isNaN(p.t))
      .sort((a, b) => a.t - b.t);
    this.draw();
  }

  dispose() {
    this.resizeObserver.disconnect();
  }

  geometry() {
    const width = Math.max(120, Math.round(this.el.getBoundingClientRect().width) || 400);
    const plotWidth = width - PAD_RIGHT;
    const points = this.points;
    const end = points.length ? points[points.length - 1].t : 0;
    const span = WINDOW_SECONDS * 1000;
    const max = niceMax(Math.max(0, ...points.map((p) => p.v)));
    const x = (t) => Math.max(0, plotWidth - ((end - t) / span) * plotWidth);
    const y = (v) => PAD_TOP + (1 - v / max) * (HEIGHT - PAD_TOP - PAD_BOTTOM);
    return { width, plotWidth, max, x, y };
  }

  draw() {
    const { width, plotWidth, max, x, y } = this.geometry();
    this.el.setAttribute("viewBox", `0 0 ${width} ${HEIGHT}`);
    this.el.setAttribute("height", HEIGHT);
    this.grid.replaceChildren();
    for (const fraction of [0, 0.5, 1]) {
      const value = max * fraction;
      const gy = y(value);
      this.grid.append(
        s("line", { class: "grid", x1: 0, x2: plotWidth, y1: gy, y2: gy }),
        s("text", { class: "axis-label", x: plotWidth + 6, y: gy + 3.5 }, `${fmtRate(value)}/s`),
      );
    }
    const points = this.points.filter((p) => p.t >= (this.points.length
      ? this.points[this.points.length - 1].t - WINDOW_SECONDS * 1000 : 0));
    if (!points.length) {
      this.area.setAttribute("d", "");
      this.line.setAttribute("d", "");
      this.leave();
      return;
    }
    const coords = points.length === 1
      ? [[plotWidth - 2, y(points[0].v)], [plotWidth, y(points[0].v)]]
      : points.map((p) => [x(p.t), y(p.v)]);
    const line = coords.map(([cx, cy], i) => `${i ? "L" : "M"}${cx.toFixed(1)},${cy.toFixed(1)}`).join("");
    const base = y(0).toFixed(1);
    this.line.setAttribute("d", line);
    this.area.setAttribute("d", `${line}L${coords[coords.length - 1][0].toFixed(1)},${base}`
      + `L${coords[0][0].toFixed(1)},${base}Z`);
    if (this.hoverIndex !== null) this.showPoint(Math.min(this.hoverIndex, points.length - 1));
  }

  hover(event) {
    if (!this.points.length) return;
    const rect = this.el.getBoundingClientRect();
    const px = event.clientX - rect.left;
    const { x } = this.geometry();
    let best = 0;
    for (let i = 1; i < this.points.length; i++) {
      if (Math.abs(x(this.points[i].t) - px) < Math.abs(x(this.points[best].t) - px)) best = i;
    }
    this.hoverIndex = best;
    this.showPoint(best);
  }

  showPoint(index) {
    const point = this.points[index];
    if (!point) return;
    const { x, y } = this.geometry();
    const px = x(point.t);
    this.cursor.setAttribute("x1", px);
    this.cursor.setAttribute("x2", px);
    this.cursor.setAttribute("y1", PAD_TOP);
    this.cursor.setAttribute("y2", HEIGHT - PAD_BOTTOM);
    this.dot.setAttribute("cx", px);
    this.dot.setAttribute("cy", y(point.v));
    this.cursor.setAttribute("visibility", "visible");
    this.dot.setAttribute("visibility", "visible");
    this.onHover(`${clock(point.t)} · ${fmtRate(point.v)} ev/s`);
  }

  leave() {
    this.hoverIndex = null;
    this.cursor.setAttribute("visibility", "hidden");
    this.dot.setAttribute("visibility", "hidden");
    this.onHover(null);
  }
}

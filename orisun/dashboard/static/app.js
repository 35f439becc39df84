// The Orisun admin dashboard: a single page with hash routes (#/overview, #/events, #/streams,
// #/tail, #/subscriptions, #/users) over the JSON API of docs/dashboard.md.
//
// Rules kept throughout: data is shown with textContent only (never innerHTML); every POST and
// DELETE sends Content-Type: application/json and X-CSRF-Token; any 401 goes to /login.

import { RateChart, WINDOW_SECONDS } from "./chart.js";
import { append, fmtAgo, fmtDuration, fmtInt, fmtRate, fmtTime, h, icon, prettyJson } from "./dom.js";

const RETURN_KEY = "orisun.return";
const BOUNDARY_KEY = "orisun.boundary";
const POLL_MS = 2000;
const TAIL_KEEP = 500;

const state = {
  session: null,
  boundaries: null, // names, from /api/overview
};

// ---------- API ----------

class ApiError extends Error {
  constructor(status, message, field) {
    super(message);
    this.status = status;
    this.field = field || null;
  }
}

/** Thrown after a redirect to /login has started: callers just stop. */
class Redirecting extends Error {}

function toLogin() {
  try {
    if (location.hash && location.hash !== "#/overview") sessionStorage.setItem(RETURN_KEY, location.hash);
  } catch {
    // storage unavailable: land on the overview after login
  }
  location.assign("/login");
}

/** Call the API; the parsed JSON answer (null for 204). Throws ApiError (with the server's message). */
async function api(path, { method = "GET", body, signal } = {}) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json" }, signal };
  if (method !== "GET" && method !== "HEAD") {
    init.headers["Content-Type"] = "application/json";
    init.headers["X-CSRF-Token"] = state.session ? state.session.csrf_token : "";
    init.body = JSON.stringify(body === undefined ? {} : body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    if (error && error.name !== "AbortError") setConnection(false);
    throw error;
  }
  setConnection(true);
  if (response.status === 401) {
    toLogin();
    throw new Redirecting("session ended");
  }
  let payload = null;
  if (response.status !== 204) {
    try {
      payload = await response.json();
    } catch (error) {
      if (error && error.name === "AbortError") throw error; // the page was left while reading
      payload = null;
    }
  }
  if (response.ok && payload === null && response.status !== 204) {
    throw new ApiError(response.status, "The server's answer was not JSON.");
  }
  if (!response.ok) {
    const message = payload && typeof payload.error === "string" && payload.error
      ? payload.error
      : `The server answered HTTP ${response.status}.`;
    throw new ApiError(response.status, message, payload && payload.field);
  }
  return payload;
}

function setConnection(ok) {
  const badge = document.getElementById("connection");
  if (!badge) return;
  badge.hidden = ok;
  if (!ok) {
    badge.className = "badge error";
    badge.replaceChildren(h("span", { class: "dot" }), "connection lost");
  }
}

function isQuiet(error) {
  return error instanceof Redirecting || (error && error.name === "AbortError");
}

function describe(error) {
  if (error instanceof ApiError) return error.message;
  if (error instanceof TypeError) return "Cannot reach the server: is Orisun running?";
  return String(error && error.message ? error.message : error);
}

function enc(text) {
  return encodeURIComponent(text);
}

// ---------- Shared pieces ----------

function isAdmin() {
  return Boolean(state.session && (state.session.roles || []).includes("ADMIN"));
}

async function loadBoundaries(signal) {
  if (!state.boundaries) {
    const overview = await api("/api/overview", { signal });
    state.boundaries = overview.boundaries.map((b) => b.boundary);
  }
  return state.boundaries;
}

function rememberBoundary(name) {
  try {
    sessionStorage.setItem(BOUNDARY_KEY, name);
  } catch {
    // not remembered: fine
  }
}

function preferredBoundary(names, wanted) {
  if (wanted && names.includes(wanted)) return wanted;
  let remembered = null;
  try {
    remembered = sessionStorage.getItem(BOUNDARY_KEY);
  } catch {
    remembered = null;
  }
  if (remembered && names.includes(remembered)) return remembered;
  return names[0] || "";
}

function boundarySelect(names, selected, onChange) {
  const select = h("select", { id: "boundary", testid: "boundary-select", "aria-label": "Boundary" },
    names.map((name) => h("option", { value: name, selected: name === selected }, name)));
  select.addEventListener("change", () => {
    rememberBoundary(select.value);
    onChange(select.value);
  });
  return h("label", { class: "field", for: "boundary" }, "Boundary", select);
}

function field(label, input) {
  return h("label", { class: "field", for: input.id }, label, input);
}

function textInput(id, testid, placeholder, value, extraClass) {
  return h("input", { type: "text", id, testid, placeholder, value: value || "", class: extraClass,
    autocomplete: "off", spellcheck: "false" });
}

/** Parse "key:value, key:value" into ["key:value", ...]; throws with a message when malformed. */
function parseTags(text) {
  const tags = [];
  for (const part of text.split(",")) {
    const item = part.trim();
    if (!item) continue;
    const colon = item.indexOf(":");
    if (colon <= 0) throw new Error(`Tag "${item}" must be key:value (several separated by commas).`);
    tags.push(`${item.slice(0, colon).trim()}:${item.slice(colon + 1).trim()}`);
  }
  return tags;
}

function pageHead(title, description, ...extra) {
  return h("div", { class: "page-head" },
    h("div", {}, h("h1", {}, title), description ? h("div", { class: "desc" }, description) : null),
    h("div", { class: "spacer" }),
    extra);
}

function alertBox(kind, testid) {
  return h("div", { class: `alert ${kind}`, role: kind === "error" ? "alert" : "status", testid, hidden: true });
}

function setAlert(box, message) {
  box.textContent = message || "";
  box.hidden = !message;
}

function badge(text, kind, testid) {
  return h("span", { class: `badge ${kind || ""}`, testid }, h("span", { class: "dot" }), text);
}

function tagChip(tag) {
  return h("span", { class: "tag", title: `${tag.key}:${tag.value}` },
    h("span", { class: "k" }, `${tag.key}:`), tag.value);
}

function cursorOf(event) {
  return `${event.position.commit}:${event.position.prepare}`;
}

function emptyRow(columns, message) {
  return h("tr", {}, h("td", { colspan: columns, class: "empty" }, message));
}

/** Run fn now and then every POLL_MS until the page is left (signal aborted). */
function poll(signal, fn, ms = POLL_MS) {
  let timer = null;
  const tick = async () => {
    if (signal.aborted) return;
    try {
      await fn();
    } catch (error) {
      if (!isQuiet(error)) throw error;
    } finally {
      if (!signal.aborted) timer = setTimeout(tick, ms);
    }
  };
  signal.addEventListener("abort", () => clearTimeout(timer));
  tick();
}

/** The in-page confirmation dialog; resolves true when confirmed. */
function confirmDialog(title, text, action) {
  const dialog = document.getElementById("confirm-dialog");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-accept").textContent = action || "Delete";
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
    document.getElementById("confirm-cancel").focus();
  });
}

// ---------- Event table and detail (events and tail pages) ----------

const EVENT_COLUMNS = ["Position", "Stream", "Version", "Type", "Time (UTC)", "Tags"];

function eventHeader() {
  return h("thead", {}, h("tr", {}, EVENT_COLUMNS.map((name) =>
    h("th", { class: ["Position", "Version"].includes(name) ? "num" : (name === "Tags" ? "col-tags" : "") }, name))));
}

function eventRow(event, testid, onOpen) {
  const row = h("tr", { class: "clickable", testid, tabindex: 0, dataset: { eventId: event.event_id } },
    h("td", { class: "num mono", title: `commit ${event.position.commit}, prepare ${event.position.prepare}` },
      String(event.position.prepare)),
    h("td", { class: "mono ellipsis", title: event.stream }, event.stream),
    h("td", { class: "num" }, String(event.version)),
    h("td", { class: "type ellipsis", title: event.event_type }, event.event_type),
    h("td", { class: "mono nowrap", title: event.created_at }, fmtTime(event.created_at)),
    h("td", { class: "col-tags" },
      (event.tags || []).length ? event.tags.map(tagChip) : h("span", { class: "faint" }, "–")));
  row.addEventListener("click", () => onOpen(event, row));
  row.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      onOpen(event, row);
    }
  });
  return row;
}

const JSON_TOKEN = /("(?:\\.|[^"\\])*")(\s*:)?|\b(?:true|false|null)\b|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?/g;

/** Pretty JSON as text nodes and coloured spans (textContent stays exactly the text). */
function highlighted(text) {
  const parts = [];
  let at = 0;
  for (const match of text.matchAll(JSON_TOKEN)) {
    if (match.index > at) parts.push(text.slice(at, match.index));
    if (match[1] !== undefined && match[2] !== undefined) {
      parts.push(h("span", { class: "j-key" }, match[1]), match[2]);
    } else if (match[1] !== undefined) {
      parts.push(h("span", { class: "j-str" }, match[1]));
    } else {
      parts.push(h("span", { class: /^[tfn]/.test(match[0]) ? "j-lit" : "j-num" }, match[0]));
    }
    at = match.index + match[0].length;
  }
  if (at < text.length) parts.push(text.slice(at));
  return parts;
}

function jsonBlock(title, text, testid) {
  const pretty = prettyJson(text);
  const pre = h("pre", { class: `json${pretty.raw ? " raw" : ""}${pretty.empty ? " empty-json" : ""}`, testid },
    pretty.empty ? "(empty)" : (pretty.raw ? pretty.text : highlighted(pretty.text)));
  const head = h("div", { class: "head" }, h("h3", {}, title),
    pretty.raw ? h("span", { class: "badge warn" }, "not JSON: shown as stored") : null,
    h("span", { class: "spacer" }));
  if (!pretty.empty && navigator.clipboard) {
    const copy = h("button", { type: "button", class: "small ghost", title: `Copy ${title.toLowerCase()}` },
      icon("copy"), "Copy");
    copy.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(pretty.text);
        copy.lastChild.textContent = "Copied";
      } catch {
        copy.lastChild.textContent = "Copy failed";
      }
    });
    head.append(copy);
  }
  return h("div", { class: "json-block" }, head, pre);
}

/** The detail drawer of one event; with onStream, its stream links to the stream's events. */
function eventDetail(event, { onClose, onStream, boundary }) {
  const stream = onStream
    ? h("a", { href: `#/events?${new URLSearchParams({ boundary, stream: event.stream })}` }, event.stream)
    : event.stream;
  const close = h("button", { type: "button", class: "small ghost", title: "Close", "aria-label": "Close" },
    icon("x"));
  close.addEventListener("click", onClose);
  return h("aside", { class: "panel detail", testid: "event-detail", "aria-label": "Event detail" },
    h("div", { class: "panel-head" }, h("h2", {}, event.event_type), h("span", { class: "spacer" }), close),
    h("div", { class: "panel-body" },
      h("dl", { class: "kv" },
        h("dt", {}, "Event ID"), h("dd", { class: "mono", testid: "detail-event-id" }, event.event_id),
        h("dt", {}, "Type"), h("dd", { testid: "detail-type" }, event.event_type),
        h("dt", {}, "Stream"), h("dd", { class: "mono", testid: "detail-stream" }, stream),
        h("dt", {}, "Version"), h("dd", { class: "num", testid: "detail-version" }, String(event.version)),
        h("dt", {}, "Position"), h("dd", { class: "mono", testid: "detail-position" },
          `${event.position.prepare}`, h("span", { class: "faint" }, `  (commit ${event.position.commit})`)),
        h("dt", {}, "Created"), h("dd", { class: "mono", testid: "detail-created" }, event.created_at || "–"),
        h("dt", {}, "Tags"), h("dd", { testid: "detail-tags" },
          (event.tags || []).length ? event.tags.map(tagChip) : h("span", { class: "faint" }, "none"))),
      jsonBlock("Data", event.data, "event-data"),
      jsonBlock("Metadata", event.metadata, "event-metadata")));
}

// ---------- Overview ----------

async function renderOverview(view, params, signal) {
  const updated = h("span", { class: "spinner-text" }, "Loading…");
  const banner = alertBox("error", "overview-error");
  banner.classList.add("banner");

  const pgStatus = h("span", { testid: "postgres-status" });
  const pgDetail = h("div", { class: "detail" });
  const natsStatus = h("span", { testid: "nats-status" });
  const natsDetail = h("div", { class: "detail" });
  const version = h("span", { class: "mono", testid: "server-version" }, "–");
  const versionDetail = h("div", { class: "detail" }, "Orisun server");
  const uptime = h("span", { class: "num", testid: "server-uptime" }, "–");
  const uptimeDetail = h("div", { class: "detail" });

  const tile = (label, iconName, value, detail) => h("div", { class: "panel status-tile" },
    h("div", { class: "label" }, icon(iconName), label), h("div", { class: "value" }, value), detail);

  const cards = h("div", { class: "cards" });
  append(view,
    pageHead("Overview", "Boundaries, storage and messaging at a glance. Refreshes every 2 s.", updated),
    banner,
    h("div", { class: "status-strip" },
      tile("PostgreSQL", "db", pgStatus, pgDetail),
      tile("NATS JetStream", "bolt", natsStatus, natsDetail),
      tile("Version", "tag", version, versionDetail),
      tile("Uptime", "clock", uptime, uptimeDetail)),
    h("h3", { class: "panel-gap" }, "Boundaries"),
    h("div", { class: "panel-gap" }, cards));

  const cardsByName = new Map();
  let uptimeBase = null;

  const uptimeTimer = setInterval(() => {
    if (uptimeBase) uptime.textContent = fmtDuration(uptimeBase.seconds + (performance.now() - uptimeBase.at) / 1000);
  }, 1000);
  signal.addEventListener("abort", () => {
    clearInterval(uptimeTimer);
    for (const card of cardsByName.values()) card.chart.dispose();
  });

  function statusBadge(el, ok) {
    el.className = `badge ${ok ? "ok" : "error"}`;
    el.dataset.ok = ok ? "true" : "false";
    el.replaceChildren(h("span", { class: "dot" }), ok ? "OK" : "Error");
  }

  function makeCard(boundary) {
    const stat = (label, testid) => {
      const value = h("div", { class: "value", testid }, "–");
      return { value, el: h("div", { class: "stat" }, h("div", { class: "label", title: label }, label), value) };
    };
    const events = stat("Events", "stat-events");
    const streams = stat("Streams", "stat-streams");
    const head = stat("Head", "stat-head");
    const subscribers = stat("Subscribers", "stat-subscribers");
    const now = h("span", { class: "now" }, "–");
    const readout = h("span", {});
    const chart = new RateChart((text) => {
      readout.textContent = text || readout.dataset.idle || "";
    });
    const schema = h("span", { class: "badge", title: "PostgreSQL schema" });
    const el = h("section", { class: "panel boundary-card", testid: "boundary-card", dataset: { boundary } },
      h("div", { class: "panel-head" }, h("h2", {}, boundary), schema, h("span", { class: "spacer" }),
        h("div", { class: "links" },
          h("a", { href: `#/events?${new URLSearchParams({ boundary })}` }, "Events"),
          h("a", { href: `#/streams?${new URLSearchParams({ boundary })}` }, "Streams"),
          h("a", { href: `#/tail?${new URLSearchParams({ boundary })}` }, "Tail"))),
      h("div", { class: "stats" }, events.el, streams.el, head.el, subscribers.el),
      h("div", { class: "chart-box" },
        h("div", { class: "chart-head" }, h("span", {}, "Write rate"), now, h("span", { class: "spacer" }), readout),
        chart.el,
        h("div", { class: "chart-foot" }, h("span", {}, `${WINDOW_SECONDS / 60} min ago`), h("span", {}, "now"))));
    return { el, events, streams, head, subscribers, now, readout, chart, schema };
  }

  function updateCard(card, b) {
    card.events.value.textContent = String(b.events);
    card.streams.value.textContent = String(b.streams);
    card.head.value.textContent = String(b.head);
    card.subscribers.value.textContent = String(b.subscribers);
    card.events.value.title = fmtInt(b.events);
    card.head.value.title = fmtInt(b.head);
    card.schema.textContent = `schema ${b.schema}`;
    card.schema.hidden = b.schema === b.boundary;
    const rates = b.write_rate || [];
    const latest = rates.length ? Number(rates[rates.length - 1].events_per_second) || 0 : 0;
    const peak = Math.max(0, ...rates.map((r) => Number(r.events_per_second) || 0));
    card.now.textContent = `${fmtRate(latest)} ev/s`;
    card.readout.dataset.idle = rates.length ? `peak ${fmtRate(peak)} ev/s` : "no samples yet";
    if (card.chart.hoverIndex === null) card.readout.textContent = card.readout.dataset.idle;
    card.chart.update(rates);
  }

  async function refresh() {
    let overview;
    try {
      overview = await api("/api/overview", { signal });
    } catch (error) {
      if (!isQuiet(error)) setAlert(banner, describe(error));
      return;
    }
    setAlert(banner, "");
    state.boundaries = overview.boundaries.map((b) => b.boundary);

    statusBadge(pgStatus, overview.postgres.ok);
    pgDetail.textContent = overview.postgres.ok
      ? `${overview.postgres.latency_ms === null || overview.postgres.latency_ms === undefined
        ? "–" : Number(overview.postgres.latency_ms).toFixed(1)} ms round trip`
      : (overview.postgres.error || "unreachable");
    pgDetail.title = pgDetail.textContent;
    statusBadge(natsStatus, overview.nats.ok);
    natsDetail.textContent = overview.nats.ok ? (overview.nats.url || "connected") : (overview.nats.error || "down");
    natsDetail.title = natsDetail.textContent;
    version.textContent = overview.version;
    uptimeBase = { seconds: Number(overview.uptime_seconds) || 0, at: performance.now() };
    uptime.textContent = fmtDuration(uptimeBase.seconds);
    uptimeDetail.textContent = overview.started_at ? `since ${fmtTime(overview.started_at)} UTC` : "";

    const seen = new Set();
    for (const b of overview.boundaries) {
      seen.add(b.boundary);
      let card = cardsByName.get(b.boundary);
      if (!card) {
        card = makeCard(b.boundary);
        cardsByName.set(b.boundary, card);
        cards.append(card.el);
      }
      updateCard(card, b);
    }
    for (const [name, card] of cardsByName) {
      if (!seen.has(name)) {
        card.chart.dispose();
        card.el.remove();
        cardsByName.delete(name);
      }
    }
    if (!overview.boundaries.length) cards.replaceChildren(h("div", { class: "panel empty" }, "No boundaries."));
    updated.textContent = `Updated ${new Date().toTimeString().slice(0, 8)}`;
  }

  poll(signal, refresh);
}

// ---------- Events ----------

/** The event detail panel beside a table (events and tail pages): open(event, row), close(). */
function detailDrawer(tbody, signal, boundaryOf) {
  const slot = h("div", { class: "detail-slot" });
  let selected = null;
  function close() {
    selected = null;
    slot.replaceChildren();
    if (slot.parentElement) slot.parentElement.classList.remove("with-detail");
    for (const row of tbody.querySelectorAll("tr.selected")) row.classList.remove("selected");
  }
  function open(event, row) {
    selected = event.event_id;
    for (const r of tbody.querySelectorAll("tr.selected")) r.classList.remove("selected");
    row.classList.add("selected");
    slot.replaceChildren(eventDetail(event, { boundary: boundaryOf(), onClose: close, onStream: true }));
    if (slot.parentElement) slot.parentElement.classList.add("with-detail");
  }
  const onKey = (e) => {
    if (e.key === "Escape" && selected && !document.querySelector("dialog[open]")) close();
  };
  document.addEventListener("keydown", onKey);
  signal.addEventListener("abort", () => document.removeEventListener("keydown", onKey));
  return { slot, open, close, selected: () => selected };
}

async function renderEvents(view, params, signal) {
  const names = await loadBoundaries(signal);
  const s = {
    boundary: preferredBoundary(names, params.get("boundary")),
    direction: params.get("direction") === "asc" ? "asc" : "desc",
    count: [25, 50, 100, 200].includes(Number(params.get("count"))) ? Number(params.get("count")) : 50,
    events: [],
    hasPrev: false,
    hasNext: false,
    page: 1,
    loading: false,
  };
  const stream = textInput("filter-stream", "filter-stream", "exact stream name", params.get("stream"));
  const type = textInput("filter-type", "filter-type", "e.g. OrderCreated", params.get("type"));
  const tags = textInput("filter-tags", "filter-tags", "key:value, key:value", params.getAll("tag").join(", "),
    "wide");
  const apply = h("button", { type: "submit", class: "primary", testid: "filter-apply" }, icon("filter"), "Apply");
  const reset = h("button", { type: "button" }, "Clear");
  const toggle = h("button", { type: "button", class: "small", testid: "direction-toggle", title: "Reverse the order" });
  const countSelect = h("select", { id: "page-size", class: "small", testid: "page-size",
    "aria-label": "Events per page" },
    [25, 50, 100, 200].map((n) => h("option", { value: n, selected: n === s.count }, `${n} per page`)));
  const error = alertBox("error", "events-error");
  const tbody = h("tbody", {});
  const table = h("table", { class: "data", testid: "events-table" }, eventHeader(), tbody);
  const prev = h("button", { type: "button", testid: "page-prev" }, icon("left"), "Previous");
  const next = h("button", { type: "button", testid: "page-next" }, "Next", icon("right"));
  const info = h("span", { class: "num" });
  const title = h("h2", {});
  const pageLabel = h("span", { class: "num" });
  const drawer = detailDrawer(tbody, signal, () => s.boundary);

  const form = h("form", { class: "toolbar", novalidate: true },
    boundarySelect(names, s.boundary, (value) => {
      s.boundary = value;
      first();
    }),
    field("Stream", stream), field("Event type", type), field("Tags (all must match)", tags),
    h("div", { class: "buttons" }, apply, reset));

  append(view, pageHead("Events", "Browse a boundary's events by position; filter by stream, type and tags."),
    h("div", { class: "stack" },
      h("div", { class: "panel" }, form),
      error,
      h("div", { class: "split" },
        h("div", { class: "panel" },
          h("div", { class: "panel-head" }, title, info, h("span", { class: "spacer" }), toggle, countSelect),
          h("div", { class: "table-wrap" }, table),
          h("div", { class: "pager" }, pageLabel, h("span", { class: "spacer" }), prev, next)),
        drawer.slot)));

  function drawToggle() {
    toggle.replaceChildren(icon(s.direction === "desc" ? "down" : "up"),
      s.direction === "desc" ? "Newest first" : "Oldest first");
    toggle.setAttribute("aria-pressed", s.direction === "desc" ? "true" : "false");
    toggle.dataset.direction = s.direction;
  }

  function syncHash() {
    const q = new URLSearchParams({ boundary: s.boundary });
    if (stream.value.trim()) q.set("stream", stream.value.trim());
    if (type.value.trim()) q.set("type", type.value.trim());
    try {
      for (const tag of parseTags(tags.value)) q.append("tag", tag);
    } catch {
      // invalid tags are reported when the page loads
    }
    if (s.direction !== "desc") q.set("direction", s.direction);
    if (s.count !== 50) q.set("count", String(s.count));
    history.replaceState(null, "", `#/events?${q}`);
  }

  function draw(note) {
    tbody.replaceChildren();
    if (!s.events.length) tbody.append(emptyRow(EVENT_COLUMNS.length, note || "No events match."));
    for (const event of s.events) {
      const row = eventRow(event, "event-row", drawer.open);
      if (event.event_id === drawer.selected()) row.classList.add("selected");
      tbody.append(row);
    }
    if (drawer.selected() && !s.events.some((e) => e.event_id === drawer.selected())) drawer.close();
    prev.disabled = !s.hasPrev || s.loading;
    next.disabled = !s.hasNext || s.loading;
    title.textContent = s.boundary;
    const positions = s.events.map((e) => e.position.prepare);
    info.className = "muted num";
    info.textContent = s.events.length
      ? `${s.events.length} event${s.events.length === 1 ? "" : "s"} · positions ${Math.min(...positions)}–${Math.max(...positions)}` : "";
    pageLabel.textContent = `Page ${s.page}`;
  }

  async function fetchPage(after, direction) {
    tags.classList.remove("invalid");
    let tagList;
    try {
      tagList = parseTags(tags.value);
    } catch (e) {
      tags.classList.add("invalid");
      throw new ApiError(400, e.message, "tag");
    }
    const q = new URLSearchParams();
    if (stream.value.trim()) q.set("stream", stream.value.trim());
    if (type.value.trim()) q.set("type", type.value.trim());
    for (const tag of tagList) q.append("tag", tag);
    q.set("direction", direction);
    if (after) q.set("after", after);
    q.set("count", String(s.count));
    const answer = await api(`/api/boundaries/${enc(s.boundary)}/events?${q}`, { signal });
    return answer.events || [];
  }

  async function run(step) {
    s.loading = true;
    prev.disabled = true;
    next.disabled = true;
    setAlert(error, "");
    try {
      await step();
    } catch (e) {
      if (isQuiet(e)) return;
      setAlert(error, describe(e));
      if (e instanceof ApiError && e.field) {
        const input = { stream, type, tag: tags }[e.field];
        if (input) input.classList.add("invalid");
      }
      s.events = [];
      s.hasPrev = false;
      s.hasNext = false;
    } finally {
      s.loading = false;
      if (!signal.aborted) draw();
    }
  }

  async function loadStart() {
    s.events = await fetchPage(null, s.direction);
    s.page = 1;
    s.hasPrev = false;
    s.hasNext = s.events.length === s.count;
  }

  function first() {
    syncHash();
    for (const input of [stream, type, tags]) input.classList.remove("invalid");
    return run(loadStart);
  }

  // Next: the events after the page's last one, in the same direction.
  next.addEventListener("click", () => run(async () => {
    if (!s.events.length) return;
    const events = await fetchPage(cursorOf(s.events[s.events.length - 1]), s.direction);
    if (!events.length) {
      s.hasNext = false;
      return;
    }
    s.events = events;
    s.page += 1;
    s.hasPrev = true;
    s.hasNext = events.length === s.count;
  }));

  // Previous: the events before the page's first one (the opposite direction, reversed).
  prev.addEventListener("click", () => run(async () => {
    // Back to page 1: read it afresh from the start (newest first, that shows new events too).
    if (s.page <= 2 || !s.events.length) return loadStart();
    const opposite = s.direction === "desc" ? "asc" : "desc";
    const events = (await fetchPage(cursorOf(s.events[0]), opposite)).reverse();
    if (events.length < s.count) return loadStart(); // reached the start: a full first page instead
    s.events = events;
    s.page -= 1;
    s.hasPrev = s.page > 1;
    s.hasNext = true;
  }));

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    first();
  });
  reset.addEventListener("click", () => {
    stream.value = "";
    type.value = "";
    tags.value = "";
    first();
  });
  toggle.addEventListener("click", () => {
    s.direction = s.direction === "desc" ? "asc" : "desc";
    drawToggle();
    first();
  });
  countSelect.addEventListener("change", () => {
    s.count = Number(countSelect.value);
    first();
  });

  rememberBoundary(s.boundary);
  drawToggle();
  draw("Loading…");
  await first();
}

// ---------- Streams ----------

async function renderStreams(view, params, signal) {
  const names = await loadBoundaries(signal);
  const PAGE = 50;
  const s = { boundary: preferredBoundary(names, params.get("boundary")), after: null, stack: [], next: null };
  const prefix = textInput("filter-prefix", "filter-prefix", "e.g. order-", params.get("prefix"));
  const apply = h("button", { type: "submit", class: "primary", testid: "filter-apply" }, icon("filter"), "Apply");
  const error = alertBox("error", "streams-error");
  const tbody = h("tbody", {});
  const prev = h("button", { type: "button", testid: "page-prev" }, icon("left"), "Previous");
  const next = h("button", { type: "button", testid: "page-next" }, "Next", icon("right"));
  const info = h("span", {});
  const form = h("form", { class: "toolbar", novalidate: true },
    boundarySelect(names, s.boundary, (value) => {
      s.boundary = value;
      first();
    }),
    field("Name starts with", prefix), h("div", { class: "buttons" }, apply));

  const title = h("h2", {});
  append(view, pageHead("Streams", "The streams of a boundary by name, with their version and last write. "
    + "Open one to see its events."),
  h("div", { class: "stack" },
    h("div", { class: "panel" }, form),
    error,
    h("div", { class: "panel" },
      h("div", { class: "panel-head" }, title, h("span", { class: "spacer" }), h("span", { class: "hint" },
        "Ordered by name")),
      h("div", { class: "table-wrap" }, h("table", { class: "data", testid: "streams-table" },
        h("thead", {}, h("tr", {}, h("th", {}, "Stream"), h("th", { class: "num" }, "Version"),
          h("th", { class: "num" }, "Events"), h("th", {}, "Last write (UTC)"), h("th", {}, ""))),
        tbody)),
      h("div", { class: "pager" }, info, h("span", { class: "spacer" }), prev, next))));

  function open(name) {
    location.hash = `#/events?${new URLSearchParams({ boundary: s.boundary, stream: name })}`;
  }

  function row(stream) {
    const link = h("a", { href: `#/events?${new URLSearchParams({ boundary: s.boundary, stream: stream.name })}` },
      stream.name);
    const tr = h("tr", { class: "clickable", testid: "stream-row", dataset: { stream: stream.name } },
      h("td", { class: "mono ellipsis", title: stream.name }, link),
      h("td", { class: "num", testid: "stream-version" }, String(stream.version)),
      h("td", { class: "num" }, fmtInt(Number(stream.version) + 1)),
      h("td", { class: "mono nowrap", title: stream.updated_at || "" }, fmtTime(stream.updated_at)),
      h("td", { class: "muted nowrap" }, fmtAgo(stream.updated_at)));
    tr.addEventListener("click", (e) => {
      if (e.target !== link) open(stream.name);
    });
    return tr;
  }

  async function load(after) {
    setAlert(error, "");
    prev.disabled = true;
    next.disabled = true;
    const q = new URLSearchParams({ count: String(PAGE) });
    if (prefix.value) q.set("prefix", prefix.value);
    if (after) q.set("after", after);
    try {
      const answer = await api(`/api/boundaries/${enc(s.boundary)}/streams?${q}`, { signal });
      s.after = after;
      s.next = answer.next || null;
      title.textContent = s.boundary;
      tbody.replaceChildren(...(answer.streams.length ? answer.streams.map(row)
        : [emptyRow(5, prefix.value ? "No stream starts with that." : "No streams yet.")]));
      info.textContent = `Page ${s.stack.length + 1} · ${answer.streams.length} streams`;
    } catch (e) {
      if (isQuiet(e)) return;
      setAlert(error, describe(e));
      tbody.replaceChildren(emptyRow(5, "Could not load streams."));
    }
    if (!signal.aborted) {
      prev.disabled = s.stack.length === 0;
      next.disabled = !s.next;
    }
  }

  function first() {
    s.stack = [];
    rememberBoundary(s.boundary);
    const q = new URLSearchParams({ boundary: s.boundary });
    if (prefix.value) q.set("prefix", prefix.value);
    history.replaceState(null, "", `#/streams?${q}`);
    return load(null);
  }

  next.addEventListener("click", () => {
    if (!s.next) return;
    s.stack.push(s.after);
    load(s.next);
  });
  prev.addEventListener("click", () => {
    if (!s.stack.length) return;
    load(s.stack.pop());
  });
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    first();
  });

  tbody.append(emptyRow(5, "Loading…"));
  await first();
}

// ---------- Live tail ----------

async function renderTail(view, params, signal) {
  const names = await loadBoundaries(signal);
  const s = { boundary: preferredBoundary(names, params.get("boundary")), source: null, received: 0 };
  const stream = textInput("filter-stream", "filter-stream", "exact stream name", params.get("stream"));
  const type = textInput("filter-type", "filter-type", "e.g. OrderCreated", params.get("type"));
  const tags = textInput("filter-tags", "filter-tags", "key:value, key:value", params.getAll("tag").join(", "),
    "wide");
  const start = h("button", { type: "submit", class: "primary", testid: "tail-start" }, icon("play"), "Start");
  const stop = h("button", { type: "button", testid: "tail-stop", disabled: true }, icon("stop"), "Stop");
  const clear = h("button", { type: "button", class: "small" }, "Clear");
  const status = h("span", { testid: "tail-status", "aria-live": "polite" });
  const counter = h("span", { class: "muted num" });
  const error = alertBox("error", "tail-error");
  const tbody = h("tbody", {});
  const title = h("h2", {});
  const drawer = detailDrawer(tbody, signal, () => s.boundary);
  const select = boundarySelect(names, s.boundary, (value) => {
    s.boundary = value;
    title.textContent = value;
  });
  const form = h("form", { class: "toolbar", novalidate: true },
    select, field("Stream", stream), field("Event type", type), field("Tags (all must match)", tags),
    h("div", { class: "buttons" }, start, stop));

  append(view,
    pageHead("Live tail", `Events as they are committed, newest on top; the last ${TAIL_KEEP} are kept.`),
    h("div", { class: "stack" },
      h("div", { class: "panel" }, form),
      error,
      h("div", { class: "split" },
        h("div", { class: "panel" },
          h("div", { class: "panel-head" }, title, status, h("span", { class: "spacer" }), counter, clear),
          h("div", { class: "table-wrap" },
            h("table", { class: "data", testid: "tail-table" }, eventHeader(), tbody))),
        drawer.slot)));
  title.textContent = s.boundary;

  function setStatus(kind) {
    const styles = { connected: "ok live", connecting: "warn", disconnected: "" };
    status.className = `badge ${styles[kind]}`;
    status.replaceChildren(h("span", { class: "dot" }), kind);
    status.dataset.state = kind;
  }

  function drawCounter() {
    counter.textContent = `${fmtInt(s.received)} received`;
  }

  function placeholder() {
    if (!tbody.querySelector("tr[data-event-id]")) {
      tbody.replaceChildren(emptyRow(EVENT_COLUMNS.length,
        s.source ? "Waiting for new events…" : "Press Start to follow the events committed from now on."));
    }
  }

  function setRunning(running) {
    start.disabled = running;
    stop.disabled = !running;
    for (const input of [stream, type, tags, select.querySelector("select")]) input.disabled = running;
  }

  function stopTail() {
    if (s.source) {
      s.source.close();
      s.source = null;
    }
    setRunning(false);
    setStatus("disconnected");
    placeholder();
  }

  function show(event) {
    s.received += 1;
    drawCounter();
    const empty = tbody.querySelector("td.empty");
    if (empty) empty.parentElement.remove();
    const row = eventRow(event, "tail-row", drawer.open);
    row.classList.add("fresh");
    tbody.prepend(row);
    while (tbody.rows.length > TAIL_KEEP) {
      const last = tbody.rows[tbody.rows.length - 1];
      if (last.dataset.eventId === drawer.selected()) drawer.close();
      last.remove();
    }
  }

  function startTail() {
    setAlert(error, "");
    tags.classList.remove("invalid");
    let tagList;
    try {
      tagList = parseTags(tags.value);
    } catch (e) {
      tags.classList.add("invalid");
      setAlert(error, e.message);
      return;
    }
    const q = new URLSearchParams();
    if (stream.value.trim()) q.set("stream", stream.value.trim());
    if (type.value.trim()) q.set("type", type.value.trim());
    for (const tag of tagList) q.append("tag", tag);
    const query = q.toString();
    const hashQuery = new URLSearchParams({ boundary: s.boundary });
    for (const [k, v] of q) hashQuery.append(k, v);
    history.replaceState(null, "", `#/tail?${hashQuery}`);
    rememberBoundary(s.boundary);

    const source = new EventSource(`/api/boundaries/${enc(s.boundary)}/tail${query ? `?${query}` : ""}`);
    s.source = source;
    setRunning(true);
    setStatus("connecting");
    placeholder();
    source.addEventListener("open", () => {
      if (s.source !== source) return;
      setStatus("connected");
      setAlert(error, "");
    });
    source.addEventListener("event", (message) => {
      if (s.source !== source) return;
      try {
        show(JSON.parse(message.data));
      } catch {
        // not an event: ignore
      }
    });
    // The server's own error event (the tail failed on its side): shown, and the tail stops.
    source.addEventListener("error", (message) => {
      if (s.source !== source) return;
      if (message.data) {
        let text = "The live tail failed.";
        try {
          text = JSON.parse(message.data).error || text;
        } catch {
          // keep the generic text
        }
        stopTail();
        setAlert(error, text);
        return;
      }
      if (source.readyState === EventSource.CLOSED) {
        // Refused (the session ended, a bad filter, ...): find out why.
        stopTail();
        api("/api/session", { signal }).then(
          () => setAlert(error, "The server refused or closed the live tail. Check the filters and start again."),
          (e) => {
            if (!isQuiet(e)) setAlert(error, describe(e));
          });
      } else {
        setStatus("disconnected");
        setAlert(error, "Connection lost; reconnecting. Events committed meanwhile are not shown here.");
      }
    });
  }

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (!s.source) startTail();
  });
  stop.addEventListener("click", stopTail);
  clear.addEventListener("click", () => {
    tbody.replaceChildren();
    s.received = 0;
    drawCounter();
    drawer.close();
    placeholder();
  });
  signal.addEventListener("abort", () => {
    if (s.source) s.source.close();
    s.source = null;
  });

  setStatus("disconnected");
  drawCounter();
  placeholder();
}

// ---------- Subscriptions ----------

async function renderSubscriptions(view, params, signal) {
  const updated = h("span", { class: "spinner-text" }, "Loading…");
  const error = alertBox("error", "subscriptions-error");
  const subBody = h("tbody", {});
  const pubBody = h("tbody", {});
  const live = h("div", { class: "live-grid" });
  const subCount = h("span", { class: "badge" }, "0");
  const pubCount = h("span", { class: "badge" }, "0");

  append(view,
    pageHead("Subscriptions", "Named event subscriptions, live subscribers and pub/sub consumers. Refreshes every 2 s.",
      updated),
    h("div", { class: "stack" }, error,
    h("section", { class: "panel" },
      h("div", { class: "panel-head" }, h("h2", {}, "Event subscriptions"), subCount, h("span", { class: "spacer" }),
        h("span", { class: "hint" }, "Subscriptions with a subscriber_name")),
      h("div", { class: "table-wrap" }, h("table", { class: "data", testid: "subscriptions-table" },
        h("thead", {}, h("tr", {}, h("th", {}, "Boundary"), h("th", {}, "Subscriber name"),
          h("th", { class: "num" }, "Position"), h("th", { class: "num" }, "Head"), h("th", { class: "num" }, "Lag"))),
        subBody))),
    h("section", { class: "panel" },
      h("div", { class: "panel-head" }, h("h2", {}, "Live subscribers per boundary")), live),
    h("section", { class: "panel" },
      h("div", { class: "panel-head" }, h("h2", {}, "Pub/sub consumers"), pubCount),
      h("div", { class: "table-wrap" }, h("table", { class: "data", testid: "pubsub-table" },
        h("thead", {}, h("tr", {}, h("th", {}, "Stream"), h("th", {}, "Subject"), h("th", {}, "Consumer"),
          h("th", { class: "num" }, "Pending"), h("th", { class: "num" }, "Ack pending"),
          h("th", { class: "num" }, "Redelivered"))),
        pubBody)))));

  function lagCell(sub) {
    if (sub.lag === null || sub.lag === undefined) return h("td", { class: "num faint" }, "–");
    const lag = Number(sub.lag);
    return h("td", { class: "num" }, lag === 0 ? h("span", { class: "badge ok" }, "caught up")
      : h("span", { class: `badge ${lag > 1000 ? "error" : "warn"}` }, fmtInt(lag)));
  }

  async function refresh() {
    let answer;
    try {
      answer = await api("/api/subscriptions", { signal });
    } catch (e) {
      if (!isQuiet(e)) setAlert(error, describe(e));
      return;
    }
    setAlert(error, "");
    const subs = answer.subscriptions || [];
    subCount.textContent = String(subs.length);
    subBody.replaceChildren(...(subs.length ? subs.map((sub) => h("tr", { testid: "subscription-row",
      dataset: { boundary: sub.boundary, subscriber: sub.subscriber_name } },
    h("td", { class: "mono" }, sub.boundary),
    h("td", { class: "mono" }, sub.subscriber_name),
    h("td", { class: "num mono", title: sub.position ? `commit ${sub.position.commit}, prepare ${sub.position.prepare}`
      : "" }, sub.position ? String(sub.position.prepare) : h("span", { class: "faint" }, "not started")),
    h("td", { class: "num mono" }, String(sub.head)),
    lagCell(sub))) : [emptyRow(5, "No named event subscriptions are active.")]));

    const counts = Object.entries(answer.live || {});
    live.replaceChildren(...(counts.length ? counts.map(([boundary, n]) => h("div",
      { class: "live-item", testid: "live-count", dataset: { boundary } },
      h("span", { class: "name" }, boundary), h("span", { class: "count" }, String(n))))
      : [h("span", { class: "muted" }, "No boundaries.")]));

    const consumers = answer.pubsub || [];
    pubCount.textContent = String(consumers.length);
    pubBody.replaceChildren(...(consumers.length ? consumers.map((c) => h("tr", { testid: "pubsub-row",
      dataset: { consumer: c.consumer_name } },
    h("td", { class: "mono" }, c.stream), h("td", { class: "mono" }, c.subject), h("td", { class: "mono" }, c.consumer_name),
    h("td", { class: "num" }, fmtInt(c.pending)), h("td", { class: "num" }, fmtInt(c.ack_pending)),
    h("td", { class: "num" }, fmtInt(c.redelivered)))) : [emptyRow(6, "No pub/sub consumers.")]));
    updated.textContent = `Updated ${new Date().toTimeString().slice(0, 8)}`;
  }

  poll(signal, refresh);
}

// ---------- Users ----------

async function renderUsers(view, params, signal) {
  append(view, pageHead("Users", "The users of the gRPC API and of this dashboard."));
  if (!isAdmin()) {
    view.append(h("div", { class: "panel empty", testid: "users-forbidden" },
      "Only users with the ADMIN role can manage users."));
    return;
  }
  const notice = alertBox("success", "users-notice");
  const listError = alertBox("error", "users-error");
  const tbody = h("tbody", {});

  const name = h("input", { type: "text", id: "user-name", testid: "user-add-name", autocomplete: "off" });
  const username = h("input", { type: "text", id: "user-username", testid: "user-add-username", autocomplete: "off",
    autocapitalize: "none", spellcheck: "false" });
  const password = h("input", { type: "password", id: "user-password", testid: "user-add-password",
    autocomplete: "new-password" });
  const roleAdmin = h("input", { type: "checkbox", value: "ADMIN", testid: "user-add-role-admin" });
  const roleOps = h("input", { type: "checkbox", value: "OPERATIONS", testid: "user-add-role-operations" });
  const formError = alertBox("error", "user-form-error");
  const submit = h("button", { type: "submit", class: "primary", testid: "user-add-submit" }, icon("plus"), "Add user");
  const form = h("form", { class: "user-form panel-body", novalidate: true },
    field("Name", name), field("Username", username), field("Password", password),
    h("fieldset", {}, h("legend", {}, "Roles"),
      h("div", { class: "roles" },
        h("label", { class: "check" }, roleAdmin, "ADMIN"),
        h("label", { class: "check" }, roleOps, "OPERATIONS")),
      h("div", { class: "hint" }, "ADMIN manages users and writes; OPERATIONS writes; no role: read only.")),
    formError, submit);

  append(view, h("div", { class: "stack" }, notice, listError,
    h("div", { class: "users-layout" },
      h("section", { class: "panel" },
        h("div", { class: "panel-head" }, h("h2", {}, "All users")),
        h("div", { class: "table-wrap" }, h("table", { class: "data users", testid: "users-table" },
          h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", {}, "Username"), h("th", {}, "Roles"),
            h("th", {}, ""))),
          tbody))),
      h("section", { class: "panel" },
        h("div", { class: "panel-head" }, h("h2", {}, "Add a user")), form))));

  const inputsByField = { name, username, password, roles: roleAdmin };

  function roleBadges(roles) {
    if (!roles || !roles.length) return h("span", { class: "faint" }, "read only");
    return roles.map((role) => h("span", { class: `badge role ${role.toLowerCase()}` }, role));
  }

  function userRow(user) {
    const self = user.username === state.session.username;
    const pwInput = h("input", { type: "password", testid: "user-password-input", placeholder: "New password",
      autocomplete: "new-password", "aria-label": `New password for ${user.username}` });
    const pwSubmit = h("button", { type: "submit", class: "small primary", testid: "user-password-submit" }, "Save");
    const pwCancel = h("button", { type: "button", class: "small" }, "Cancel");
    const pwMessage = h("div", { class: "msg field-error", testid: "user-password-error", hidden: true });
    const pwForm = h("form", { class: "inline-form", novalidate: true, hidden: true },
      pwInput, pwSubmit, pwCancel, pwMessage);
    const pwButton = h("button", { type: "button", class: "small", testid: "user-password" }, icon("key"),
      "Password");
    const del = h("button", { type: "button", class: "small danger", testid: "user-delete", disabled: self,
      title: self ? "You cannot delete your own account" : `Delete ${user.username}` }, icon("trash"), "Delete");

    pwButton.addEventListener("click", () => {
      pwForm.hidden = !pwForm.hidden;
      pwMessage.hidden = true;
      if (!pwForm.hidden) pwInput.focus();
    });
    pwCancel.addEventListener("click", () => {
      pwForm.hidden = true;
      pwInput.value = "";
    });
    pwForm.addEventListener("submit", async (e) => {
      e.preventDefault();
      pwMessage.hidden = true;
      pwInput.classList.remove("invalid");
      pwSubmit.disabled = true;
      try {
        await api(`/api/users/${enc(user.username)}/password`, { method: "POST", body: { password: pwInput.value },
          signal });
        pwInput.value = "";
        pwForm.hidden = true;
        setAlert(notice, `Password of ${user.username} changed.`);
      } catch (err) {
        if (isQuiet(err)) return;
        pwInput.classList.add("invalid");
        pwMessage.textContent = describe(err);
        pwMessage.hidden = false;
      } finally {
        pwSubmit.disabled = false;
      }
    });
    del.addEventListener("click", async () => {
      const ok = await confirmDialog(`Delete user ${user.username}?`,
        `${user.name || user.username} will no longer be able to sign in or call the gRPC API. This cannot be undone.`,
        "Delete user");
      if (!ok) return;
      setAlert(notice, "");
      setAlert(listError, "");
      try {
        await api(`/api/users/${enc(user.username)}`, { method: "DELETE", signal });
        setAlert(notice, `User ${user.username} deleted.`);
      } catch (err) {
        if (isQuiet(err)) return;
        setAlert(listError, describe(err));
      }
      await loadUsers();
    });

    return h("tr", { testid: "user-row", dataset: { username: user.username } },
      h("td", {}, user.name),
      h("td", { class: "mono" }, user.username, self ? h("span", { class: "you" }, "(you)") : null),
      h("td", {}, roleBadges(user.roles)),
      h("td", {}, h("div", { class: "actions" }, pwButton, del),
        self ? h("div", { class: "hint actions" }, "You cannot delete yourself.") : null, pwForm));
  }

  async function loadUsers() {
    try {
      const answer = await api("/api/users", { signal });
      const users = (answer.users || []).slice().sort((a, b) => a.username.localeCompare(b.username));
      tbody.replaceChildren(...(users.length ? users.map(userRow) : [emptyRow(4, "No users.")]));
    } catch (err) {
      if (isQuiet(err)) return;
      setAlert(listError, describe(err));
    }
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    setAlert(formError, "");
    setAlert(notice, "");
    for (const input of Object.values(inputsByField)) input.classList.remove("invalid");
    const roles = [roleAdmin, roleOps].filter((box) => box.checked).map((box) => box.value);
    submit.disabled = true;
    try {
      const user = await api("/api/users", { method: "POST", signal,
        body: { name: name.value, username: username.value, password: password.value, roles } });
      form.reset();
      setAlert(notice, `User ${user && user.username ? user.username : ""} added.`);
      await loadUsers();
    } catch (err) {
      if (isQuiet(err)) return;
      setAlert(formError, describe(err));
      // 409: the username is taken (the answer names no field).
      const fieldName = err instanceof ApiError ? (err.field || (err.status === 409 ? "username" : null)) : null;
      const input = fieldName ? inputsByField[fieldName] : null;
      if (input) {
        input.classList.add("invalid");
        input.focus();
      }
    } finally {
      submit.disabled = false;
    }
  });

  tbody.append(emptyRow(4, "Loading…"));
  await loadUsers();
}

// ---------- Shell and router ----------

const ROUTES = {
  overview: { title: "Overview", render: renderOverview },
  events: { title: "Events", render: renderEvents },
  streams: { title: "Streams", render: renderStreams },
  tail: { title: "Live tail", render: renderTail },
  subscriptions: { title: "Subscriptions", render: renderSubscriptions },
  users: { title: "Users", render: renderUsers },
};

let currentPage = null; // the AbortController of the page on screen

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const at = raw.indexOf("?");
  const name = (at < 0 ? raw : raw.slice(0, at)) || "overview";
  return { name, params: new URLSearchParams(at < 0 ? "" : raw.slice(at + 1)) };
}

async function route() {
  const { name, params } = parseHash();
  const page = ROUTES[name];
  if (!page) {
    location.replace("#/overview");
    return;
  }
  if (currentPage) currentPage.abort();
  const controller = new AbortController();
  currentPage = controller;
  for (const link of document.querySelectorAll(".sidebar a[data-route]")) {
    link.classList.toggle("active", link.dataset.route === name);
    if (link.dataset.route === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `${page.title} · Orisun`;
  const view = document.getElementById("view");
  view.replaceChildren();
  view.dataset.page = name;
  try {
    await page.render(view, params, controller.signal);
  } catch (error) {
    if (controller.signal.aborted || isQuiet(error)) return;
    view.append(h("div", { class: "alert error", role: "alert", testid: "page-error" }, describe(error)));
  }
}

function initials(text) {
  const parts = String(text || "?").trim().split(/\s+/).filter(Boolean);
  return ((parts[0] || "?")[0] + (parts.length > 1 ? parts[parts.length - 1][0] : "")).toUpperCase();
}

function setupShell() {
  const session = state.session;
  document.getElementById("node-host").textContent = location.host;
  document.getElementById("current-user").textContent = session.username;
  document.getElementById("current-user").title = session.name || session.username;
  document.getElementById("current-roles").textContent = (session.roles || []).length
    ? session.roles.join(" · ") : "read only";
  document.getElementById("user-avatar").textContent = initials(session.name || session.username);
  document.getElementById("header-version").textContent = `v${session.version}`;
  document.getElementById("nav-foot").textContent = `Orisun ${session.version}`;
  const admin = isAdmin();
  document.getElementById("nav-users").hidden = !admin;
  document.getElementById("nav-admin-section").hidden = !admin;

  const logout = document.getElementById("logout");
  logout.addEventListener("click", async () => {
    logout.disabled = true;
    try {
      await api("/api/logout", { method: "POST" });
    } catch (error) {
      if (error instanceof Redirecting) return;
      // Whatever the answer, leave: the login page checks the session again.
    }
    location.assign("/login");
  });
}

async function main() {
  try {
    state.session = await api("/api/session");
  } catch (error) {
    if (error instanceof Redirecting) return;
    document.getElementById("view").append(h("div", { class: "alert error", role: "alert" },
      `Cannot load the session: ${describe(error)}`));
    return;
  }
  setupShell();
  window.addEventListener("hashchange", route);
  if (!location.hash || location.hash === "#" || location.hash === "#/") history.replaceState(null, "", "#/overview");
  route();
}

main();

// The events page (#/events): a boundary's events page by page, filtered by stream (exact name or
// prefix), type and tags; with the number of matches and "page N of M", and a search by event id
// or position that opens the event.

import { append, fmtInt, h, icon } from "../dom.js";
import { ApiError, api, describe, enc, isQuiet, loadBoundaries } from "../api.js";
import { EVENT_COLUMNS, detailDrawer, eventHeader, eventRow } from "../event-table.js";
import { alertBox, boundarySelect, cursorOf, emptyRow, field, pageHead, parseTags, preferredBoundary, rememberBoundary,
  setAlert, textInput } from "../ui.js";

export async function renderEvents(view, params, signal) {
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
    total: null, // {count, exact, window} of the current filters, asked for on the first page
    next: null, // the server's cursor for the next page
  };
  const prefixed = params.has("stream_prefix");
  const stream = textInput("filter-stream", "filter-stream", "stream name",
    prefixed ? params.get("stream_prefix") : params.get("stream"));
  const streamMode = h("select", { id: "stream-mode", class: "mode", testid: "stream-mode",
    "aria-label": "How the stream name matches" },
  h("option", { value: "exact", selected: !prefixed }, "is"),
  h("option", { value: "prefix", selected: prefixed }, "starts with"));
  const goto = textInput("goto", "goto-input", "event id or position", "");
  const gotoButton = h("button", { type: "button", testid: "goto-submit" }, "Go");
  const totalLabel = h("span", { class: "total", testid: "events-total" });
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
    h("label", { class: "field", for: "filter-stream" }, "Stream", h("div", { class: "goto" }, streamMode, stream)),
    field("Event type", type), field("Tags (all must match)", tags),
    h("div", { class: "buttons" }, apply, reset),
    h("span", { class: "spacer" }),
    h("label", { class: "field", for: "goto" }, "Go to", h("div", { class: "goto" }, goto, gotoButton)));

  append(view, pageHead("Events", "Browse a boundary's events by position; filter by stream, type and tags."),
    h("div", { class: "stack" },
      h("div", { class: "panel" }, form),
      error,
      h("div", { class: "split" },
        h("div", { class: "panel" },
          h("div", { class: "panel-head" }, title, info, h("span", { class: "spacer" }), toggle, countSelect),
          h("div", { class: "table-wrap" }, table),
          h("div", { class: "pager" }, totalLabel, pageLabel, h("span", { class: "spacer" }), prev, next)),
        drawer.slot)));

  function drawToggle() {
    toggle.replaceChildren(icon(s.direction === "desc" ? "down" : "up"),
      s.direction === "desc" ? "Newest first" : "Oldest first");
    toggle.setAttribute("aria-pressed", s.direction === "desc" ? "true" : "false");
    toggle.dataset.direction = s.direction;
  }

  function syncHash() {
    const q = new URLSearchParams({ boundary: s.boundary });
    if (stream.value.trim()) q.set(streamMode.value === "prefix" ? "stream_prefix" : "stream", stream.value.trim());
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
    const pages = s.total && s.total.exact ? Math.max(1, Math.ceil(s.total.count / s.count)) : null;
    pageLabel.textContent = pages ? `page ${fmtInt(s.page)} of ${fmtInt(pages)}` : `page ${fmtInt(s.page)}`;
    pageLabel.dataset.testid = "page-label";
    if (!s.total) totalLabel.textContent = "";
    else {
      const n = `${fmtInt(s.total.count)}${s.total.exact ? "" : "+"}`;
      const scope = s.total.window ? ` in the latest ${fmtInt(s.total.window)} positions` : "";
      totalLabel.textContent = `${n} event${s.total.count === 1 && s.total.exact ? "" : "s"}${scope} · `;
      totalLabel.title = s.total.exact ? "" : `Counted up to ${fmtInt(s.total.count)}: there are more.`;
    }
  }

  /** One page: {events, next, before, total}; ``at`` starts it at a position, ``withTotal`` counts. */
  async function fetchAnswer(after, direction, { at, withTotal } = {}) {
    tags.classList.remove("invalid");
    let tagList;
    try {
      tagList = parseTags(tags.value);
    } catch (e) {
      tags.classList.add("invalid");
      throw new ApiError(400, e.message, "tag");
    }
    const q = new URLSearchParams();
    if (stream.value.trim()) q.set(streamMode.value === "prefix" ? "stream_prefix" : "stream", stream.value.trim());
    if (type.value.trim()) q.set("type", type.value.trim());
    for (const tag of tagList) q.append("tag", tag);
    q.set("direction", direction);
    if (after) q.set("after", after);
    if (at) q.set("at", String(at));
    if (withTotal) q.set("total", "1");
    q.set("count", String(s.count));
    return api(`/api/boundaries/${enc(s.boundary)}/events?${q}`, { signal });
  }

  async function fetchPage(after, direction) {
    return (await fetchAnswer(after, direction)).events || [];
  }

  /** Take a page answer in the page's own direction: its events, where the next one starts, and
   * its number (from how many matches come before it, where the server knows). */
  function take(answer, fallbackPage) {
    s.events = answer.events || [];
    s.next = answer.next || null;
    s.hasNext = Boolean(s.next);
    if (answer.total) s.total = answer.total;
    s.page = answer.before !== null && answer.before !== undefined
      ? Math.floor(answer.before / s.count) + 1 : fallbackPage;
    s.hasPrev = s.page > 1 || (answer.before !== null && answer.before !== undefined && answer.before > 0);
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
        const input = { stream, stream_prefix: stream, type, tag: tags, event_id: goto, at: goto, goto }[e.field];
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
    take(await fetchAnswer(null, s.direction, { withTotal: true }), 1);
    s.hasPrev = false;
  }

  // Go to: a position (digits) opens the page starting there; an event id finds the event, opens
  // the page starting at its position and its detail.
  async function jump() {
    const text = goto.value.trim();
    goto.classList.remove("invalid");
    if (!text) return;
    let position;
    let found = null;
    if (/^[0-9]{1,19}$/.test(text)) position = Number(text);
    else {
      found = await api(`/api/boundaries/${enc(s.boundary)}/events/${enc(text)}`, { signal });
      position = found.position.prepare;
      // Its page shows it whatever the filters: clear them.
      stream.value = "";
      type.value = "";
      tags.value = "";
      syncHash();
    }
    const answer = await fetchAnswer(null, s.direction, { at: position, withTotal: true });
    take(answer, s.page);
    if (found) {
      draw();
      const row = tbody.querySelector(`tr[data-event-id="${CSS.escape(found.event_id)}"]`);
      if (row) drawer.open(s.events.find((e) => e.event_id === found.event_id), row);
    } else if (!s.events.length) {
      throw new ApiError(404, `No event at or ${s.direction === "desc" ? "before" : "after"} position ${text}.`, "goto");
    }
  }

  function first() {
    s.total = null;
    syncHash();
    for (const input of [stream, type, tags]) input.classList.remove("invalid");
    return run(loadStart);
  }

  // Next: the events after the page's last one, in the same direction.
  next.addEventListener("click", () => run(async () => {
    if (!s.next) return;
    const answer = await fetchAnswer(s.next, s.direction);
    if (!(answer.events || []).length && !answer.next) {
      s.hasNext = false;
      return;
    }
    take(answer, s.page + 1);
    s.hasPrev = true;
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
    s.next = cursorOf(events[events.length - 1]);
  }));

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    first();
  });
  gotoButton.addEventListener("click", () => run(jump));
  goto.addEventListener("keydown", (e) => {
    if (e.key === "Enter") {
      e.preventDefault();
      run(jump);
    }
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

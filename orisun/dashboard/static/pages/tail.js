// The live tail page (#/tail): events as they are committed, over Server-Sent Events. Pause keeps
// the connection and holds new events back (up to TAIL_KEEP; beyond that they are counted as
// skipped); Resume shows them.

import { append, fmtInt, h, icon } from "../dom.js";
import { api, describe, enc, isQuiet, loadBoundaries } from "../api.js";
import { EVENT_COLUMNS, detailDrawer, eventHeader, eventRow } from "../event-table.js";
import { alertBox, boundarySelect, emptyRow, field, pageHead, parseTags, preferredBoundary, rememberBoundary,
  setAlert, textInput } from "../ui.js";

const TAIL_KEEP = 500;

export async function renderTail(view, params, signal) {
  const names = await loadBoundaries(signal);
  const s = { boundary: preferredBoundary(names, params.get("boundary")), source: null, received: 0,
    paused: false, held: [], skipped: 0 };
  const stream = textInput("filter-stream", "filter-stream", "exact stream name", params.get("stream"));
  const type = textInput("filter-type", "filter-type", "e.g. OrderCreated", params.get("type"));
  const tags = textInput("filter-tags", "filter-tags", "key:value, key:value", params.getAll("tag").join(", "),
    "wide");
  const start = h("button", { type: "submit", class: "primary", testid: "tail-start" }, icon("play"), "Start");
  const stop = h("button", { type: "button", testid: "tail-stop", disabled: true }, icon("stop"), "Stop");
  const clear = h("button", { type: "button", class: "small" }, "Clear");
  const pause = h("button", { type: "button", class: "small", testid: "tail-pause", disabled: true });
  const pausedNote = h("span", { class: "tail-paused", testid: "tail-paused", hidden: true });
  const skippedNote = alertBox("info", "tail-skipped");
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
          h("div", { class: "panel-head" }, title, status, pausedNote, h("span", { class: "spacer" }), counter, pause,
            clear),
          skippedNote,
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
    pause.replaceChildren(icon(s.paused ? "play" : "stop"), s.paused ? "Resume" : "Pause");
    pause.dataset.paused = String(s.paused);
    pausedNote.hidden = !s.paused;
    pausedNote.textContent = `paused · ${fmtInt(s.held.length + s.skipped)} new event`
      + `${s.held.length + s.skipped === 1 ? "" : "s"} waiting`;
  }

  function setPaused(paused) {
    s.paused = paused;
    if (!paused) {
      const held = s.held;
      const skipped = s.skipped;
      s.held = [];
      s.skipped = 0;
      for (const event of held) show(event);
      setAlert(skippedNote, skipped ? `${fmtInt(skipped)} event${skipped === 1 ? "" : "s"} arrived while paused `
        + `beyond the ${TAIL_KEEP} held back and ${skipped === 1 ? "is" : "are"} not shown; the Events page has them.`
        : "");
    }
    drawCounter();
  }

  /** An event from the server: shown, or held back while paused (the oldest beyond TAIL_KEEP skipped). */
  function receive(event) {
    s.received += 1;
    drawCounter();
    if (!s.paused) {
      show(event);
      return;
    }
    s.held.push(event);
    if (s.held.length > TAIL_KEEP) {
      s.held.shift();
      s.skipped += 1;
    }
    drawCounter();
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
    pause.disabled = !running;
    for (const input of [stream, type, tags, select.querySelector("select")]) input.disabled = running;
  }

  function stopTail() {
    if (s.source) {
      s.source.close();
      s.source = null;
    }
    if (s.paused) setPaused(false); // what was held back is shown
    setRunning(false);
    setStatus("disconnected");
    placeholder();
  }

  function show(event) {
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
        receive(JSON.parse(message.data));
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
  pause.addEventListener("click", () => setPaused(!s.paused));
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

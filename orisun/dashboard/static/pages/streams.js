// The streams page (#/streams): a boundary's streams by name or by last write (newest first), each
// linking to its events.

import { append, fmtAgo, fmtInt, fmtTime, h, icon } from "../dom.js";
import { api, describe, enc, isQuiet, loadBoundaries } from "../api.js";
import { alertBox, boundarySelect, emptyRow, field, pageHead, preferredBoundary, rememberBoundary,
  setAlert, textInput } from "../ui.js";

export async function renderStreams(view, params, signal) {
  const names = await loadBoundaries(signal);
  const PAGE = 50;
  const s = { boundary: preferredBoundary(names, params.get("boundary")), after: null, stack: [], next: null };
  const prefix = textInput("filter-prefix", "filter-prefix", "e.g. order-", params.get("prefix"));
  const byWrite = params.get("order") === "last_write";
  const order = h("select", { id: "streams-order", testid: "streams-order", "aria-label": "Order" },
    h("option", { value: "name", selected: !byWrite }, "Name"),
    h("option", { value: "last_write", selected: byWrite }, "Last write, newest first"));
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
    field("Name starts with", prefix), field("Order by", order), h("div", { class: "buttons" }, apply));

  const title = h("h2", {});
  const orderHint = h("span", { class: "hint", testid: "streams-order-hint" });
  append(view, pageHead("Streams", "The streams of a boundary by name, with their version and last write. "
    + "Open one to see its events."),
  h("div", { class: "stack" },
    h("div", { class: "panel" }, form),
    error,
    h("div", { class: "panel" },
      h("div", { class: "panel-head" }, title, h("span", { class: "spacer" }), orderHint),
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
    if (order.value === "last_write") {
      q.set("order", "last_write");
      if (after) q.set("before", after);
    } else if (after) q.set("after", after);
    orderHint.textContent = order.value === "last_write" ? "Ordered by last write, newest first" : "Ordered by name";
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
    if (order.value !== "name") q.set("order", order.value);
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
  order.addEventListener("change", () => first());
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    first();
  });

  tbody.append(emptyRow(5, "Loading…"));
  await first();
}

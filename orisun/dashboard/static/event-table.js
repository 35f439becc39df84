// The event table rows and the event detail drawer, shared by the events and live tail pages.

import { fmtTime, h, icon, prettyJson } from "./dom.js";
import { tagChip } from "./ui.js";

export const EVENT_COLUMNS = ["Position", "Stream", "Version", "Type", "Time (UTC)", "Tags"];

export function eventHeader() {
  return h("thead", {}, h("tr", {}, EVENT_COLUMNS.map((name) =>
    h("th", { class: ["Position", "Version"].includes(name) ? "num" : (name === "Tags" ? "col-tags" : "") }, name))));
}

export function eventRow(event, testid, onOpen) {
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

/** An icon button copying ``text`` to the clipboard (none where the browser has no clipboard
 * access); its title says whether it worked. */
function copyButton(text, what, testid) {
  if (!navigator.clipboard) return null;
  const button = h("button", { type: "button", class: "small ghost icon-only", title: `Copy ${what}`,
    "aria-label": `Copy ${what}`, testid }, icon("copy"));
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(text);
      button.title = "Copied";
    } catch {
      button.title = "Copy failed";
    }
  });
  return button;
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
export function eventDetail(event, { onClose, onStream, boundary }) {
  const stream = onStream
    ? h("a", { href: `#/events?${new URLSearchParams({ boundary, stream: event.stream })}` }, event.stream)
    : event.stream;
  const close = h("button", { type: "button", class: "small ghost", title: "Close", "aria-label": "Close" },
    icon("x"));
  close.addEventListener("click", onClose);
  return h("aside", { class: "panel detail", testid: "event-detail", "aria-label": "Event detail", tabindex: -1 },
    h("div", { class: "panel-head" }, h("h2", {}, event.event_type), h("span", { class: "spacer" }), close),
    h("div", { class: "panel-body" },
      h("dl", { class: "kv" },
        // The id never wraps mid-id: one line (scrolling inside if it must), with a copy button.
        h("dt", {}, "Event ID"), h("dd", { class: "id-line" },
          h("code", { class: "one-line", testid: "detail-event-id" }, event.event_id),
          copyButton(event.event_id, "the event id", "copy-event-id")),
        h("dt", {}, "Type"), h("dd", { testid: "detail-type" }, event.event_type),
        h("dt", {}, "Stream"), h("dd", { class: "mono", testid: "detail-stream" }, stream),
        h("dt", {}, "Version"), h("dd", { class: "num", testid: "detail-version" }, String(event.version)),
        h("dt", {}, "Position"), h("dd", { class: "mono", testid: "detail-position" },
          `${event.position.prepare}`, h("span", { class: "faint" }, `  (commit ${event.position.commit})`)),
        h("dt", {}, "Created"), h("dd", { class: "mono", testid: "detail-created", title: event.created_at || "" },
          event.created_at ? `${fmtTime(event.created_at)} UTC` : "–"),
        h("dt", {}, "Tags"), h("dd", { testid: "detail-tags" },
          (event.tags || []).length ? event.tags.map(tagChip) : h("span", { class: "faint" }, "none"))),
      jsonBlock("Data", event.data, "event-data"),
      jsonBlock("Metadata", event.metadata, "event-metadata")));
}

/** The event detail panel beside a table (events and tail pages): open(event, row), close(). */
export function detailDrawer(tbody, signal, boundaryOf) {
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
    // On a narrow window the panel is a drawer over the page; wherever it is, bring it into view,
    // or the click seems to do nothing (it used to land 2,000 px down at 1024 px).
    const panel = slot.firstElementChild;
    const box = panel.getBoundingClientRect();
    if (box.top < 0 || box.bottom > window.innerHeight) panel.scrollIntoView({ block: "start" });
    panel.focus({ preventScroll: true });
  }
  const onKey = (e) => {
    if (e.key === "Escape" && selected && !document.querySelector("dialog[open]")) close();
  };
  document.addEventListener("keydown", onKey);
  signal.addEventListener("abort", () => document.removeEventListener("keydown", onKey));
  return { slot, open, close, selected: () => selected };
}

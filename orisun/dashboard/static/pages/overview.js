// The overview page (#/overview): node status tiles and a card with a live write-rate chart per
// boundary, refreshed every 2 s.

import { RateChart, WINDOW_SECONDS } from "../chart.js";
import { append, fmtBytes, fmtDuration, fmtInt, fmtRate, fmtTime, h, icon } from "../dom.js";
import { api, describe, isQuiet, poll } from "../api.js";
import { state } from "../state.js";
import { alertBox, pageHead, setAlert } from "../ui.js";

/** A bar of ``percent`` width (set through CSSOM: the CSP refuses style attributes). */
function bar(percent) {
  const fill = h("span", {});
  fill.style.width = `${Math.round(percent)}%`;
  return fill;
}

export async function renderOverview(view, params, signal) {
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
  const internalCards = h("div", { class: "cards", testid: "internal-cards" });
  const internalHead = h("h3", { class: "panel-gap" }, "Internal ",
    h("span", { class: "internal-note" }, "Orisun's own boundary: users and the boundary catalog"));
  append(view,
    pageHead("Overview", "Boundaries, storage and messaging at a glance. Refreshes every 2 s.", updated),
    banner,
    h("div", { class: "status-strip" },
      tile("PostgreSQL", "db", pgStatus, pgDetail),
      tile("NATS JetStream", "bolt", natsStatus, natsDetail),
      tile("Version", "tag", version, versionDetail),
      tile("Uptime", "clock", uptime, uptimeDetail)),
    h("h3", { class: "panel-gap" }, "Boundaries"),
    h("div", { class: "panel-gap" }, cards),
    internalHead,
    h("div", { class: "panel-gap" }, internalCards));

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
    const stat = (label, testid, title = label) => {
      const value = h("div", { class: "value", testid }, "–");
      return { value, el: h("div", { class: "stat" }, h("div", { class: "label", title }, label), value) };
    };
    const events = stat("Events", "stat-events");
    const streams = stat("Streams", "stat-streams");
    const head = stat("Head", "stat-head");
    // "Subscribers" does not fit a fifth of a card: the short label, the long one on hover.
    const subscribers = stat("Subs", "stat-subscribers", "Subscribers: open subscription calls on this node");
    const storage = stat("Storage", "stat-storage");
    const typesHead = h("span", {});
    const typesList = h("div", { testid: "event-types" });
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
      h("div", { class: "stats" }, events.el, streams.el, head.el, subscribers.el, storage.el),
      h("div", { class: "chart-box" },
        h("div", { class: "chart-head" }, h("span", {}, "Write rate"), now, h("span", { class: "spacer" }), readout),
        chart.el,
        h("div", { class: "chart-foot" }, h("span", {}, `${WINDOW_SECONDS / 60} min ago`), h("span", {}, "now"))),
      h("div", { class: "types" }, h("div", { class: "head" }, h("span", {}, "Event types"), h("span", { class: "spacer" }),
        typesHead), typesList));
    return { el, events, streams, head, subscribers, storage, typesHead, typesList, now, readout, chart, schema };
  }

  function updateCard(card, b) {
    card.events.value.textContent = String(b.events);
    card.streams.value.textContent = String(b.streams);
    card.head.value.textContent = String(b.head);
    card.subscribers.value.textContent = String(b.subscribers);
    card.events.value.title = fmtInt(b.events);
    card.head.value.title = fmtInt(b.head);
    card.storage.value.textContent = fmtBytes(b.storage_bytes);
    card.storage.value.title = b.storage_bytes === null || b.storage_bytes === undefined ? ""
      : `${fmtInt(b.storage_bytes)} bytes: tables, indexes and TOAST of schema ${b.schema}`;
    const types = b.event_types || [];
    const sampled = Number(b.event_types_sampled) || 0;
    card.typesHead.textContent = sampled ? `of the last ${fmtInt(sampled)} events` : "";
    card.typesHead.dataset.testid = "event-types-scope";
    const top = Math.max(1, ...types.map((t) => Number(t.events) || 0));
    card.typesList.replaceChildren(...(types.length ? types.slice(0, 8).map((t) => h("div",
      { class: "type-row", testid: "event-type", dataset: { type: t.type, events: String(t.events) } },
      h("span", { class: "name", title: t.type }, t.type),
      h("span", { class: "bar" }, bar((100 * t.events) / top)),
      h("span", { class: "n" }, fmtInt(t.events))))
      : [h("span", { class: "faint" }, "No events yet.")]));
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
        (b.internal ? internalCards : cards).append(card.el);
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
    internalHead.hidden = !overview.boundaries.some((b) => b.internal);
    if (!overview.boundaries.length) cards.replaceChildren(h("div", { class: "panel empty" }, "No boundaries."));
    updated.textContent = `Updated ${new Date().toTimeString().slice(0, 8)}`;
  }

  poll(signal, refresh);
}

// The subscriptions page (#/subscriptions): every event subscription and pub/sub consumer, whether
// it is connected now and since when, its delivery rate and its lag; live subscribers per
// boundary (Orisun's internal boundary apart). Refreshed every 2 s.

import { append, fmtAgo, fmtInt, fmtRate, fmtTime, h } from "../dom.js";
import { api, describe, isQuiet, poll } from "../api.js";
import { alertBox, emptyRow, pageHead, setAlert } from "../ui.js";

function connection(item) {
  const badge = item.connected
    ? h("span", { class: "badge ok live", testid: "connected", title: item.since ? `since ${fmtTime(item.since)} UTC` : "" },
      h("span", { class: "dot" }), "connected")
    : h("span", { class: "badge", testid: "disconnected",
      title: item.until ? `last seen ${fmtTime(item.until)} UTC` : "no open call on this node" },
    h("span", { class: "dot" }), "not connected");
  return h("td", {}, badge);
}

function sinceCell(item) {
  const at = item.connected ? item.since : item.until;
  if (!at) return h("td", { class: "faint" }, "–");
  return h("td", { class: "nowrap", title: `${fmtTime(at)} UTC`, testid: "since" },
    item.connected ? `${fmtTime(at).slice(11, 19)} (${fmtAgo(at)})` : `left ${fmtAgo(at)}`);
}

function rateCell(rate) {
  return h("td", { class: "num", testid: "rate" }, rate === null || rate === undefined
    ? h("span", { class: "faint" }, "–") : `${fmtRate(rate)}/s`);
}

function lagCell(lag, unit) {
  if (lag === null || lag === undefined) return h("td", { class: "num faint", testid: "lag" }, "–");
  const n = Number(lag);
  return h("td", { class: "num", testid: "lag", dataset: { lag: String(n) } }, n === 0
    ? h("span", { class: "badge ok" }, "caught up")
    : h("span", { class: `badge ${n > 1000 ? "error" : "warn"}`, title: `${fmtInt(n)} ${unit} behind` }, fmtInt(n)));
}

export async function renderSubscriptions(view, params, signal) {
  const updated = h("span", { class: "spinner-text" }, "Loading…");
  const error = alertBox("error", "subscriptions-error");
  const subBody = h("tbody", {});
  const pubBody = h("tbody", {});
  const live = h("div", { class: "live-grid" });
  const liveInternal = h("div", { class: "live-grid", testid: "live-internal" });
  const subCount = h("span", { class: "badge" }, "0");
  const pubCount = h("span", { class: "badge" }, "0");

  append(view,
    pageHead("Subscriptions", "Event subscriptions and pub/sub consumers: connected or not, since when, "
      + "their rate and their lag. Refreshes every 2 s.", updated),
    h("div", { class: "stack" }, error,
      h("section", { class: "panel" },
        h("div", { class: "panel-head" }, h("h2", {}, "Event subscriptions"), subCount, h("span", { class: "spacer" }),
          h("span", { class: "hint" }, "Lag: events committed after the last one the subscription looked at")),
        h("div", { class: "table-wrap" }, h("table", { class: "data", testid: "subscriptions-table" },
          h("thead", {}, h("tr", {}, h("th", {}, "Status"), h("th", {}, "Boundary"), h("th", {}, "Subscriber"),
            h("th", {}, "Stream"), h("th", {}, "Since (UTC)"), h("th", { class: "num" }, "Delivered"),
            h("th", { class: "num" }, "Rate"), h("th", { class: "num" }, "Position"), h("th", { class: "num" }, "Head"),
            h("th", { class: "num" }, "Lag"))),
          subBody))),
      h("section", { class: "panel" },
        h("div", { class: "panel-head" }, h("h2", {}, "Live subscribers per boundary")), live,
        h("div", { class: "panel-head" }, h("h2", {}, "Internal"),
          h("span", { class: "internal-note" }, "Orisun's own boundary (users, the boundary catalog)")),
        liveInternal),
      h("section", { class: "panel" },
        h("div", { class: "panel-head" }, h("h2", {}, "Pub/sub consumers"), pubCount, h("span", { class: "spacer" }),
          h("span", { class: "hint" }, "Lag: messages not yet delivered, or delivered and not acknowledged")),
        h("div", { class: "table-wrap" }, h("table", { class: "data", testid: "pubsub-table" },
          h("thead", {}, h("tr", {}, h("th", {}, "Status"), h("th", {}, "Subject"), h("th", {}, "Consumer"),
            h("th", {}, "Since (UTC)"), h("th", { class: "num" }, "Delivered"), h("th", { class: "num" }, "Rate"),
            h("th", { class: "num" }, "Lag"), h("th", { class: "num" }, "Pending"),
            h("th", { class: "num" }, "Ack pending"), h("th", { class: "num" }, "Redelivered"))),
          pubBody)))));

  function subscriptionRow(sub) {
    return h("tr", { testid: "subscription-row", dataset: { boundary: sub.boundary, subscriber: sub.subscriber_name,
      connected: String(sub.connected) } },
    connection(sub),
    h("td", { class: "mono" }, sub.boundary,
      sub.internal ? h("span", { class: "badge", title: "Orisun's own boundary" }, "internal") : null),
    h("td", { class: "mono" }, sub.subscriber_name || h("span", { class: "faint" }, "unnamed")),
    h("td", { class: "mono" }, sub.stream || h("span", { class: "faint" }, "all events")),
    sinceCell(sub),
    h("td", { class: "num" }, fmtInt(sub.delivered)),
    rateCell(sub.connected ? sub.rate : null),
    h("td", { class: "num mono", title: sub.position ? `commit ${sub.position.commit}, prepare ${sub.position.prepare}`
      : "" }, sub.position ? String(sub.position.prepare) : h("span", { class: "faint" }, "none yet")),
    h("td", { class: "num mono" }, String(sub.head)),
    lagCell(sub.lag, "events"));
  }

  function consumerRow(c) {
    return h("tr", { testid: "pubsub-row", dataset: { consumer: c.consumer_name, connected: String(c.connected) } },
      connection(c),
      h("td", { class: "mono" }, c.subject),
      h("td", { class: "mono" }, c.consumer_name || h("span", { class: "faint" }, "unnamed"),
        c.calls > 1 ? h("span", { class: "faint" }, ` ×${c.calls}`) : null),
      sinceCell(c),
      h("td", { class: "num" }, c.connected ? fmtInt(c.delivered) : h("span", { class: "faint" }, "–")),
      rateCell(c.connected ? c.rate : null),
      lagCell(c.lag, "messages"),
      h("td", { class: "num" }, fmtInt(c.pending)), h("td", { class: "num" }, fmtInt(c.ack_pending)),
      h("td", { class: "num" }, fmtInt(c.redelivered)));
  }

  function liveItems(counts, empty) {
    const entries = Object.entries(counts || {});
    return entries.length ? entries.map(([boundary, n]) => h("div",
      { class: "live-item", testid: "live-count", dataset: { boundary } },
      h("span", { class: "name" }, boundary), h("span", { class: "count" }, String(n))))
      : [h("span", { class: "muted" }, empty)];
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
    subBody.replaceChildren(...(subs.length ? subs.map(subscriptionRow)
      : [emptyRow(10, "No event subscriptions are open.")]));
    live.replaceChildren(...liveItems(answer.live, "No boundaries."));
    liveInternal.replaceChildren(...liveItems(answer.live_internal, "–"));
    const consumers = answer.pubsub || [];
    pubCount.textContent = String(consumers.length);
    pubBody.replaceChildren(...(consumers.length ? consumers.map(consumerRow) : [emptyRow(10, "No pub/sub consumers.")]));
    updated.textContent = `Updated ${new Date().toTimeString().slice(0, 8)}`;
  }

  poll(signal, refresh);
}

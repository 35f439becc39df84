// The subscriptions page (#/subscriptions): named event subscriptions with their lag, live
// subscribers per boundary and pub/sub consumers, refreshed every 2 s.

import { append, fmtInt, h } from "../dom.js";
import { api, describe, isQuiet, poll } from "../api.js";
import { alertBox, emptyRow, pageHead, setAlert } from "../ui.js";

export async function renderSubscriptions(view, params, signal) {
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

// The Orisun admin dashboard: a single page with hash routes (#/overview, #/events, #/streams,
// #/tail, #/subscriptions, #/boundaries, #/users) over the JSON API of docs/dashboard.md.
//
// Rules kept throughout: data is shown with textContent only (never innerHTML); every POST and
// DELETE sends Content-Type: application/json and X-CSRF-Token; any 401 goes to /login.
//
// This file is the shell: it loads the session, fills the header and sidebar, and routes each hash
// to its page. Each page is one module, pages/<name>.js, exporting render<Name>(view, params,
// signal); the signal aborts when the page is left, which stops the page's polling, timers and
// live connections.
//
// Where things are:
//   api.js          fetch wrapper (CSRF header, 401 -> /login), error text, boundary list, poll()
//   state.js        the session and the cached boundary names
//   ui.js           shared page pieces: page head, alerts, fields, boundary picker, confirm dialog
//   event-table.js  event rows and the detail drawer (events and tail pages)
//   dom.js          h()/icon() element helpers, number and time formatting
//   chart.js        the write-rate chart of the overview page

import { h } from "./dom.js";
import { Redirecting, api, describe, isQuiet } from "./api.js";
import { isAdmin, state } from "./state.js";
import { renderBoundaries } from "./pages/boundaries.js";
import { renderEvents } from "./pages/events.js";
import { renderOverview } from "./pages/overview.js";
import { renderStreams } from "./pages/streams.js";
import { renderSubscriptions } from "./pages/subscriptions.js";
import { renderTail } from "./pages/tail.js";
import { renderUsers } from "./pages/users.js";

// ---------- Shell and router ----------

const ROUTES = {
  overview: { title: "Overview", render: renderOverview },
  events: { title: "Events", render: renderEvents },
  streams: { title: "Streams", render: renderStreams },
  tail: { title: "Live tail", render: renderTail },
  subscriptions: { title: "Subscriptions", render: renderSubscriptions },
  boundaries: { title: "Boundaries", render: renderBoundaries },
  users: { title: "Users", render: renderUsers },
};

let currentPage = null; // the AbortController of the page on screen

// Shown above every page while the configured admin user still has the default password.
const passwordBanner = h("div", { class: "alert warn banner-global", role: "alert", testid: "default-password-banner",
  hidden: true });

function showPasswordBanner(session) {
  passwordBanner.hidden = !session.default_admin_password;
  if (passwordBanner.hidden) return;
  const who = session.admin_username || "admin";
  passwordBanner.replaceChildren(`The admin user ${who} still has the default password: anyone who knows it can `
    + "change everything here. ",
  isAdmin() ? h("a", { href: "#/users" }, "Change it on the Users page") : "Ask an administrator to change it",
  " (or set ORISUN_ADMIN_PASSWORD before the first start).");
}

/** The session again (cheap: the server keeps the password check until the admin user changes). */
async function refreshBanner(signal) {
  try {
    const session = await api("/api/session", { signal });
    state.session = { ...state.session, ...session };
    showPasswordBanner(state.session);
  } catch (error) {
    if (!isQuiet(error)) passwordBanner.hidden = true;
  }
}

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
  view.replaceChildren(passwordBanner);
  view.dataset.page = name;
  refreshBanner(controller.signal);
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
  showPasswordBanner(state.session);
  window.addEventListener("orisun:users-changed", () => refreshBanner(currentPage ? currentPage.signal : undefined));
  window.addEventListener("hashchange", route);
  if (!location.hash || location.hash === "#" || location.hash === "#/") history.replaceState(null, "", "#/overview");
  route();
}

main();

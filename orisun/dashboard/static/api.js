// Talking to the server: the JSON API wrapper (CSRF header on writes, any 401 goes to /login),
// error helpers, the cached boundary list and the polling helper of the auto-refreshing pages.

import { h } from "./dom.js";
import { state } from "./state.js";

const RETURN_KEY = "orisun.return";
export const POLL_MS = 2000;

export class ApiError extends Error {
  constructor(status, message, field) {
    super(message);
    this.status = status;
    this.field = field || null;
  }
}

/** Thrown after a redirect to /login has started: callers just stop. */
export class Redirecting extends Error {}

export function toLogin() {
  try {
    if (location.hash && location.hash !== "#/overview") sessionStorage.setItem(RETURN_KEY, location.hash);
  } catch {
    // storage unavailable: land on the overview after login
  }
  location.assign("/login");
}

/** Call the API; the parsed JSON answer (null for 204). Throws ApiError (with the server's message). */
export async function api(path, { method = "GET", body, signal } = {}) {
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

export function setConnection(ok) {
  const badge = document.getElementById("connection");
  if (!badge) return;
  badge.hidden = ok;
  if (!ok) {
    badge.className = "badge error";
    badge.replaceChildren(h("span", { class: "dot" }), "connection lost");
  }
}

export function isQuiet(error) {
  return error instanceof Redirecting || (error && error.name === "AbortError");
}

export function describe(error) {
  if (error instanceof ApiError) return error.message;
  if (error instanceof TypeError) return "Cannot reach the server: is Orisun running?";
  return String(error && error.message ? error.message : error);
}

export function enc(text) {
  return encodeURIComponent(text);
}

/** The boundary names (from /api/boundaries), asked for on every page that shows a picker: a
 * boundary created at runtime (here, on another node or in another tab) appears without a reload. */
export async function loadBoundaries(signal) {
  const answer = await api("/api/boundaries", { signal });
  // The user's boundaries first; Orisun's own (internal) after them.
  const sorted = [...answer.boundaries].sort((a, b) => Number(Boolean(a.internal)) - Number(Boolean(b.internal)));
  state.boundaries = sorted.map((b) => b.name);
  state.internal = new Set(sorted.filter((b) => b.internal).map((b) => b.name));
  return state.boundaries;
}

/** Run fn now and then every POLL_MS until the page is left (signal aborted). */
export function poll(signal, fn, ms = POLL_MS) {
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

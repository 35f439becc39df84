// Building blocks shared by the pages: page head, alerts, form fields, the boundary picker,
// tag chips, empty table rows and the confirmation dialog.

import { h } from "./dom.js";
import { state } from "./state.js";

const BOUNDARY_KEY = "orisun.boundary";

export function rememberBoundary(name) {
  try {
    sessionStorage.setItem(BOUNDARY_KEY, name);
  } catch {
    // not remembered: fine
  }
}

export function preferredBoundary(names, wanted) {
  if (wanted && names.includes(wanted)) return wanted;
  let remembered = null;
  try {
    remembered = sessionStorage.getItem(BOUNDARY_KEY);
  } catch {
    remembered = null;
  }
  if (remembered && names.includes(remembered)) return remembered;
  return names.find((name) => !state.internal.has(name)) || names[0] || "";
}

/** The boundary picker: the user's boundaries, then Orisun's internal one in a group of its own. */
export function boundarySelect(names, selected, onChange) {
  const option = (name) => h("option", { value: name, selected: name === selected }, name);
  const internal = names.filter((name) => state.internal.has(name));
  const select = h("select", { id: "boundary", testid: "boundary-select", "aria-label": "Boundary" },
    names.filter((name) => !state.internal.has(name)).map(option),
    internal.length ? h("optgroup", { label: "Internal (Orisun's own)", testid: "internal-boundaries" },
      internal.map(option)) : null);
  select.addEventListener("change", () => {
    rememberBoundary(select.value);
    onChange(select.value);
  });
  return h("label", { class: "field", for: "boundary" }, "Boundary", select);
}

export function field(label, input) {
  return h("label", { class: "field", for: input.id }, label, input);
}

export function textInput(id, testid, placeholder, value, extraClass) {
  return h("input", { type: "text", id, testid, placeholder, value: value || "", class: extraClass,
    autocomplete: "off", spellcheck: "false" });
}

/** Parse "key:value, key:value" into ["key:value", ...]; throws with a message when malformed. */
export function parseTags(text) {
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

export function pageHead(title, description, ...extra) {
  return h("div", { class: "page-head" },
    h("div", {}, h("h1", {}, title), description ? h("div", { class: "desc" }, description) : null),
    h("div", { class: "spacer" }),
    extra);
}

export function alertBox(kind, testid) {
  return h("div", { class: `alert ${kind}`, role: kind === "error" ? "alert" : "status", testid, hidden: true });
}

export function setAlert(box, message) {
  box.textContent = message || "";
  box.hidden = !message;
}

export function tagChip(tag) {
  return h("span", { class: "tag", title: `${tag.key}:${tag.value}` },
    h("span", { class: "k" }, `${tag.key}:`), tag.value);
}

export function cursorOf(event) {
  return `${event.position.commit}:${event.position.prepare}`;
}

export function emptyRow(columns, message) {
  return h("tr", {}, h("td", { colspan: columns, class: "empty" }, message));
}

/** The in-page confirmation dialog; resolves true when confirmed. */
export function confirmDialog(title, text, action) {
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

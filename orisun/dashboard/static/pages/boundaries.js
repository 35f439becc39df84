// The boundaries page (#/boundaries): every boundary with its schema and description, whether it
// comes from ORISUN_PG_SCHEMAS; for ADMIN users, a form creating one at runtime (POST
// /api/boundaries), usable at once: the pickers of the other pages ask for the list each time.

import { append, fmtTime, h, icon } from "../dom.js";
import { ApiError, api, describe, isQuiet } from "../api.js";
import { isAdmin, state } from "../state.js";
import { alertBox, emptyRow, field, pageHead, setAlert } from "../ui.js";

export async function renderBoundaries(view, params, signal) {
  append(view, pageHead("Boundaries", "Each boundary keeps its events in its own PostgreSQL schema."));
  const notice = alertBox("success", "boundaries-notice");
  const listError = alertBox("error", "boundaries-error");
  const tbody = h("tbody", {});
  const table = h("section", { class: "panel" },
    h("div", { class: "panel-head" }, h("h2", {}, "All boundaries")),
    h("div", { class: "table-wrap" }, h("table", { class: "data", testid: "boundaries-table" },
      h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", {}, "Schema"), h("th", {}, "Description"),
        h("th", {}, "Origin"), h("th", {}, ""))),
      tbody)));

  let side;
  if (isAdmin()) {
    const name = h("input", { type: "text", id: "boundary-name", testid: "boundary-add-name", autocomplete: "off",
      spellcheck: "false", placeholder: "e.g. orders" });
    const schema = h("input", { type: "text", id: "boundary-schema", testid: "boundary-add-schema",
      autocomplete: "off", spellcheck: "false", placeholder: "the name" });
    const description = h("input", { type: "text", id: "boundary-description", testid: "boundary-add-description",
      autocomplete: "off" });
    const formError = alertBox("error", "boundary-form-error");
    const submit = h("button", { type: "submit", class: "primary", testid: "boundary-add-submit" }, icon("plus"),
      "Create boundary");
    const form = h("form", { class: "user-form panel-body", novalidate: true },
      field("Name", name), field("Schema (optional)", schema), field("Description (optional)", description),
      h("div", { class: "hint" }, "Letters, digits and _, not starting with a digit, at most 63 characters. "
        + "The schema is created and migrated; the boundary is usable at once on every node."),
      formError, submit);
    const inputsByField = { name, schema, description };

    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      setAlert(formError, "");
      setAlert(notice, "");
      for (const input of Object.values(inputsByField)) input.classList.remove("invalid");
      submit.disabled = true;
      try {
        const created = await api("/api/boundaries", { method: "POST", signal,
          body: { name: name.value, schema: schema.value, description: description.value } });
        form.reset();
        setAlert(notice, `Boundary ${created.name} created.`);
        await loadList();
      } catch (err) {
        if (isQuiet(err)) return;
        // The server's message as it is (400 names the field; 409: the name or schema is taken, or
        // the schema exists already).
        setAlert(formError, describe(err));
        const fieldName = err instanceof ApiError ? (err.field || (err.status === 409 ? "name" : null)) : null;
        const input = fieldName ? inputsByField[fieldName] : null;
        if (input) {
          input.classList.add("invalid");
          input.focus();
        }
      } finally {
        submit.disabled = false;
      }
    });
    side = h("section", { class: "panel" }, h("div", { class: "panel-head" }, h("h2", {}, "Create a boundary")),
      form);
  }

  append(view, h("div", { class: "stack" }, notice, listError,
    side ? h("div", { class: "users-layout" }, table, side) : table));

  function row(b) {
    const origin = b.configured
      ? h("span", { class: "badge", title: "Configured by ORISUN_PG_SCHEMAS (or an adopted schema)" },
        "ORISUN_PG_SCHEMAS")
      : h("span", { class: "badge accent", title: b.created_at ? `Created ${fmtTime(b.created_at)} UTC` : "" },
        "created at runtime");
    const q = (page) => `#/${page}?${new URLSearchParams({ boundary: b.name })}`;
    return h("tr", { testid: "boundary-row", dataset: { boundary: b.name, internal: String(Boolean(b.internal)) } },
      h("td", { class: "mono" }, b.name, b.internal
        ? h("span", { class: "badge", testid: "internal-badge", title: "Orisun's own boundary: users and the "
          + "boundary catalog" }, "internal") : null),
      h("td", { class: "mono" }, b.schema),
      h("td", {}, b.description || h("span", { class: "faint" }, "—")),
      h("td", {}, origin),
      h("td", {}, h("div", { class: "actions" }, h("a", { href: q("events") }, "Events"),
        h("a", { href: q("streams") }, "Streams"))));
  }

  async function loadList() {
    try {
      const answer = await api("/api/boundaries", { signal });
      // The user's boundaries first, Orisun's internal one last.
      const boundaries = [...(answer.boundaries || [])].sort((a, b) => Number(Boolean(a.internal))
        - Number(Boolean(b.internal)));
      state.boundaries = boundaries.map((b) => b.name);
      tbody.replaceChildren(...(boundaries.length ? boundaries.map(row) : [emptyRow(5, "No boundaries.")]));
    } catch (err) {
      if (isQuiet(err)) return;
      setAlert(listError, describe(err));
    }
  }

  tbody.append(emptyRow(5, "Loading…"));
  await loadList();
}

// The users page (#/users, ADMIN only): list, add and delete users, change passwords.

import { append, h, icon } from "../dom.js";
import { ApiError, api, describe, enc, isQuiet } from "../api.js";
import { isAdmin, state } from "../state.js";
import { alertBox, confirmDialog, emptyRow, field, pageHead, setAlert } from "../ui.js";

export async function renderUsers(view, params, signal) {
  append(view, pageHead("Users", "The users of the gRPC API and of this dashboard."));
  if (!isAdmin()) {
    view.append(h("div", { class: "panel empty", testid: "users-forbidden" },
      "Only users with the ADMIN role can manage users."));
    return;
  }
  const notice = alertBox("success", "users-notice");
  const listError = alertBox("error", "users-error");
  const tbody = h("tbody", {});

  const name = h("input", { type: "text", id: "user-name", testid: "user-add-name", autocomplete: "off" });
  const username = h("input", { type: "text", id: "user-username", testid: "user-add-username", autocomplete: "off",
    autocapitalize: "none", spellcheck: "false" });
  const password = h("input", { type: "password", id: "user-password", testid: "user-add-password",
    autocomplete: "new-password" });
  const roleAdmin = h("input", { type: "checkbox", value: "ADMIN", testid: "user-add-role-admin" });
  const roleOps = h("input", { type: "checkbox", value: "OPERATIONS", testid: "user-add-role-operations" });
  const formError = alertBox("error", "user-form-error");
  const submit = h("button", { type: "submit", class: "primary", testid: "user-add-submit" }, icon("plus"), "Add user");
  const form = h("form", { class: "user-form panel-body", novalidate: true },
    field("Name", name), field("Username", username), field("Password", password),
    h("fieldset", {}, h("legend", {}, "Roles"),
      h("div", { class: "roles" },
        h("label", { class: "check" }, roleAdmin, "ADMIN"),
        h("label", { class: "check" }, roleOps, "OPERATIONS")),
      h("div", { class: "hint" }, "ADMIN manages users and writes; OPERATIONS writes; no role: read only.")),
    formError, submit);

  append(view, h("div", { class: "stack" }, notice, listError,
    h("div", { class: "users-layout" },
      h("section", { class: "panel" },
        h("div", { class: "panel-head" }, h("h2", {}, "All users")),
        h("div", { class: "table-wrap" }, h("table", { class: "data users", testid: "users-table" },
          h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", {}, "Username"), h("th", {}, "Roles"),
            h("th", {}, ""))),
          tbody))),
      h("section", { class: "panel" },
        h("div", { class: "panel-head" }, h("h2", {}, "Add a user")), form))));

  const inputsByField = { name, username, password, roles: roleAdmin };

  function roleBadges(roles) {
    if (!roles || !roles.length) return h("span", { class: "faint" }, "read only");
    return roles.map((role) => h("span", { class: `badge role ${role.toLowerCase()}` }, role));
  }

  function userRow(user) {
    const self = user.username === state.session.username;
    const pwInput = h("input", { type: "password", testid: "user-password-input", placeholder: "New password",
      autocomplete: "new-password", "aria-label": `New password for ${user.username}` });
    const pwSubmit = h("button", { type: "submit", class: "small primary", testid: "user-password-submit" }, "Save");
    const pwCancel = h("button", { type: "button", class: "small" }, "Cancel");
    const pwMessage = h("div", { class: "msg field-error", testid: "user-password-error", hidden: true });
    const pwForm = h("form", { class: "inline-form", novalidate: true, hidden: true },
      pwInput, pwSubmit, pwCancel, pwMessage);
    const pwButton = h("button", { type: "button", class: "small", testid: "user-password" }, icon("key"),
      "Password");
    const del = h("button", { type: "button", class: "small danger", testid: "user-delete", disabled: self,
      title: self ? "You cannot delete your own account" : `Delete ${user.username}` }, icon("trash"), "Delete");

    pwButton.addEventListener("click", () => {
      pwForm.hidden = !pwForm.hidden;
      pwMessage.hidden = true;
      if (!pwForm.hidden) pwInput.focus();
    });
    pwCancel.addEventListener("click", () => {
      pwForm.hidden = true;
      pwInput.value = "";
    });
    pwForm.addEventListener("submit", async (e) => {
      e.preventDefault();
      pwMessage.hidden = true;
      pwInput.classList.remove("invalid");
      pwSubmit.disabled = true;
      try {
        await api(`/api/users/${enc(user.username)}/password`, { method: "POST", body: { password: pwInput.value },
          signal });
        pwInput.value = "";
        pwForm.hidden = true;
        setAlert(notice, `Password of ${user.username} changed.`);
        window.dispatchEvent(new Event("orisun:users-changed")); // the default-password banner looks again
      } catch (err) {
        if (isQuiet(err)) return;
        pwInput.classList.add("invalid");
        pwMessage.textContent = describe(err);
        pwMessage.hidden = false;
      } finally {
        pwSubmit.disabled = false;
      }
    });
    del.addEventListener("click", async () => {
      const ok = await confirmDialog(`Delete user ${user.username}?`,
        `${user.name || user.username} will no longer be able to sign in or call the gRPC API. This cannot be undone.`,
        "Delete user");
      if (!ok) return;
      setAlert(notice, "");
      setAlert(listError, "");
      try {
        // The name in the body: a name stored before the length limit may be too long for a URL.
        await api("/api/users", { method: "DELETE", body: { username: user.username }, signal });
        setAlert(notice, `User ${user.username} deleted.`);
      } catch (err) {
        if (isQuiet(err)) return;
        setAlert(listError, describe(err));
      }
      await loadUsers();
    });

    return h("tr", { testid: "user-row", dataset: { username: user.username } },
      h("td", {}, user.name),
      h("td", { class: "mono" }, user.username, self ? h("span", { class: "you" }, "(you)") : null),
      h("td", {}, roleBadges(user.roles)),
      h("td", {}, h("div", { class: "actions" }, pwButton, del),
        self ? h("div", { class: "hint actions" }, "You cannot delete yourself.") : null, pwForm));
  }

  async function loadUsers() {
    try {
      const answer = await api("/api/users", { signal });
      const users = (answer.users || []).slice().sort((a, b) => a.username.localeCompare(b.username));
      tbody.replaceChildren(...(users.length ? users.map(userRow) : [emptyRow(4, "No users.")]));
    } catch (err) {
      if (isQuiet(err)) return;
      setAlert(listError, describe(err));
    }
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    setAlert(formError, "");
    setAlert(notice, "");
    for (const input of Object.values(inputsByField)) input.classList.remove("invalid");
    const roles = [roleAdmin, roleOps].filter((box) => box.checked).map((box) => box.value);
    submit.disabled = true;
    try {
      const user = await api("/api/users", { method: "POST", signal,
        body: { name: name.value, username: username.value, password: password.value, roles } });
      form.reset();
      setAlert(notice, `User ${user && user.username ? user.username : ""} added.`);
      await loadUsers();
    } catch (err) {
      if (isQuiet(err)) return;
      setAlert(formError, describe(err));
      // 409: the username is taken (the answer names no field).
      const fieldName = err instanceof ApiError ? (err.field || (err.status === 409 ? "username" : null)) : null;
      const input = fieldName ? inputsByField[fieldName] : null;
      if (input) {
        input.classList.add("invalid");
        input.focus();
      }
    } finally {
      submit.disabled = false;
    }
  });

  tbody.append(emptyRow(4, "Loading…"));
  await loadUsers();
}

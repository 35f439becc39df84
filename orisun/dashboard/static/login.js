// The login page: POST /api/login, then on to the dashboard (and the page asked for, if any).

const RETURN_KEY = "orisun.return";

const form = document.getElementById("login-form");
const username = document.getElementById("username");
const password = document.getElementById("password");
const submit = document.getElementById("login-submit");
const errorBox = document.getElementById("login-error");

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = false;
}

let ticking = null; // the countdown's timer

function clearError() {
  clearInterval(ticking);
  ticking = null;
  errorBox.textContent = "";
  errorBox.hidden = true;
}

/** "Too many failed logins — try again in 0:27", counting down to "you can try again now". */
function countdown(seconds) {
  const until = Date.now() + seconds * 1000;
  const tick = () => {
    const left = Math.max(0, Math.ceil((until - Date.now()) / 1000));
    if (left === 0) {
      clearInterval(ticking);
      ticking = null;
      showError("Too many failed logins. You can try again now.");
      errorBox.dataset.left = "0";
      return;
    }
    showError(`Too many failed logins — try again in ${Math.floor(left / 60)}:${String(left % 60).padStart(2, "0")}`);
    errorBox.dataset.left = String(left);
  };
  clearInterval(ticking);
  tick();
  ticking = setInterval(tick, 250);
}

function destination() {
  let hash = "";
  try {
    hash = sessionStorage.getItem(RETURN_KEY) || "";
    sessionStorage.removeItem(RETURN_KEY);
  } catch {
    hash = "";
  }
  if (!hash) hash = window.location.hash; // a deep link that was redirected here keeps its fragment
  return /^#\/[\w/?=&%.:,+-]*$/.test(hash) ? "/" + hash : "/";
}

async function readError(response) {
  try {
    const body = await response.json();
    if (body && typeof body.error === "string" && body.error) return body.error;
  } catch {
    // not JSON: fall through to a generic message
  }
  return null;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearError();
  if (!username.value.trim() || !password.value) {
    showError("Enter your username and password.");
    (username.value.trim() ? password : username).focus();
    return;
  }
  submit.disabled = true;
  submit.textContent = "Signing in…";
  try {
    const response = await fetch("/api/login", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ username: username.value.trim(), password: password.value }),
    });
    if (response.ok) {
      window.location.assign(destination());
      return;
    }
    if (response.status === 401) {
      showError("Invalid username or password");
      password.value = "";
      password.focus();
    } else if (response.status === 429) {
      countdown(Number(response.headers.get("Retry-After")) || 1);
    } else {
      const message = await readError(response);
      showError(message || `Sign-in failed (HTTP ${response.status}).`);
    }
  } catch {
    showError("Cannot reach the server. Check that Orisun is running.");
  } finally {
    submit.disabled = false;
    submit.textContent = "Sign in";
  }
});

// Already signed in (e.g. the back button after login)? Go straight to the dashboard.
fetch("/api/session", { credentials: "same-origin" })
  .then((response) => {
    if (response.ok) window.location.replace(destination());
  })
  .catch(() => {});

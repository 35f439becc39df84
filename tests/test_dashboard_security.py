"""The admin dashboard's security rules on a real server (docs/dashboard.md; issue 6, parts 2 and 4):
access without a session, security headers, login, sessions (forged, expired, logged out, ended by
deleting the user), CSRF and Origin checks. The users API and its role check, the throttling of
failed logins and malformed input are in test_dashboard_security_users.py.

Written from docs/dashboard.md, not from the implementation, with the standard-library client of
tests/dashboard_client.py. One server for the module (its own, since tests here shorten session
lifetimes). Rules per client address are exercised from other loopback addresses (127.0.0.x,
each test its own) so that the tests' own address is never throttled.
"""


import json
import re
import secrets
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import grpc
import pytest

import orisun
from orisun._proto import eventstore_pb2 as pb
from orisun.runtime.postgres import EmbeddedPostgres
from tests.dashboard_client import USER_KEYS, Client, Response, assert_error, logged_in, ok
from tests.support import ADMIN, ServerThread, auth_metadata, running_server, wait_for

pytestmark = pytest.mark.timeout(60)

BOUNDARIES = {"orisun_admin": "orisun_admin", "dash_sec": "dash_sec"}


@pytest.fixture(scope="module")
def dash(postgres: EmbeddedPostgres) -> Iterator[ServerThread]:
    with running_server(postgres.conninfo, "test_dash_sec", boundaries=BOUNDARIES, admin_port=0) as server:
        yield server


@pytest.fixture
def admin(dash: ServerThread) -> Client:
    """A fresh admin session per test (tests here shorten session lifetimes)."""
    return logged_in(dash)


def grpc_refusal(server: ServerThread, username: str, password: str) -> grpc.StatusCode | None:
    """The status GetEvents fails with for these credentials; None when it succeeds."""
    with server.stub() as stub:
        try:
            stub.GetEvents(pb.GetEventsRequest(boundary="dash_sec", count=1),
                           metadata=auth_metadata(username, password), timeout=10)
        except grpc.RpcError as exc:
            code: grpc.StatusCode = exc.code()
            return code
    return None


def new_user(admin: Client, roles: Sequence[str] = ("OPERATIONS",), password: str = "first-password") -> str:
    username = f"user-{uuid.uuid4().hex[:8]}"
    body = ok(admin.post("/api/users", {"name": "Some One", "username": username, "password": password,
                                        "roles": list(roles)}), 201)
    assert set(body) == USER_KEYS, body  # never a password or a hash
    assert (body["username"], body["name"], body["roles"]) == (username, "Some One", list(roles))
    return username


def usernames(admin: Client) -> list[str]:
    users = ok(admin.get("/api/users"))["users"]
    assert all(set(user) == USER_KEYS for user in users), users
    return [user["username"] for user in users]


def redirects_to_login(response: Response) -> bool:
    return response.status in (302, 303) and urlsplit(response.header("Location") or "").path == "/login"


# --- Without a session -------------------------------------------------------------------------


def test_pages_without_a_session(dash: ServerThread) -> None:
    client = Client(dash.dashboard_url)
    assert redirects_to_login(client.get("/")), client.get("/").status
    login = client.get("/login")
    assert login.status == 200 and (login.header("Content-Type") or "").startswith("text/html")
    # Its assets are local, public, and there is no inline script.
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", login.text), "inline script on /login"
    assets = re.findall(r"<(?:script|link)[^>]*\b(?:src|href)=\"([^\"]+)\"", login.text)
    assert re.search(r"<script[^>]*\bsrc=", login.text), "the login page loads no script"
    # The dashboard page's assets (app.js, style.css ...) are public too.
    page = logged_in(dash).get("/")
    assert page.status == 200, page.status
    assets += re.findall(r"<(?:script|link)[^>]*\b(?:src|href)=\"([^\"]+)\"", page.text)
    for asset in sorted(set(assets)):
        assert asset.startswith("/static/"), f"{asset} is not served by the dashboard"
        response = client.get(asset)
        assert response.status == 200, f"{asset}: {response.status}"
        if asset.endswith(".js"):
            assert "javascript" in (response.header("Content-Type") or ""), asset
        if asset.endswith(".css"):
            assert "text/css" in (response.header("Content-Type") or ""), asset
    assert client.cookie is None


API = [
    ("GET", "/api/session"), ("GET", "/api/overview"), ("GET", "/api/boundaries/dash_sec/events"),
    ("GET", "/api/boundaries/dash_sec/streams"), ("GET", "/api/boundaries/dash_sec/tail"),
    ("GET", "/api/boundaries/no_such/events"), ("GET", "/api/subscriptions"), ("GET", "/api/users"),
    ("POST", "/api/users"), ("POST", "/api/users/admin/password"), ("DELETE", "/api/users/admin"),
    ("POST", "/api/logout"), ("GET", "/api/no-such-endpoint"),
]


@pytest.mark.parametrize("cookie", ["none", "random"])
@pytest.mark.parametrize(("method", "path"), API, ids=[f"{m} {p}" for m, p in API])
def test_api_needs_a_session(dash: ServerThread, method: str, path: str, cookie: str) -> None:
    client = Client(dash.dashboard_url, cookie=secrets.token_urlsafe(32) if cookie == "random" else None,
                    csrf=secrets.token_urlsafe(32))
    username = f"intruder-{uuid.uuid4().hex[:8]}"
    body = {"name": "I", "username": username, "password": "owned-1", "roles": ["ADMIN"]} if method == "POST" else None
    assert_error(client.request(method, path, body), 401)
    assert username not in usernames(logged_in(dash)) and grpc_refusal(dash, *ADMIN) is None


# --- Security headers --------------------------------------------------------------------------


def check_headers(response: Response, api: bool) -> None:
    csp = response.header("Content-Security-Policy") or ""
    assert "default-src 'self'" in csp, csp
    script_src = re.search(r"script-src([^;]*)", csp)
    assert script_src is None or "'unsafe-inline'" not in script_src.group(1), csp
    assert response.header("X-Frame-Options") == "DENY"
    assert response.header("X-Content-Type-Options") == "nosniff"
    assert response.header("Referrer-Policy") == "no-referrer"
    if api:
        assert "no-store" in (response.header("Cache-Control") or ""), response.header("Cache-Control")


def test_security_headers_on_every_answer(dash: ServerThread, admin: Client) -> None:
    anonymous = Client(dash.dashboard_url)
    check_headers(anonymous.get("/login"), api=False)
    check_headers(anonymous.get("/"), api=False)
    check_headers(anonymous.get("/api/session"), api=True)
    login = Client(dash.dashboard_url)
    check_headers(login.post("/api/login", {"username": "admin", "password": "changeit"}), api=True)
    page = admin.get("/")
    assert page.status == 200 and (page.header("Content-Type") or "").startswith("text/html")
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page.text), "inline script on /"
    check_headers(page, api=False)
    for path in ("/api/session", "/api/overview", "/api/users", "/api/boundaries/no_such/events"):
        check_headers(admin.get(path), api=True)
    check_headers(admin.post("/api/users", {"username": ""}), api=True)


# --- Login -------------------------------------------------------------------------------------


def test_login_answers_user_and_csrf_token_and_sets_the_cookie(dash: ServerThread) -> None:
    client = Client(dash.dashboard_url)
    response = client.login(*ADMIN)
    body = ok(response)
    assert set(body) == {"username", "name", "roles", "csrf_token"}
    assert (body["username"], body["roles"]) == ("admin", ["ADMIN"])
    assert isinstance(body["name"], str) and isinstance(body["csrf_token"], str) and len(body["csrf_token"]) >= 16
    [(value, attributes)] = response.session_cookies()
    assert "httponly" in attributes, attributes
    assert attributes.get("samesite", "").lower() == "strict", attributes
    assert attributes.get("path") == "/", attributes
    assert ok(client.get("/api/session")) == {**body, "version": orisun.__version__, "admin_username": "admin",
                                              "admin_boundary": "orisun_admin", "default_admin_password": True}
    # Opaque and random: long, and another login gets another one.
    other = logged_in(dash)
    assert len(value) >= 22 and other.cookie is not None and len(other.cookie) >= 22
    assert other.cookie != value and other.csrf != client.csrf
    assert "admin" not in value.lower()


def test_bad_credentials_are_refused_alike_without_a_cookie(dash: ServerThread, admin: Client) -> None:
    username = new_user(admin)
    wrong_password = Client(dash.dashboard_url, source="127.0.0.30").login(username, "wrong-one")
    unknown_user = Client(dash.dashboard_url, source="127.0.0.30").login(f"nobody-{uuid.uuid4().hex[:6]}", "x")
    for response in (wrong_password, unknown_user):
        assert_error(response, 401)
        assert not [v for v, _ in response.session_cookies() if v], response.headers.get_all("Set-Cookie")
    assert wrong_password.body["error"] == unknown_user.body["error"]


@pytest.mark.parametrize(("body", "field_name"), [
    ({"password": "changeit"}, "username"),
    ({"username": "someone"}, "password"),
    ({"username": 5, "password": "changeit"}, "username"),
    ({"username": "someone", "password": ["changeit"]}, "password"),
])
def test_login_with_a_missing_or_bad_field_is_invalid(dash: ServerThread, body: dict[str, Any],
                                                      field_name: str) -> None:
    response = Client(dash.dashboard_url, source="127.0.0.31").post("/api/login", body)
    assert_error(response, 400, field_name)
    assert not response.session_cookies()


@pytest.mark.parametrize(("body", "content_type"), [
    (b"username=admin&password=changeit", "application/x-www-form-urlencoded"),
    (b'{"username": "admin", "password": "changeit"}', "text/plain"),
    (b'{"username": "admin", "password": "changeit"}', None),
    (b"{not json", "application/json"),
    (b'["admin", "changeit"]', "application/json"),
    (b'{"username": "admin", "password": "\xff\xfe"}', "application/json"),
])
def test_login_needs_a_json_object(dash: ServerThread, body: bytes, content_type: str | None) -> None:
    client = Client(dash.dashboard_url, source="127.0.0.31")
    response = client.request("POST", "/api/login", body=body, headers={"Content-Type": content_type})
    assert_error(response, (400, 415))
    assert client.cookie is None


# --- Sessions ----------------------------------------------------------------------------------


@pytest.fixture
def sessions(dash: ServerThread) -> Iterator[Any]:
    """The dashboard's session store, its timeouts restored after the test."""
    assert dash.app.dashboard is not None
    store = dash.app.dashboard.sessions
    saved = (store.idle_timeout, store.absolute_timeout)
    yield store
    store.idle_timeout, store.absolute_timeout = saved


def wait_until(moment: float) -> None:
    wait_for(lambda: time.monotonic() > moment, moment - time.monotonic() + 5, "time to pass")


def test_altered_cookie_is_refused(dash: ServerThread, admin: Client) -> None:
    assert admin.cookie is not None
    valid = admin.cookie
    for position in (0, len(valid) // 2, len(valid) - 1):
        replacement = "A" if valid[position] != "A" else "B"
        forged = Client(dash.dashboard_url, cookie=valid[:position] + replacement + valid[position + 1:],
                        csrf=admin.csrf)
        assert_error(forged.get("/api/session"), 401)
        assert redirects_to_login(forged.get("/"))
    for extra in (valid + "x", valid[:-1], ""):
        assert_error(Client(dash.dashboard_url, cookie=extra).get("/api/session"), 401)
    ok(admin.get("/api/session"))


def test_idle_session_expires(dash: ServerThread, sessions: Any) -> None:
    sessions.idle_timeout = 1.5
    client = logged_in(dash)
    # Requests keep it alive past the idle timeout ...
    until = time.monotonic() + 3
    while time.monotonic() < until:
        ok(client.get("/api/session"))
        wait_until(time.monotonic() + 0.3)
    ok(client.get("/api/session"))
    # ... and without any it ends.
    wait_until(time.monotonic() + 2.0)
    assert_error(client.get("/api/session"), 401)
    assert redirects_to_login(client.get("/"))


def test_active_session_ends_at_absolute_timeout(dash: ServerThread, sessions: Any) -> None:
    sessions.absolute_timeout = 2.0
    started = time.monotonic()
    client = logged_in(dash)
    statuses: list[tuple[float, int]] = []
    while time.monotonic() < started + 3:
        statuses.append((time.monotonic(), client.get("/api/session").status))
        wait_until(time.monotonic() + 0.2)
    assert all(status == 200 for moment, status in statuses if moment < started + 1.5), statuses
    assert_error(client.get("/api/session"), 401)


def test_logout_ends_the_session_and_clears_the_cookie(dash: ServerThread, admin: Client) -> None:
    old = admin.cookie
    assert_error(admin.post("/api/logout", headers={"X-CSRF-Token": None}), 403)
    ok(admin.get("/api/session"))
    response = admin.post("/api/logout")
    assert response.status == 204, response.text
    [(value, attributes)] = response.session_cookies()
    assert not value or attributes.get("max-age") == "0", (value, attributes)
    assert admin.cookie is None
    assert_error(admin.get("/api/session"), 401)
    replay = Client(dash.dashboard_url, cookie=old, csrf=admin.csrf)
    assert_error(replay.get("/api/session"), 401)
    assert_error(replay.post("/api/users", {"name": "N", "username": "after-logout", "password": "p-1",
                                            "roles": ["ADMIN"]}), 401)
    assert "after-logout" not in usernames(logged_in(dash))


def test_deleting_a_user_ends_their_sessions(dash: ServerThread, admin: Client) -> None:
    username = new_user(admin, ["ADMIN"])
    first, second = logged_in(dash, username, "first-password"), logged_in(dash, username, "first-password")
    ok(first.get("/api/users"))
    ok(admin.delete(f"/api/users/{username}"), 204)
    for client in (first, second):
        assert_error(client.get("/api/session"), 401)
        assert_error(client.get("/api/users"), 401)
    # A new user of the same name does not inherit them.
    ok(admin.post("/api/users", {"name": "Again", "username": username, "password": "first-password",
                                 "roles": ["ADMIN"]}), 201)
    assert_error(first.get("/api/session"), 401)


# --- CSRF and Origin ---------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["missing", "wrong", "another session's", "empty"])
def test_state_change_needs_this_sessions_csrf_token(dash: ServerThread, admin: Client, token: str) -> None:
    value = {"missing": None, "wrong": secrets.token_urlsafe(32), "another session's": logged_in(dash).csrf,
             "empty": ""}[token]
    headers = {"X-CSRF-Token": value}
    victim = new_user(admin)
    username = f"csrf-{uuid.uuid4().hex[:8]}"
    assert_error(admin.post("/api/users", {"name": "C", "username": username, "password": "p-1", "roles": ["ADMIN"]},
                            headers), 403)
    assert_error(admin.post(f"/api/users/{victim}/password", {"password": "changed-1"}, headers), 403)
    assert_error(admin.delete(f"/api/users/{victim}", headers=headers), 403)
    assert username not in usernames(admin) and victim in usernames(admin)
    assert grpc_refusal(dash, victim, "first-password") is None
    ok(admin.get("/api/session"))  # still logged in: the request was refused, not the session


def test_foreign_origin_is_refused(dash: ServerThread, admin: Client) -> None:
    own = dash.dashboard_url.rstrip("/")
    for origin in ("http://evil.example", "null", "http://127.0.0.1:1", own + ".evil.example"):
        username = f"origin-{uuid.uuid4().hex[:8]}"
        body = {"name": "O", "username": username, "password": "p-1", "roles": ["ADMIN"]}
        assert_error(admin.post("/api/users", body, {"Origin": origin}), 403)
        assert username not in usernames(admin)
        client = Client(dash.dashboard_url)
        assert_error(client.post("/api/login", {"username": "admin", "password": "changeit"}, {"Origin": origin}),
                     403)
        assert client.cookie is None
    body = {"name": "O", "username": f"origin-{uuid.uuid4().hex[:8]}", "password": "p-1", "roles": []}
    ok(admin.post("/api/users", body, {"Origin": own}), 201)
    ok(Client(dash.dashboard_url).post("/api/login", {"username": "admin", "password": "changeit"},
                                       {"Origin": own}))
    # Behind a TLS proxy that keeps Host, the page's origin is https: the same host, so accepted.
    behind_tls = own.replace("http://", "https://", 1)
    body = {"name": "O", "username": f"origin-{uuid.uuid4().hex[:8]}", "password": "p-1", "roles": []}
    ok(admin.post("/api/users", body, {"Origin": behind_tls}), 201)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                          None])
def test_state_change_needs_json(dash: ServerThread, admin: Client, content_type: str | None) -> None:
    headers = {"Content-Type": content_type}
    victim = new_user(admin)
    username = f"form-{uuid.uuid4().hex[:8]}"
    body = json.dumps({"name": "F", "username": username, "password": "p-1", "roles": ["ADMIN"]}).encode()
    assert_error(admin.request("POST", "/api/users", body=body, headers=headers), (400, 415))
    assert_error(admin.request("POST", f"/api/users/{victim}/password", body=b'{"password": "changed-1"}',
                               headers=headers), (400, 415))
    if content_type is not None:  # a DELETE has no body: only a wrong type is checked
        assert_error(admin.request("DELETE", f"/api/users/{victim}", headers=headers), (400, 415))
    assert username not in usernames(admin) and victim in usernames(admin)
    assert grpc_refusal(dash, victim, "first-password") is None

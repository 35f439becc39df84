"""The admin dashboard's users API and role check, the throttling of failed logins, and malformed
input, on a real server (docs/dashboard.md; issue 6, parts 2 and 4). Split from
test_dashboard_security.py (whose helpers it uses), with a server of its own: tests here throttle
addresses. Rules per client address are exercised from other loopback addresses (127.0.0.x, each
test its own) so that the tests' own address is never throttled.
"""


import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
import pytest

from orisun.runtime.postgres import EmbeddedPostgres
from tests.dashboard_client import Client, Response, assert_error, assert_no_traceback, logged_in, ok
from tests.support import ADMIN, ServerThread, running_server
from tests.test_dashboard_security import grpc_refusal, new_user, usernames, wait_until

pytestmark = pytest.mark.timeout(60)

BOUNDARIES = {"orisun_admin": "orisun_admin", "dash_sec": "dash_sec"}


@pytest.fixture(scope="module")
def dash(postgres: EmbeddedPostgres) -> Iterator[ServerThread]:
    with running_server(postgres.conninfo, "test_dash_sec_users", boundaries=BOUNDARIES, admin_port=0) as server:
        yield server


@pytest.fixture
def admin(dash: ServerThread) -> Client:
    """A fresh admin session per test (tests here shorten session lifetimes)."""
    return logged_in(dash)


# --- Users -------------------------------------------------------------------------------------


def test_created_user_is_listed_and_can_call_the_grpc_api(dash: ServerThread, admin: Client) -> None:
    username = new_user(admin)
    assert "admin" in usernames(admin) and username in usernames(admin)
    assert grpc_refusal(dash, username, "first-password") is None
    assert grpc_refusal(dash, username, "other-password") == grpc.StatusCode.UNAUTHENTICATED
    assert_error(admin.post("/api/users", {"name": "Again", "username": username, "password": "p-2",
                                           "roles": []}), 409)
    assert grpc_refusal(dash, username, "p-2") == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(("change", "field_name"), [
    ({"username": ""}, "username"), ({"username": "   "}, "username"), ({"username": "with:colon"}, "username"),
    ({"username": None}, "username"), ({"username": 7}, "username"), ({"name": 5}, "name"),
    ({"roles": ["SUPERUSER"]}, "roles"), ({"roles": "ADMIN"}, "roles"),
    ({"password": ""}, "password"), ({"password": "x" * 1025}, "password"), ({"password": None}, "password"),
])
def test_invalid_user_is_refused_naming_the_field(admin: Client, change: dict[str, Any], field_name: str) -> None:
    body = {"name": "Invalid", "username": f"invalid-{uuid.uuid4().hex[:8]}", "password": "secret-1",
            "roles": ["OPERATIONS"], **change}
    body = {key: value for key, value in body.items() if value is not None}
    before = usernames(admin)
    assert_error(admin.post("/api/users", body), 400, field_name)
    assert usernames(admin) == before


def test_change_password(dash: ServerThread, admin: Client) -> None:
    username = new_user(admin)
    assert ok(admin.post(f"/api/users/{username}/password", {"password": "second-password"}), 204) == ""
    assert grpc_refusal(dash, username, "first-password") == grpc.StatusCode.UNAUTHENTICATED
    assert grpc_refusal(dash, username, "second-password") is None
    logged_in(dash, username, "second-password")
    assert_error(admin.post(f"/api/users/{username}/password", {"password": ""}), 400, "password")
    assert_error(admin.post(f"/api/users/{username}/password", {}), 400, "password")
    assert_error(admin.post("/api/users/no-such-user/password", {"password": "whatever-1"}), 404)
    assert grpc_refusal(dash, username, "second-password") is None


def test_delete_user(dash: ServerThread, admin: Client) -> None:
    username = new_user(admin)
    assert grpc_refusal(dash, username, "first-password") is None
    assert ok(admin.delete(f"/api/users/{username}"), 204) == ""
    assert grpc_refusal(dash, username, "first-password") == grpc.StatusCode.UNAUTHENTICATED
    assert username not in usernames(admin)
    assert_error(admin.delete(f"/api/users/{username}"), 404)


def test_deleting_yourself_is_refused(dash: ServerThread, admin: Client) -> None:
    assert_error(admin.delete("/api/users/admin"), 400)
    assert "admin" in usernames(admin)
    other_admin = new_user(admin, ["ADMIN"])
    assert_error(logged_in(dash, other_admin, "first-password").delete(f"/api/users/{other_admin}"), 400)
    assert grpc_refusal(dash, other_admin, "first-password") is None


@pytest.mark.parametrize("roles", [["OPERATIONS"], []])
def test_non_admin_may_look_but_not_manage_users(dash: ServerThread, admin: Client, roles: list[str]) -> None:
    username = new_user(admin, roles)
    client = logged_in(dash, username, "first-password")
    assert client.user["roles"] == roles
    for path in ("/api/session", "/api/overview", "/api/boundaries/dash_sec/events",
                 "/api/boundaries/dash_sec/streams", "/api/subscriptions"):
        ok(client.get(path))
    assert_error(client.get("/api/users"), 403)
    victim = f"victim-{uuid.uuid4().hex[:8]}"
    assert_error(client.post("/api/users", {"name": "V", "username": victim, "password": "p-1", "roles": ["ADMIN"]}),
                 403)
    assert_error(client.post("/api/users/admin/password", {"password": "taken-over"}), 403)
    assert_error(client.post(f"/api/users/{username}/password", {"password": "my-own-new"}), 403)
    assert_error(client.delete("/api/users/admin"), 403)
    assert_error(client.delete(f"/api/users/{username}"), 403)
    assert victim not in usernames(admin) and username in usernames(admin)
    assert grpc_refusal(dash, *ADMIN) is None and grpc_refusal(dash, username, "first-password") is None


# --- Throttling of failed logins ---------------------------------------------------------------


@pytest.fixture
def throttle(dash: ServerThread) -> Iterator[Any]:
    """The dashboard's login throttle, its settings restored after the test."""
    assert dash.app.dashboard is not None
    limiter = dash.app.dashboard.throttle
    saved = (limiter.threshold, limiter.window, limiter.max_delay)
    yield limiter
    limiter.threshold, limiter.window, limiter.max_delay = saved


def fail_five_times(client: Client, usernames: Sequence[str]) -> float:
    """Five failed logins; the time just after the last."""
    for n in range(5):
        assert_error(client.login(usernames[n % len(usernames)], "wrong-password"), 401)
    return time.monotonic()


def throttled(response: Response, retry_after: int | None = None) -> int:
    """Assert a 429 without a session; its Retry-After (checked when given)."""
    assert_error(response, 429)
    assert not [v for v, _ in response.session_cookies() if v]
    retry = int(response.header("Retry-After") or "0")
    assert retry >= 1 and (retry_after is None or retry == retry_after), response.header("Retry-After")
    return retry


@pytest.mark.timeout(90)
def test_throttled_per_username_from_any_address(dash: ServerThread, admin: Client, throttle: Any) -> None:
    username = new_user(admin, password="right-password")
    attacker, elsewhere = Client(dash.dashboard_url, "127.0.0.21"), Client(dash.dashboard_url, "127.0.0.22")
    last = fail_five_times(attacker, [username])
    retry = throttled(elsewhere.login(username, "right-password"), 1)  # even with the right password
    throttled(attacker.login(username, "right-password"))
    ok(elsewhere.login(*ADMIN))  # that address and other users are not throttled
    wait_until(last + retry + 0.1)
    ok(elsewhere.login(username, "right-password"))
    # The success cleared the count: failures start again from zero.
    for _ in range(4):
        assert_error(elsewhere.login(username, "wrong-password"), 401)


@pytest.mark.timeout(90)
def test_throttled_per_address_across_usernames(dash: ServerThread, throttle: Any) -> None:
    attacker = Client(dash.dashboard_url, "127.0.0.23")
    fail_five_times(attacker, [f"guess-{n}-{uuid.uuid4().hex[:6]}" for n in range(5)])
    throttled(attacker.login(*ADMIN))
    throttled(attacker.login(f"another-{uuid.uuid4().hex[:6]}", "x"))
    ok(Client(dash.dashboard_url, "127.0.0.24").login(*ADMIN))


@pytest.mark.timeout(90)
def test_success_before_the_threshold_clears_the_usernames_count(dash: ServerThread, admin: Client,
                                                                 throttle: Any) -> None:
    # Three addresses, so that only the username's count links the attempts.
    username = new_user(admin, password="right-password")
    first, second, third = (Client(dash.dashboard_url, f"127.0.0.{n}") for n in (25, 28, 29))
    for _ in range(4):
        assert_error(first.login(username, "wrong-password"), 401)
    ok(second.login(username, "right-password"))
    for _ in range(5):  # with the four before still counted, the second of these would be throttled
        assert_error(third.login(username, "wrong-password"), 401)
    throttled(third.login(username, "right-password"), 1)


@pytest.mark.timeout(90)
def test_delay_doubles_up_to_the_maximum(dash: ServerThread, admin: Client, throttle: Any) -> None:
    username = new_user(admin, password="right-password")
    client = Client(dash.dashboard_url, "127.0.0.26")
    fifth = fail_five_times(client, [username])
    throttled(client.login(username, "right-password"), 1)
    wait_until(fifth + 1.1)
    assert_error(client.login(username, "wrong-password"), 401)  # the sixth failure: now 2 s
    sixth = time.monotonic()
    throttled(client.login(username, "right-password"), 2)
    throttle.max_delay = 1
    throttled(client.login(username, "right-password"), 1)
    wait_until(sixth + 1.1)
    ok(client.login(username, "right-password"))


@pytest.mark.timeout(90)
def test_failures_older_than_the_window_are_forgotten(dash: ServerThread, throttle: Any) -> None:
    throttle.window = 2.0
    client = Client(dash.dashboard_url, "127.0.0.27")
    username = f"ghost-{uuid.uuid4().hex[:6]}"
    fifth = fail_five_times(client, [username])
    throttled(client.login(username, "wrong-password"))
    wait_until(fifth + 2.5)
    for _ in range(3):  # with the old five still counted, the second of these would be throttled
        assert_error(client.login(username, "wrong-password"), 401)


# --- Malformed requests ------------------------------------------------------------------------


def test_malformed_requests_get_clean_errors(dash: ServerThread, admin: Client) -> None:
    """Odd input is a 4xx with a JSON error, never a fault (500) or a traceback; every case is tried."""
    problems: list[str] = []

    def check(response: Response, what: str, allowed: Sequence[int]) -> None:
        assert_no_traceback(response)
        error_ok = isinstance(response.body, dict) and isinstance(response.body.get("error"), str)
        if response.status not in allowed or (response.status >= 400 and not error_ok):
            problems.append(f"{what}: {response.status} {response.text[:200]}")

    for path in ("/api/boundaries/dash_sec/events?after=99999999999999999999:1",
                 "/api/boundaries/dash_sec/events?after=-1:-1",
                 "/api/boundaries/dash_sec/events?count=99999999999999999999",
                 "/api/boundaries/dash_sec/events?stream=%00", "/api/boundaries/dash_sec/events?type=%00",
                 "/api/boundaries/dash_sec/events?tag=%00:%00", "/api/boundaries/dash_sec/streams?prefix=%00",
                 "/api/boundaries/dash_sec/streams?after=%00", "/api/boundaries/dash_sec/streams?count=0",
                 "/api/boundaries/dash_sec/tail?type=%00", "/api/boundaries/%2e%2e/events",
                 "/api/boundaries/a%2Fb/streams", "/api/boundaries/%00/events"):
        check(admin.get(path), f"GET {path}", (200, 400, 404))
    for body in (b'{"name": "x", "username": "x", "password": "x", "roles": [null]}', b"1e999999", b"",
                 b'{"username": "\\ud800", "password": "x", "roles": []}',
                 b'{"username": "nul\\u0000", "password": "x", "roles": []}',
                 b'{"name": "nul\\u0000", "username": "nul-name", "password": "x", "roles": []}'):
        check(admin.request("POST", "/api/users", body=body), f"POST /api/users {body!r}", (400,))
    check(admin.post(f"/api/users/{new_user(admin)}/password", {"password": "nul\u0000"}), "NUL password",
          (204, 400))
    check(Client(dash.dashboard_url, "127.0.0.32").post("/api/login", {"username": "nul\u0000", "password": "x"}),
          "NUL login", (400, 401))
    assert not problems, "\n".join(problems)


def test_static_files_stay_inside_the_static_directory(dash: ServerThread) -> None:
    client = Client(dash.dashboard_url)
    for path in ("/static/../app.py", "/static/%2e%2e/%2e%2e/app.py", "/static/..%2f..%2fapp.py",
                 "/static/%2e%2e/__init__.py", "/static//etc/passwd", "/static/../../../../../../etc/passwd"):
        response = client.get(path)
        assert response.status != 500, path
        assert not (response.status == 200 and ("import " in response.text or "root:" in response.text)), path
        assert_no_traceback(response)

"""Client mistakes get a 4xx from the dashboard, never a 500 or a traceback in the log (issue 12, defect 9).

Each case of the defect is sent to a real server (its own, in this process, so that its log can be
read): a JSON body nested 10,000 deep, a bogus charset, lone surrogates, NUL in a path, an
over-long static file name, non-ASCII digits in a count, a log line forged with ``%0a``, aiohttp's
own 400s (security headers), an over-long username, and live-tail filters refused before the 200.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from loguru import logger

from orisun import logs
from orisun._proto import eventstore_pb2 as pb
from orisun.dashboard._server import Dashboard
from orisun.runtime.postgres import EmbeddedPostgres
from orisun.service import users as users_module
from tests.dashboard_client import Client, Response, assert_error, assert_no_traceback, logged_in, ok
from tests.support import ADMIN, ServerThread, auth_metadata, running_server, wait_for

pytestmark = pytest.mark.timeout(60)

BOUNDARIES = {"orisun_admin": "orisun_admin", "dash_err": "dash_err"}
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@pytest.fixture(scope="module")
def dash(postgres: EmbeddedPostgres) -> Iterator[ServerThread]:
    with running_server(postgres.conninfo, "test_dash_err", boundaries=BOUNDARIES, admin_port=0) as server:
        yield server


@pytest.fixture(scope="module")
def admin(dash: ServerThread) -> Client:
    return logged_in(dash)


class Log:
    """What the server logs (loguru and the standard library's logging, which aiohttp uses)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.lines: list[str] = []
        self.faults: list[str] = []  # records with a traceback, or at ERROR and above

    def loguru(self, message: Any) -> None:
        record = message.record
        with self._lock:
            self.lines.append(record["message"])
            if record["exception"] is not None or record["level"].no >= 40:
                self.faults.append(f"{record['level'].name} {record['message']} {record['exception']}")

    def standard(self, record: logging.LogRecord) -> None:
        with self._lock:
            self.lines.append(record.getMessage())
            if record.exc_info or record.levelno >= logging.ERROR:
                self.faults.append(f"{record.levelname} {record.name} {record.getMessage()} {record.exc_info}")

    def assert_no_fault(self) -> None:
        with self._lock:
            assert not self.faults, "\n".join(self.faults)


class _Handler(logging.Handler):
    def __init__(self, log: Log) -> None:
        super().__init__(level=0)
        self._log = log

    def emit(self, record: logging.LogRecord) -> None:
        self._log.standard(record)


@pytest.fixture
def log() -> Iterator[Log]:
    captured = Log()
    sink = logger.add(captured.loguru, level=0, format="{message}", catch=False)
    handler = _Handler(captured)
    root = logging.getLogger()
    root.addHandler(handler)
    aiohttp_level = logging.getLogger("aiohttp").level
    logging.getLogger("aiohttp").setLevel(logging.DEBUG)
    try:
        yield captured
    finally:
        logging.getLogger("aiohttp").setLevel(aiohttp_level)
        root.removeHandler(handler)
        logger.remove(sink)


def dashboard(server: ServerThread) -> Dashboard:
    assert server.app.dashboard is not None
    return server.app.dashboard


def raw(server: ServerThread, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` as is on a socket; the status, headers (lower-case names) and body of the answer."""
    parts = urlsplit(server.dashboard_url)
    assert parts.hostname is not None and parts.port is not None
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(request)  # and no shutdown: aiohttp may take a half-closed socket for a client gone
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split(" ")[1]), headers, body


# --- JSON bodies -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/login", "/api/users"])
def test_json_body_nested_10000_deep_is_400(admin: Client, log: Log, path: str) -> None:
    for body in (b"[" * 10_000 + b"]" * 10_000, b'{"username": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"):
        assert_error(admin.request("POST", path, body=body), 400, "body")
    # Deeper than the documented 64 levels, though Python's parser would manage it.
    assert_error(admin.request("POST", path, body=b'{"roles": ' + b"[" * 100 + b"]" * 100 + b"}"), 400, "body")
    log.assert_no_fault()


@pytest.mark.parametrize("charset", ["bogus", "latin-1", "utf-16"])
@pytest.mark.parametrize("path", ["/api/login", "/api/users"])
def test_json_body_with_another_charset_is_415(admin: Client, log: Log, path: str, charset: str) -> None:
    response = admin.request("POST", path, body=b'{"username": "x", "password": "y"}',
                             headers={"Content-Type": f"application/json; charset={charset}"})
    assert_error(response, 415)
    assert "charset" in response.body["error"], response.body
    log.assert_no_fault()


def test_json_body_in_utf_8_with_its_charset_is_fine(dash: ServerThread, log: Log) -> None:
    for charset in ("utf-8", "UTF-8", "utf8"):
        response = Client(dash.dashboard_url).request(
            "POST", "/api/login", body=b'{"username": "admin", "password": "changeit"}',
            headers={"Content-Type": f"application/json; charset={charset}"})
        assert response.status == 200, response.text
    log.assert_no_fault()


def test_json_body_that_is_not_utf_8_or_too_large(admin: Client, log: Log) -> None:
    assert_error(admin.request("POST", "/api/login", body=b'{"username": "\xff", "password": "x"}'), 400, "body")
    assert_error(admin.request("POST", "/api/users", body=b'{"name": "' + b"x" * 2_000_000 + b'"}'), 413)
    # 64 KiB at most, except to name a user to delete (older names could be longer).
    assert_error(admin.request("POST", "/api/login", body=b'{"username": "' + b"x" * 70_000 + b'"}'), 413)
    assert_error(admin.request("DELETE", "/api/users", body=b'{"username": "' + b"x" * 70_000 + b'"}'), 404)
    assert_error(admin.request("DELETE", "/api/users", body=b'{"username": "' + b"x" * 1_100_000 + b'"}'), 413)
    # A number too long for Python's int() is no JSONDecodeError.
    assert_error(admin.request("POST", "/api/login", body=b'{"username": ' + b"1" * 5000 + b"}"), 400, "body")
    log.assert_no_fault()


@pytest.mark.parametrize("field_name", ["username", "password"])
def test_lone_surrogate_in_the_login_is_400_naming_the_field(dash: ServerThread, log: Log, field_name: str) -> None:
    fields = {"username": '"admin"', "password": '"changeit"', field_name: '"a\\ud800b"'}
    body = ("{" + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + "}").encode()
    assert_error(Client(dash.dashboard_url, "127.0.0.91").request("POST", "/api/login", body=body), 400, field_name)
    log.assert_no_fault()


def test_lone_surrogate_in_a_password_change_is_400(admin: Client, log: Log) -> None:
    username = f"sur-{uuid.uuid4().hex[:8]}"
    ok(admin.post("/api/users", {"username": username, "password": "first-one", "roles": []}), 201)
    response = admin.request("POST", f"/api/users/{username}/password", body=b'{"password": "\\udfff"}')
    assert_error(response, 400, "password")
    log.assert_no_fault()


# --- Paths and query parameters ------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/users/nul%00", "/api/users/nul%00/password", "/api/users/%ED%A0%80",
                                  "/api/users/%ED%A0%80/password"])
def test_unstorable_username_in_the_path_is_refused_before_the_database(admin: Client, log: Log, path: str) -> None:
    method = "DELETE" if not path.endswith("/password") else "POST"
    assert_error(admin.request(method, path, {"password": "another-one"}), (400, 404))
    log.assert_no_fault()


@pytest.mark.parametrize("name", ["a" * 5000, "a" * 256, "%00", ".hidden", "app.js%00", "%2e%2e", "..%2fapp.py",
                                  "pages%2f..%2f..%2f__init__.py", "app.js%0a"])
def test_odd_static_file_names_are_404(dash: ServerThread, log: Log, name: str) -> None:
    response = Client(dash.dashboard_url).get(f"/static/{name}")
    assert response.status == 404, f"{response.status} {response.text[:200]}"
    assert_no_traceback(response)
    log.assert_no_fault()


def test_static_files_still_served(dash: ServerThread, log: Log) -> None:
    client = Client(dash.dashboard_url)
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css"), ("favicon.svg", "image/svg+xml"),
                       ("pages/users.js", "javascript")):
        response = client.get(f"/static/{name}")
        assert response.status == 200 and kind in (response.header("Content-Type") or ""), (name, response.status)
    log.assert_no_fault()


@pytest.mark.parametrize("query", ["count=%C2%B2", "count=%D9%A3", "count=%EF%BC%91", "count=99999999999999999999",
                                   "count=1%00"])
@pytest.mark.parametrize("route", ["events", "streams"])
def test_count_takes_only_ascii_digits(admin: Client, log: Log, route: str, query: str) -> None:
    assert_error(admin.get(f"/api/boundaries/dash_err/{route}?{query}"), 400, "count")
    log.assert_no_fault()


@pytest.mark.parametrize("after", ["%C2%B2:1", "1:%C2%B2", "99999999999999999999:1", "1:99999999999999999999"])
def test_cursor_takes_only_ascii_digits(admin: Client, log: Log, after: str) -> None:
    assert_error(admin.get(f"/api/boundaries/dash_err/events?after={after}"), 400, "after")
    log.assert_no_fault()


# --- The log -------------------------------------------------------------------------------


def test_control_characters_are_escaped() -> None:
    escape_control = logs.escape_control
    assert (escape_control("a\nb\rc\x1b[31md\x00e\x7f\x85\u2028f\x0bg")
            == "a\\nb\\rc\\x1b[31md\\x00e\\x7f\\x85\\u2028f\\x0bg")
    assert escape_control("a\tb") == "a\tb"  # a tab cannot forge a line; PostgreSQL's lines use it
    assert escape_control("plain text, ünïcödé and a \\ backslash") == "plain text, ünïcödé and a \\ backslash"


def test_every_log_line_is_escaped_once_logging_is_set_up() -> None:
    """setup_logging's patcher escapes every record, whatever wrote it (a library, a child)."""
    record: dict[str, Any] = {"message": "GET /x\nFORGED 2026-12-04 ERROR", "extra": {}}
    logs._patch(record)
    assert record["message"] == "GET /x\\nFORGED 2026-12-04 ERROR"


def test_a_fault_logs_the_path_escaped_with_an_incident_id(dash: ServerThread, admin: Client, log: Log,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A real fault (here: a service that breaks) is a 500 whose log line cannot be forged with %0a."""
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(dashboard(dash).monitor, "streams", broken)
    response = admin.get("/api/boundaries/x%0a2026-12-04%20ERROR%20forged%0d%1b[2J/streams")
    assert_error(response, 500)
    incident = response.body["error"].split("incident ")[1].split(")")[0]
    lines = [line for line in log.lines if incident in line]
    assert len(lines) == 1, log.lines
    assert "\n" not in lines[0] and "\r" not in lines[0] and "\x1b" not in lines[0], lines[0]
    assert "x\\n2026-12-04 ERROR forged\\r\\x1b[2J" in lines[0], lines[0]


# --- aiohttp's own answers -------------------------------------------------------------------


@pytest.mark.parametrize("request_bytes", [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
    b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 10_000 + b"\r\n\r\n",
    b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nxxxxx",
], ids=["garbage", "bad-header", "long-line", "long-header", "nul", "smuggling"])
def test_parser_errors_carry_the_security_headers(dash: ServerThread, log: Log, request_bytes: bytes) -> None:
    status, headers, _ = raw(dash, request_bytes)
    assert 400 <= status < 500, status
    for name, value in SECURITY_HEADERS.items():
        assert headers.get(name.lower()) == value, (name, headers)
    assert "default-src 'self'" in headers.get("content-security-policy", ""), headers
    log.assert_no_fault()


def test_parser_error_log_line_is_one_line(dash: ServerThread, log: Log) -> None:
    status, _, _ = raw(dash, b"GET / HTTP/1.1\r\nHost: x\r\nBad\x1b[2J Header\r\n\r\n")
    assert status == 400
    assert all("\n" not in line and "\x1b" not in line for line in log.lines), log.lines
    log.assert_no_fault()


# --- Usernames -----------------------------------------------------------------------------


def test_username_length_is_limited(admin: Client, log: Log) -> None:
    MAX_USERNAME_CHARS = users_module.MAX_USERNAME_CHARS
    longest = "u" * (MAX_USERNAME_CHARS - 32) + uuid.uuid4().hex
    ok(admin.post("/api/users", {"username": longest, "password": "a-password", "roles": []}), 201)
    for username in (longest + "x", "v" * 9000):
        response = admin.post("/api/users", {"username": username, "password": "a-password", "roles": []})
        assert_error(response, 400, "username")
        assert str(MAX_USERNAME_CHARS) in response.body["error"]
    ok(admin.delete(f"/api/users/{longest}"), 204)
    log.assert_no_fault()


def test_an_over_long_stored_username_can_still_be_deleted(dash: ServerThread, admin: Client, log: Log) -> None:
    """One created before the limit (by an older version) can be deleted from the dashboard."""
    username = "é" * 9000 + uuid.uuid4().hex
    users = dash.app.users
    assert dash.call(users._store.create("Too long", username, users_module.hash_password("x-password"), [])) is True
    assert username in [u["username"] for u in ok(admin.get("/api/users"))["users"]]
    # The change notification that tells every node to forget a user's cached credentials cannot
    # carry a name this long (PostgreSQL's 8,000-byte limit refused the whole DELETE): it says
    # "forget everyone" instead, which the admin's cached credentials show (marked stale: the next
    # use checks the stored hash again).
    with dash.stub() as stub:
        stub.GetEvents(pb.GetEventsRequest(boundary="dash_err", count=1), metadata=auth_metadata(*ADMIN), timeout=10)
    assert ADMIN[0] in users._cache
    ok(admin.delete("/api/users", {"username": username}), 204)
    assert username not in [u["username"] for u in ok(admin.get("/api/users"))["users"]]
    wait_for(lambda: ADMIN[0] not in users._cache or users._cache[ADMIN[0]].stale, 30,
             "every cached credential forgotten")
    assert_error(admin.delete("/api/users", {"username": username}), 404)
    assert_error(admin.delete("/api/users", {"username": "admin"}), 400, "username")
    assert_error(admin.delete("/api/users", {}), 400, "username")
    log.assert_no_fault()


# --- The live tail -------------------------------------------------------------------------


@pytest.mark.parametrize(("query", "field_name"), [
    ("type=%00", "type"), ("type=" + "t" * 1100, "type"), ("tag=k:%00", "tag"), ("tag=%00:v", "tag"),
    ("tag=" + "k" * 300 + ":v", "tag"), ("tag=no-colon", "tag"), ("stream=%00", "stream"),
    ("stream=" + "s" * 600, "stream"), ("&".join(f"tag=k{i}:v" for i in range(40)), "tag"),
])
def test_tail_refuses_invalid_filters_before_the_stream_starts(admin: Client, log: Log, query: str,
                                                                field_name: str) -> None:
    connection = admin.connection(timeout=30)
    try:
        connection.request("GET", f"/api/boundaries/dash_err/tail?{query}", headers=admin.headers_for("GET"))
        answer = connection.getresponse()
        body = answer.read(4096)
    finally:
        connection.close()
    assert answer.status == 400, f"{answer.status} {body[:300]!r}"
    assert (answer.getheader("Content-Type") or "").startswith("application/json"), answer.getheader("Content-Type")
    response = Response(answer.status, answer.headers, json.loads(body), body.decode())
    assert_error(response, 400, field_name)
    log.assert_no_fault()


def test_events_refuse_the_same_invalid_filters(admin: Client, log: Log) -> None:
    for query, field_name in (("type=%00", "type"), ("tag=k:%00", "tag"), ("stream=%00", "stream"),
                              ("stream=" + "s" * 600, "stream")):
        assert_error(admin.get(f"/api/boundaries/dash_err/events?{query}"), 400, field_name)
    log.assert_no_fault()

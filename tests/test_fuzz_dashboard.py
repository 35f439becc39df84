"""Property-based fuzzing of every route of the admin dashboard (issue 12), with hypothesis; shared
parts in tests/fuzz_support.py.

Every route of the dashboard's router is fuzzed (``test_dashboard_routes``): hostile path
parameters, query strings, JSON bodies and headers, logged in and not. Every answer must be below
500 and carry the security headers; a rejected request must leave no trace either. Protocol limits
(request line, headers) are probed by ``test_dashboard_protocol_limits``.
"""

from __future__ import annotations

import http.client
import json
import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, unquote

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests import fuzz_support
from tests.fuzz_support import (
    ADMIN_BOUNDARY,
    BIG,
    BOUNDARY,
    CALL_TIMEOUT,
    HOSTILE_TEXT,
    READER,
    Fuzz,
    Problems,
    details_problems,
    fuzz_settings,
    require,
)
from tests.support import ADMIN, ServerThread

# Fixtures of tests/fuzz_support.py, bound to names of this module so that pytest finds them here.
fuzz = fuzz_support.fuzz
fresh_log = fuzz_support.fresh_log


pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(180)]


# --- Dashboard properties ------------------------------------------------------------------------

SECURITY_HEADERS = ("Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options", "Referrer-Policy")
HOSTILE_SOURCE = "127.0.0.2"  # hostile logins are throttled per address: keep the fixture's login apart
REQUEST_LINE_BYTES = 8000
QUERY_KEYS = ["count", "count", "after", "after", "prefix", "direction", "stream", "type", "tag", "x"]

# Percent-escapes as a client may write them, valid or not, beside hostile text percent-encoded.
RAW_ESCAPES = ["%00", "%0a", "%0d%0a", "%ZZ", "%", "%2e%2e", "..", "%2F", "%c0%80", "%ed%a0%80", "%ff", "%C2%B2",
               "%E2%80%AE", "%F0%9F%98%80", "+", "%20", ";", "%3B", "%26", "%3D"]
URL_TEXT: st.SearchStrategy[str] = st.one_of(
    st.sampled_from(RAW_ESCAPES),
    HOSTILE_TEXT.map(lambda text: quote(text, safe="")),
    st.lists(st.sampled_from([*RAW_ESCAPES, "a", "1", BOUNDARY, "adm"]), min_size=1, max_size=5).map("".join),
)
# Never an existing user's name: a valid body would change the admin's password, or delete the
# reader, and the rest of the module needs both.
PATH_PARAM = st.one_of(st.sampled_from([BOUNDARY, BOUNDARY, BIG, ADMIN_BOUNDARY, "missing", "u-" + "x" * 300]),
                       URL_TEXT).filter(
    lambda value: unquote(value).strip() not in (ADMIN[0], READER[0]))
# Numbers as a client may write them: superscript two, Arabic-Indic zero and a circled one pass
# str.isdigit() but not int().
NUMBERS = ["0", "1", "-1", "50", "500", "501", "%C2%B2", "%D9%A0", "%E2%91%A0", "1e9", "99999999999999999999",
           "+1", "%201", "0x10", "1_0", "%00", "%0a"]
QUERY_VALUE = st.one_of(
    st.sampled_from(NUMBERS),
    st.builds(lambda a, b: f"{a}:{b}", st.sampled_from(NUMBERS), st.sampled_from(NUMBERS)),  # cursors
    st.sampled_from(["", "asc", "desc", "DESC", "k:v", ":v", "k:", "x" * 6000, "%00", "%0a"]),
    URL_TEXT,
)
QUERY = st.lists(st.tuples(st.sampled_from(QUERY_KEYS) | URL_TEXT, QUERY_VALUE), max_size=4).map(
    lambda pairs: "&".join(f"{key}={value}" for key, value in pairs))
JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | HOSTILE_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["username", "password", "name", "roles"]) | HOSTILE_TEXT, inner, max_size=4),
    max_leaves=10,
)
JSON_BODY: st.SearchStrategy[bytes] = st.one_of(
    JSON_VALUE.map(lambda value: json.dumps(value).encode()),
    st.fixed_dictionaries({}, optional={"username": HOSTILE_TEXT, "password": HOSTILE_TEXT, "name": HOSTILE_TEXT,
                                        "roles": st.lists(st.sampled_from(["ADMIN", "OPERATIONS", "", "admin", "x"]))}
                          ).map(lambda value: json.dumps(value).encode()),
    st.sampled_from([100, 1000, 5000, 100_000]).map(lambda depth: b"[" * depth + b"]" * depth),
    st.sampled_from([100, 1000, 5000]).map(lambda depth: b'{"a":' * depth + b"1" + b"}" * depth),
    st.sampled_from([b"", b"null", b"[]", b'"x"', b"1e999999", b"NaN", b"\xff\xfe", b'{"username": "\xed\xa0\x80"}',
                     b'{"username": "\\ud800", "password": "\\udfff"}', b'{"username": "a\x00", "password": "b"}',
                     b"\xef\xbb\xbf{}", b'{"username": "admin", "password": "changeit"', b"{" * 3]),
    st.binary(max_size=128),
)
CONTENT_TYPE = st.sampled_from([None, "application/json", "application/json", "application/json; charset=latin-1",
                                "application/json; charset=bogus", "application/json; charset=utf-16", "text/plain",
                                "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"])
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)
EXTRA_HEADERS = st.dictionaries(
    st.sampled_from(["Origin", "X-CSRF-Token", "Range", "If-Modified-Since", "Accept", "Accept-Encoding",
                     "Accept-Language", "X-Forwarded-For", "Referer"]),
    st.one_of(st.sampled_from(["null", "http://evil.example", "bytes=999999999-", "bytes=abc", "bytes=0-0,-1",
                               "gzip, br, zstd", "*/*", "x" * 4000]), HEADER_TEXT),
    max_size=3,
)
COOKIE_VALUE = st.one_of(st.sampled_from(["", "x", "x" * 4000, "\"quoted\"", "a;b"]), HEADER_TEXT)


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # with {name} for each path parameter; "/static/{filename}" for the static files

    @property
    def params(self) -> list[str]:
        return re.findall(r"\{(\w+)\}", self.path)


def dashboard_routes(server: ServerThread) -> list[Route]:
    """Every route of the running dashboard's router, so that a route added later is fuzzed too."""
    dashboard = server.app.dashboard
    assert dashboard is not None
    routes = set()
    for route in dashboard.app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        if "prefix" in info:  # the static files
            path = str(info["prefix"]).rstrip("/") + "/{filename}"
        else:
            path = str(info.get("formatter", info.get("path", "")))
        routes.add(Route(route.method, path))
    return sorted(routes, key=lambda r: (r.path, r.method))


@dataclass
class HttpAnswer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def http_request(server: ServerThread, method: str, target: str, headers: dict[str, str], body: bytes | None,
                 source: str = HOSTILE_SOURCE) -> HttpAnswer:
    connection = http.client.HTTPConnection("127.0.0.1", server.app.dashboard.port,  # type: ignore[union-attr]
                                            timeout=CALL_TIMEOUT, source_address=(source, 0))
    try:
        connection.request(method, target, body=body, headers=headers)
        answer = connection.getresponse()
        # The live tail never ends: its headers are the answer.
        streaming = (answer.getheader("Content-Type") or "").startswith("text/event-stream")
        return HttpAnswer(answer.status, answer.headers, b"" if streaming else answer.read())
    finally:
        connection.close()


def dashboard_login(fuzz: Fuzz) -> None:
    body = json.dumps({"username": ADMIN[0], "password": ADMIN[1]}).encode()
    answer = http_request(fuzz.server, "POST", "/api/login", {"Content-Type": "application/json"}, body,
                          source="127.0.0.1")
    assert answer.status == 200, answer.body
    cookie = answer.headers.get("Set-Cookie", "")
    fuzz.dashboard_cookie = cookie.split(";", 1)[0].split("=", 1)[1]
    fuzz.dashboard_csrf = json.loads(answer.body)["csrf_token"]


def still_logged_in(fuzz: Fuzz) -> bool:
    answer = http_request(fuzz.server, "GET", "/api/session", {"Cookie": f"orisun_session={fuzz.dashboard_cookie}"},
                          None, source="127.0.0.1")
    return answer.status == 200


def http_problems(answer: HttpAnswer) -> Problems:
    """What is wrong with a dashboard answer, by kind; empty lists if nothing."""
    problems: Problems = {"status": [], "headers": [], "message": [], "trace": []}
    if answer.status >= 500:
        problems["status"].append(f"status {answer.status}")
    missing = [name for name in SECURITY_HEADERS if answer.headers.get(name) is None]
    if missing:
        problems["headers"].append(f"no {', '.join(missing)}")
    text = answer.body.decode("utf-8", "replace")
    is_json = (answer.headers.get("Content-Type") or "").startswith("application/json")
    if answer.status >= 400 and answer.body and is_json:
        try:
            error = json.loads(text).get("error", "")
        except (ValueError, AttributeError):
            problems["message"].append("an error answer that is not the documented JSON object")
        else:
            problems["message"] += details_problems(str(error))
    elif answer.status >= 400 and ("Traceback" in text or 'File "' in text):
        problems["message"].append("a traceback in the answer")
    return problems


@st.composite
def dashboard_requests(draw: st.DrawFn, route: Route) -> tuple[str, str, dict[str, str], bytes | None, bool]:
    """(method, target, headers, body, logged in) for one hostile request to ``route``."""
    method = draw(st.sampled_from([route.method] * 6 + ["GET", "POST", "DELETE", "PUT", "PATCH", "OPTIONS", "HEAD"]))
    path = route.path
    for name in route.params:
        value = draw(PATH_PARAM if name != "filename" else st.one_of(
            st.sampled_from(["app.js", "style.css", "../_server.py", "..%2f_server.py", "%2e%2e/%2e%2e/etc/passwd",
                             "pages/..%2f..%2f_sessions.py", "app.js%00.png", "", ".", "pages", "pages/"]), URL_TEXT))
        path = path.replace("{" + name + "}", value)
    query = draw(st.one_of(st.just(""), QUERY))
    # aiohttp's own limit on the request line is 8,190 bytes: longer is test_dashboard_protocol_limits.
    target = (path + ("?" + query if query else ""))[:REQUEST_LINE_BYTES]
    logged_in = draw(st.sampled_from([True, True, True, False]))  # most handlers run only logged in
    headers: dict[str, str] = {}
    content_type = draw(CONTENT_TYPE)
    if content_type is not None:
        headers["Content-Type"] = content_type
    headers.update(draw(EXTRA_HEADERS))
    if logged_in:
        # The real cookie; mostly the right CSRF token too, so that the handlers run.
        headers.setdefault("X-CSRF-Token", "{csrf}")
        headers["Cookie"] = "orisun_session={cookie}"
    elif draw(st.booleans()):
        headers["Cookie"] = "orisun_session=" + draw(COOKIE_VALUE)
    body = draw(st.one_of(st.none(), JSON_BODY)) if method not in ("GET", "HEAD") else None
    return method, target, headers, body, logged_in


def dashboard_batch(fuzz: Fuzz, route: Route) -> Callable[[], None]:
    """One hypothesis batch of hostile requests to ``route``."""

    @fuzz_settings(50)
    @given(request=dashboard_requests(route))
    def batch(request: tuple[str, str, dict[str, str], bytes | None, bool]) -> None:
        method, target, headers, body, logged_in = request
        headers = {key: value.replace("{csrf}", fuzz.dashboard_csrf).replace("{cookie}", fuzz.dashboard_cookie)
                   for key, value in headers.items()}
        before = fuzz.snapshot()
        answer = http_request(fuzz.server, method, target, headers, body)
        problems = http_problems(answer)
        if answer.status >= 400 and fuzz.snapshot() != before:
            problems["trace"].append("it was rejected, but it stored something")
        require(problems, f"{method} {target[:300]!r} (route {route.method} {route.path}, logged in: {logged_in}) "
                          f"answered {answer.status} {answer.body[:300]!r}")
        if logged_in and "logout" in target and not still_logged_in(fuzz):
            dashboard_login(fuzz)  # the request logged out: log in again

    for request in route_examples(route):
        batch = example(request=request)(batch)
    return batch


def route_examples(route: Route) -> list[tuple[str, str, dict[str, str], bytes | None, bool]]:
    """Requests always tried first for ``route``, whatever the seed: long and NUL path parameters,
    numbers that only look like numbers, a body in an unknown charset."""
    logged_in = {"X-CSRF-Token": "{csrf}", "Cookie": "orisun_session={cookie}"}
    requests = []
    for value in ("x" * 3000, "%00", BOUNDARY):
        path = route.path
        for name in route.params:
            path = path.replace("{" + name + "}", value)
        query = "count=%C2%B2&after=%C2%B2:%C2%B2" if value == BOUNDARY else ""
        target = path + ("?" + query if query else "")
        body = None if route.method in ("GET", "HEAD") else b'{"username": "u", "password": "p", "name": "n"}'
        requests.append((route.method, target, {**logged_in, "Content-Type": "application/json"}, body, True))
    if route.method not in ("GET", "HEAD"):
        requests.append((route.method, route.path.replace("{username}", "fuzz"),
                         {**logged_in, "Content-Type": "application/json; charset=bogus"}, b"{}", True))
    return requests


def test_dashboard_routes(fuzz: Fuzz) -> None:
    """Every route of the dashboard, hostile requests logged in and not: see http_problems, and no
    trace of a rejected request. Every route gets its batch even when one fails."""
    dashboard_login(fuzz)
    routes = dashboard_routes(fuzz.server)
    assert len(routes) >= 10, routes  # the enumeration works (the dashboard has more routes than this)
    failures = []
    for route in routes:
        try:
            dashboard_batch(fuzz, route)()
        except Exception as exc:  # hypothesis's report of the route's falsifying example
            failures.append(f"--- {route.method} {route.path}:\n" + "".join(traceback.format_exception_only(exc)))
    assert not failures, "\n".join(failures)
    fuzz.assert_healthy()
    answer = http_request(fuzz.server, "GET", "/login", {}, None, source="127.0.0.1")
    assert answer.status == 200


@pytest.mark.parametrize(("target", "headers"), [
    ("/api/session?x=" + "x" * 9000, {}),
    ("/api/" + "%00" * 3000, {}),
    ("/api/session", {"X-Long": "x" * 9000}),
    ("/api/session", {f"X-Many-{i}": "x" for i in range(200)}),
], ids=["long request line", "long path", "long header", "many headers"])
def test_dashboard_protocol_limits(fuzz: Fuzz, target: str, headers: dict[str, str]) -> None:
    """Requests over aiohttp's own limits (answered before the application sees them): a 4xx,
    with the security headers too."""
    answer = http_request(fuzz.server, "GET", target, headers, None)
    assert 400 <= answer.status < 500, answer.status
    require(http_problems(answer), f"{answer.status} {answer.body[:300]!r}")


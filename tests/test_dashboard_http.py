"""The admin dashboard's HTTP API on a real server (docs/dashboard.md; issue 6, parts 2 and 4).

Written from docs/dashboard.md, not from the implementation, with a standard-library client that
keeps its own `orisun_session` cookie (test_dashboard_security.py uses it too). This module: what
the dashboard shows: overview, events, streams, the live tail (SSE) and subscriptions. Login,
sessions, CSRF, throttling, headers, users and roles are in test_dashboard_security.py.

One server for the module; every test reads or writes its own boundary (positions are per
boundary, so they are known exactly). Events are saved over gRPC and compared with GetEvents.
"""

from __future__ import annotations

import http.client
import itertools
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

import grpc
import pytest

import orisun
from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from orisun.runtime.postgres import EmbeddedPostgres
from tests.support import ADMIN, ServerThread, StreamReader, auth_metadata, running_server, wait_for

pytestmark = pytest.mark.timeout(60)

COOKIE = "orisun_session"
EVENT_KEYS = {"event_id", "event_type", "stream", "version", "position", "created_at", "tags", "data", "metadata"}
USER_KEYS = {"id", "name", "username", "roles"}
DATA_BOUNDARIES = ["dash_overview", "dash_empty", "dash_events", "dash_tail", "dash_subs"]
BOUNDARIES = {"orisun_admin": "orisun_admin", **{name: name for name in DATA_BOUNDARIES}}


# --- The HTTP client -----------------------------------------------------------------------------


def parse_set_cookie(header: str) -> tuple[str, str, dict[str, str]]:
    """(name, value, attributes with lower-case names) of one Set-Cookie header."""
    first, *rest = (part.strip() for part in header.split(";"))
    name, _, value = first.partition("=")
    attributes = {}
    for part in rest:
        key, _, attribute = part.partition("=")
        attributes[key.strip().lower()] = attribute.strip()
    return name.strip(), value.strip().strip('"'), attributes


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: Any  # the parsed JSON, or the text when it is not JSON
    text: str

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def session_cookies(self) -> list[tuple[str, dict[str, str]]]:
        """(value, attributes) of every Set-Cookie for the session cookie."""
        cookies = [parse_set_cookie(h) for h in self.headers.get_all("Set-Cookie") or []]
        return [(value, attributes) for name, value, attributes in cookies if name == COOKIE]


@dataclass
class Client:
    """A browser-like client of the dashboard: its own session cookie and CSRF token."""

    base_url: str
    source: str | None = None  # a local address to connect from (127.0.0.x), for per-address rules
    cookie: str | None = None
    csrf: str | None = None
    user: dict[str, Any] = field(default_factory=dict)

    def connection(self, timeout: float = 30) -> http.client.HTTPConnection:
        parts = urlsplit(self.base_url)
        assert parts.hostname is not None and parts.port is not None, self.base_url
        source = (self.source, 0) if self.source else None
        return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout, source_address=source)

    def headers_for(self, method: str, extra: Mapping[str, str | None] | None = None) -> dict[str, str]:
        headers: dict[str, str | None] = {}
        if self.cookie is not None:
            headers["Cookie"] = f"{COOKIE}={self.cookie}"
        if method != "GET":
            headers["Content-Type"] = "application/json"
            headers["X-CSRF-Token"] = self.csrf
        headers.update(extra or {})  # a None value leaves the header out
        return {key: value for key, value in headers.items() if value is not None}

    def request(self, method: str, path: str, json_body: Any = None, headers: Mapping[str, str | None] | None = None,
                body: bytes | None = None) -> Response:
        if json_body is not None:
            body = json.dumps(json_body).encode()
        connection = self.connection()
        try:
            connection.request(method, path, body=body, headers=self.headers_for(method, headers))
            answer = connection.getresponse()
            raw = answer.read()
        finally:
            connection.close()
        text = raw.decode("utf-8", errors="replace")
        try:
            parsed: Any = json.loads(text)
        except ValueError:
            parsed = text
        response = Response(answer.status, answer.headers, parsed, text)
        for value, attributes in response.session_cookies():
            cleared = not value or attributes.get("max-age") == "0"
            self.cookie = None if cleared else value
        return response

    def get(self, path: str, headers: Mapping[str, str | None] | None = None) -> Response:
        return self.request("GET", path, headers=headers)

    def post(self, path: str, json_body: Any = None, headers: Mapping[str, str | None] | None = None) -> Response:
        return self.request("POST", path, json_body, headers)

    def delete(self, path: str, json_body: Any = None, headers: Mapping[str, str | None] | None = None) -> Response:
        return self.request("DELETE", path, json_body, headers)

    def login(self, username: str, password: str) -> Response:
        response = self.post("/api/login", {"username": username, "password": password})
        if response.status == 200:
            self.csrf = response.body["csrf_token"]
            self.user = response.body
        return response


def logged_in(server: ServerThread, username: str = ADMIN[0], password: str = ADMIN[1]) -> Client:
    client = Client(server.dashboard_url)
    response = client.login(username, password)
    assert response.status == 200, response.text
    return client


def assert_no_traceback(response: Response) -> None:
    assert "Traceback" not in response.text and 'File "' not in response.text, response.text


def assert_error(response: Response, status: int | Sequence[int], field_name: str | None = None) -> None:
    """A documented error answer: the status, {"error": message} and, for validation errors, the field."""
    statuses = [status] if isinstance(status, int) else list(status)
    assert response.status in statuses, f"{response.status} {response.text}"
    assert isinstance(response.body, dict), response.text
    assert isinstance(response.body.get("error"), str) and response.body["error"], response.body
    assert_no_traceback(response)
    if field_name is not None:
        assert response.body.get("field") == field_name, response.body
        assert field_name.rstrip("s").lower() in response.body["error"].lower(), response.body


def ok(response: Response, status: int = 200) -> Any:
    assert response.status == status, f"{response.status} {response.text}"
    return response.body


# --- gRPC helpers --------------------------------------------------------------------------------


def ev(event_type: str, tags: Sequence[tuple[str, str]] = (), data: str | None = None,
       metadata: str = "") -> pb.EventToSave:
    return pb.EventToSave(event_id=str(uuid.uuid4()), event_type=event_type,
                          data=data if data is not None else json.dumps({"n": uuid.uuid4().hex[:8]}),
                          metadata=metadata, tags=[pb.Tag(key=k, value=v) for k, v in tags])


def save(server: ServerThread, boundary: str, stream: str, events: Sequence[pb.EventToSave]) -> pb.WriteResult:
    request = pb.SaveEventsRequest(boundary=boundary, stream=pb.SaveStreamQuery(name=stream, expected_version=-2),
                                   events=events)
    with server.stub() as stub:
        result: pb.WriteResult = stub.SaveEvents(request, metadata=auth_metadata(), timeout=30)
    return result


def read_all(server: ServerThread, boundary: str) -> list[pb.Event]:
    with server.stub() as stub:
        request = pb.GetEventsRequest(boundary=boundary, count=10_000)
        return list(stub.GetEvents(request, metadata=auth_metadata(), timeout=30).events)


def as_json(event: pb.Event) -> dict[str, Any]:
    """What the dashboard's EVENT must be for an event GetEvents returned (created_at aside)."""
    return {"event_id": event.event_id, "event_type": event.event_type, "stream": event.stream_id,
            "version": event.version,
            "position": {"commit": event.position.commit_position, "prepare": event.position.prepare_position},
            "tags": [{"key": t.key, "value": t.value} for t in event.tags], "data": event.data,
            "metadata": event.metadata}


def assert_events_equal(got: Sequence[dict[str, Any]], expected: Sequence[pb.Event]) -> None:
    """Same events in the same order, every documented field (and only those) equal."""
    assert [e["event_id"] for e in got] == [e.event_id for e in expected]
    for g, e in zip(got, expected, strict=True):
        assert set(g) == EVENT_KEYS, sorted(g)
        assert {k: v for k, v in g.items() if k != "created_at"} == as_json(e)
        created = datetime.fromisoformat(g["created_at"])
        assert created.tzinfo is not None, g["created_at"]
        assert abs((created - e.date_created.ToDatetime(tzinfo=UTC)).total_seconds()) < 0.001, g["created_at"]


def cursor(event: pb.Event) -> str:
    return f"{event.position.commit_position}:{event.position.prepare_position}"


# --- Fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dash(postgres: EmbeddedPostgres) -> Iterator[ServerThread]:
    with running_server(postgres.conninfo, "test_dash_http", boundaries=BOUNDARIES, admin_port=0) as server:
        yield server


@pytest.fixture(scope="module")
def admin(dash: ServerThread) -> Client:
    return logged_in(dash)


# The events of dash_events: (stream, [(event_type, tags)]) per write, in this order.
TagList = tuple[tuple[str, str], ...]
WRITES: list[tuple[str, list[tuple[str, TagList]]]] = [
    ("order-1", [("Created", (("tenant", "a"), ("region", "eu"))), ("Paid", (("tenant", "a"), ("region", "eu")))]),
    ("order-2", [("Created", (("tenant", "b"), ("region", "eu")))]),
    ("cart-1", [("Added", (("tenant", "a"), ("region", "us"))), ("Added", (("tenant", "a"), ("region", "eu"))),
                ("Removed", (("tenant", "b"), ("region", "us")))]),
    ("order-1", [("Shipped", (("tenant", "a"), ("region", "us")))]),
    ("order-10", [("Created", (("tenant", "a"), ("region", "eu")))]),
    ("order-2", [("Paid", (("tenant", "b"), ("region", "eu"))), ("Shipped", (("tenant", "b"), ("region", "eu")))]),
    ("cart-1", [("Added", (("tenant", "a"), ("region", "eu")))]),
    ("order-3", [("Created", (("tenant", "c"), ("region", "us")))]),
]


@pytest.fixture(scope="module")
def seeded(dash: ServerThread) -> list[pb.Event]:
    """dash_events seeded once; its events as GetEvents returns them, in position order."""
    for n, (stream, events) in enumerate(WRITES):
        save(dash, "dash_events", stream, [
            ev(event_type, tags, data=json.dumps({"n": n, "name": "Zoë \"quoted\""}),
               metadata=json.dumps({"write": n}) if n % 2 else "")
            for event_type, tags in events])
    stored = read_all(dash, "dash_events")
    assert len(stored) == sum(len(events) for _, events in WRITES)
    return stored


# --- Overview --------------------------------------------------------------------------------


def boundary_entry(overview: dict[str, Any], boundary: str) -> dict[str, Any]:
    entries: list[dict[str, Any]] = [b for b in overview["boundaries"] if b["boundary"] == boundary]
    assert len(entries) == 1, overview["boundaries"]
    return entries[0]


def test_overview_reports_what_was_saved(dash: ServerThread, admin: Client) -> None:
    streams = {"ov-a": 3, "ov-b": 1, "ov-c": 3}
    for stream, count in streams.items():
        save(dash, "dash_overview", stream, [ev("Counted") for _ in range(count)])
    total = sum(streams.values())

    def matches() -> dict[str, Any] | None:
        overview: dict[str, Any] = ok(admin.get("/api/overview"))
        entry = boundary_entry(overview, "dash_overview")
        return overview if (entry["head"], entry["events"], entry["streams"]) == (total, total, 3) else None

    overview = wait_for(matches, 15, f"the overview to report {total} events in 3 streams")
    assert {"version", "started_at", "uptime_seconds", "postgres", "nats", "boundaries"} <= set(overview)
    assert overview["version"] == orisun.__version__
    assert isinstance(overview["uptime_seconds"], int | float) and overview["uptime_seconds"] > 0
    datetime.fromisoformat(overview["started_at"])
    assert overview["postgres"]["ok"] is True and isinstance(overview["postgres"]["latency_ms"], int | float)
    assert overview["nats"]["ok"] is True and isinstance(overview["nats"]["url"], str)
    assert {b["boundary"] for b in overview["boundaries"]} >= set(DATA_BOUNDARIES)
    entry = boundary_entry(overview, "dash_overview")
    assert entry["schema"] == "dash_overview" and isinstance(entry["subscribers"], int)
    assert isinstance(entry["write_rate"], list)
    assert all(set(point) == {"t", "events_per_second"} for point in entry["write_rate"]), entry["write_rate"]
    empty = boundary_entry(overview, "dash_empty")
    assert (empty["events"], empty["streams"]) == (0, 0)


# --- Events ----------------------------------------------------------------------------------


def events_page(client: Client, query: Mapping[str, Any] | Sequence[tuple[str, Any]],
                boundary: str = "dash_events") -> dict[str, Any]:
    page: dict[str, Any] = ok(client.get(f"/api/boundaries/{boundary}/events?{urlencode(query, doseq=True)}"))
    assert set(page) == {"events", "first", "last", "next", "before"}  # "total" only with total=1
    if page["events"]:
        assert (page["first"], page["last"]) == (f"{page['events'][0]['position']['commit']}:"
                                                 f"{page['events'][0]['position']['prepare']}",
                                                 f"{page['events'][-1]['position']['commit']}:"
                                                 f"{page['events'][-1]['position']['prepare']}")
    else:
        assert (page["first"], page["last"]) == (None, None)
    return page


def test_events_in_both_directions_with_documented_fields(admin: Client, seeded: list[pb.Event]) -> None:
    assert_events_equal(events_page(admin, {})["events"], seeded)
    assert_events_equal(events_page(admin, {"direction": "asc", "count": 500})["events"], seeded)
    assert_events_equal(events_page(admin, {"direction": "desc"})["events"], seeded[::-1])
    assert_events_equal(events_page(admin, {"count": 1})["events"], seeded[:1])
    assert_events_equal(events_page(admin, {"direction": "desc", "count": 1})["events"], seeded[-1:])
    assert events_page(admin, {"after": cursor(seeded[-1])})["events"] == []
    assert events_page(admin, {"after": cursor(seeded[0]), "direction": "desc"})["events"] == []


def tags_of(event: pb.Event) -> set[str]:
    return {f"{t.key}:{t.value}" for t in event.tags}


FILTERS: list[tuple[list[tuple[str, str]], Callable[[pb.Event], bool]]] = [
    ([("stream", "order-1")], lambda e: e.stream_id == "order-1"),
    ([("stream", "order")], lambda e: False),
    ([("type", "Created")], lambda e: e.event_type == "Created"),
    ([("tag", "tenant:a")], lambda e: "tenant:a" in tags_of(e)),
    ([("tag", "tenant:a"), ("tag", "region:eu")], lambda e: {"tenant:a", "region:eu"} <= tags_of(e)),
    ([("tag", "tenant:b"), ("tag", "tenant:a")], lambda e: False),
    ([("stream", "cart-1"), ("type", "Added"), ("tag", "region:eu")],
     lambda e: e.stream_id == "cart-1" and e.event_type == "Added" and "region:eu" in tags_of(e)),
    ([("type", "Nothing")], lambda e: False),
]


@pytest.mark.parametrize(("query", "matches"), FILTERS, ids=[str(q) for q, _ in FILTERS])
@pytest.mark.parametrize("direction", ["asc", "desc"])
def test_event_filters(admin: Client, seeded: list[pb.Event], query: list[tuple[str, str]],
                       matches: Callable[[pb.Event], bool], direction: str) -> None:
    expected = [e for e in seeded if matches(e)]
    page = events_page(admin, [*query, ("direction", direction)])
    assert_events_equal(page["events"], expected if direction == "asc" else expected[::-1])


def page_through(client: Client, query: list[tuple[str, str]], direction: str, count: int) -> list[dict[str, Any]]:
    """Every non-empty page, following `last` until an empty or short page."""
    pages: list[dict[str, Any]] = []
    after: list[tuple[str, str]] = []
    while True:
        page = events_page(client, [*query, ("direction", direction), ("count", str(count)), *after])
        if page["events"]:
            pages.append(page)
        if len(page["events"]) < count:
            return pages
        assert len(pages) < 50, "paging does not end"
        after = [("after", page["last"])]


def ids_of(page: dict[str, Any]) -> list[str]:
    return [e["event_id"] for e in page["events"]]


@pytest.mark.parametrize("query", [[], [("tag", "tenant:a")], [("stream", "order-2")]], ids=str)
@pytest.mark.parametrize("count", [1, 2, 5])
def test_paging_both_ways_skips_and_repeats_nothing(admin: Client, seeded: list[pb.Event],
                                                    query: list[tuple[str, str]], count: int) -> None:
    expected = [e.event_id for e in seeded if all(
        (key == "stream" and e.stream_id == value) or (key == "tag" and value in tags_of(e)) for key, value in query)]
    forward = page_through(admin, query, "asc", count)
    assert [i for page in forward for i in ids_of(page)] == expected
    assert all(len(page["events"]) == count for page in forward[:-1])
    backward = page_through(admin, query, "desc", count)
    assert [i for page in backward for i in ids_of(page)] == expected[::-1]
    # Back from each forward page: its `first` with the opposite direction, reversed, is the page before.
    for previous, page in itertools.pairwise(forward):
        back = events_page(admin, [*query, ("direction", "desc"), ("count", str(count)), ("after", page["first"])])
        assert ids_of(back)[::-1] == ids_of(previous)
    assert events_page(admin, [*query, ("direction", "desc"), ("after", forward[0]["first"])])["events"] == []


def test_cursor_inside_a_write(admin: Client, seeded: list[pb.Event]) -> None:
    # order-1's first write holds two events with one commit position: a cursor on the first is
    # followed by the second.
    first, second = seeded[0], seeded[1]
    assert first.position.commit_position == second.position.commit_position
    assert_events_equal(events_page(admin, {"after": cursor(first), "count": 1})["events"], [second])
    assert_events_equal(events_page(admin, {"after": cursor(second), "direction": "desc"})["events"], [first])


@pytest.mark.parametrize(("query", "field_name"), [
    ({"count": "0"}, "count"), ({"count": "501"}, "count"), ({"count": "junk"}, "count"),
    ({"count": "-1"}, "count"), ({"count": "2.5"}, "count"), ({"count": ""}, "count"),
    ({"after": "junk"}, "after"), ({"after": "12"}, "after"), ({"after": "1:x"}, "after"),
    ({"after": "1:2:3"}, "after"), ({"direction": "up"}, "direction"), ({"tag": "no-colon"}, "tag"),
])
def test_invalid_event_query_is_refused_naming_the_parameter(admin: Client, seeded: list[pb.Event],
                                                             query: dict[str, str], field_name: str) -> None:
    assert_error(admin.get(f"/api/boundaries/dash_events/events?{urlencode(query)}"), 400, field_name)


def test_unknown_boundary_is_not_found(admin: Client) -> None:
    for path in ("/api/boundaries/nope/events", "/api/boundaries/nope/streams", "/api/boundaries/nope/tail"):
        assert_error(admin.get(path), 404)


# --- Streams ---------------------------------------------------------------------------------


def test_streams_by_name_with_version_and_last_write(admin: Client, seeded: list[pb.Event]) -> None:
    names = sorted({e.stream_id for e in seeded})
    page = ok(admin.get("/api/boundaries/dash_events/streams"))
    assert set(page) == {"streams", "next"} and page["next"] is None
    assert [s["name"] for s in page["streams"]] == names == ["cart-1", "order-1", "order-10", "order-2", "order-3"]
    for stream in page["streams"]:
        assert set(stream) == {"name", "version", "updated_at"}
        last = [e for e in seeded if e.stream_id == stream["name"]][-1]
        assert stream["version"] == last.version
        updated = datetime.fromisoformat(stream["updated_at"])
        assert abs((updated - last.date_created.ToDatetime(tzinfo=UTC)).total_seconds()) < 2, stream


@pytest.mark.parametrize(("prefix", "expected"), [
    ("order-1", ["order-1", "order-10"]), ("cart", ["cart-1"]), ("x", []), ("%", []), ("_", []),
    ("order_", []),
])
def test_streams_prefix(admin: Client, seeded: list[pb.Event], prefix: str, expected: list[str]) -> None:
    page = ok(admin.get(f"/api/boundaries/dash_events/streams?{urlencode({'prefix': prefix})}"))
    assert [s["name"] for s in page["streams"]] == expected


def test_streams_paging(admin: Client, seeded: list[pb.Event]) -> None:
    first = ok(admin.get("/api/boundaries/dash_events/streams?count=2"))
    assert [s["name"] for s in first["streams"]] == ["cart-1", "order-1"] and first["next"] == "order-1"
    second = ok(admin.get(f"/api/boundaries/dash_events/streams?count=2&after={first['next']}"))
    assert [s["name"] for s in second["streams"]] == ["order-10", "order-2"] and second["next"] == "order-2"
    third = ok(admin.get(f"/api/boundaries/dash_events/streams?count=2&after={second['next']}"))
    assert [s["name"] for s in third["streams"]] == ["order-3"] and third["next"] is None
    filtered = ok(admin.get("/api/boundaries/dash_events/streams?count=1&prefix=order-1&after=order-1"))
    assert [s["name"] for s in filtered["streams"]] == ["order-10"]
    assert_error(admin.get("/api/boundaries/dash_events/streams?count=junk"), 400, "count")


# --- Live tail -------------------------------------------------------------------------------


class Tail:
    """GET .../tail on a raw connection, its server-sent events read by a thread."""

    def __init__(self, client: Client, boundary: str, query: Mapping[str, str] | None = None) -> None:
        self._connection = client.connection(timeout=60)
        path = f"/api/boundaries/{boundary}/tail?{urlencode(query or {})}"
        self._connection.request("GET", path, headers=client.headers_for("GET", {"Accept": "text/event-stream"}))
        self.response = self._connection.getresponse()
        self._lock = threading.Lock()
        self._blocks: list[tuple[str, str]] = []
        self._closing = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, name="sse-reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        name, data = "message", []
        try:
            while line := self.response.readline():
                text = line.decode().rstrip("\r\n")
                if text.startswith(":"):
                    continue  # a comment (keepalive)
                if text:
                    key, _, value = text.partition(":")
                    value = value.removeprefix(" ")
                    if key == "event":
                        name = value
                    elif key == "data":
                        data.append(value)
                    continue
                if data:
                    with self._lock:
                        self._blocks.append((name, "\n".join(data)))
                name, data = "message", []
        except Exception as exc:  # whatever ends the read, unless the test closed it
            if not self._closing:
                self.error = exc

    @property
    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            blocks = list(self._blocks)
        assert all(name == "event" for name, _ in blocks), blocks
        return [json.loads(data) for _, data in blocks]

    def ids(self) -> list[str]:
        if self.error is not None:
            raise AssertionError(f"the tail failed: {self.error!r}")
        return [e["event_id"] for e in self.events]

    def close(self) -> None:
        """Shut the socket down (ending the reader's read), join the reader, then close."""
        self._closing = True
        if self._connection.sock is not None:
            self._connection.sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=10)
        assert not self._thread.is_alive(), "the tail's reader did not end"
        self._connection.close()


def establish(send: Callable[[], str], received: Callable[[], list[str]], timeout: float = 15) -> set[str]:
    """Send probes until one arrives (a stream gets only what comes after it is open); their ids."""
    probes: set[str] = set()
    deadline = time.monotonic() + timeout
    while True:
        probes.add(send())
        round_end = min(deadline, time.monotonic() + 0.5)
        wait_for(lambda end=round_end: probes & set(received()) or time.monotonic() > end, timeout + 1,  # type: ignore[misc]
                 "a probe or the end of a round")
        if probes & set(received()):
            return probes
        assert time.monotonic() < deadline, f"none of {len(probes)} probes arrived in {timeout}s"


@pytest.fixture
def tails() -> Iterator[Callable[..., Tail]]:
    opened: list[Tail] = []

    def open_tail(client: Client, boundary: str, query: Mapping[str, str] | None = None) -> Tail:
        opened.append(Tail(client, boundary, query))
        return opened[-1]

    yield open_tail
    for tail in opened:
        tail.close()


def probe_sender(dash: ServerThread, event_type: str) -> Callable[[], str]:
    def send() -> str:
        event = ev(event_type, [("probe", "yes")])
        save(dash, "dash_tail", "probe", [event])
        return event.event_id
    return send


def test_tail_delivers_events_committed_after_it_opened_in_order(dash: ServerThread, admin: Client,
                                                                 tails: Callable[..., Tail]) -> None:
    before = ev("Early")
    save(dash, "dash_tail", "tail-1", [before])
    tail = tails(admin, "dash_tail")
    assert tail.response.status == 200
    assert (tail.response.getheader("Content-Type") or "").startswith("text/event-stream")
    probes = establish(probe_sender(dash, "Probe"), tail.ids)
    writes = [[ev("First", [("k", "1")]), ev("Second")], [ev("Third", data='{"x": [1, 2]}', metadata='{"m": 1}')],
              [ev("Fourth"), ev("Fifth"), ev("Sixth")]]
    for n, events in enumerate(writes):
        save(dash, "dash_tail", f"tail-{n % 2}", events)
    expected_ids = [e.event_id for events in writes for e in events]
    wait_for(lambda: expected_ids[-1] in tail.ids(), 15, "the last event on the tail")
    assert before.event_id not in tail.ids()
    got = [e for e in tail.events if e["event_id"] not in probes]
    stored = {e.event_id: e for e in read_all(dash, "dash_tail")}
    assert_events_equal(got, [stored[i] for i in expected_ids])


def test_tail_with_type_filter(dash: ServerThread, admin: Client, tails: Callable[..., Tail]) -> None:
    tail = tails(admin, "dash_tail", {"type": "Wanted"})
    assert tail.response.status == 200
    probes = establish(probe_sender(dash, "Wanted"), tail.ids)
    wanted = [ev("Wanted", [("n", "1")]), ev("Wanted", [("n", "2")]), ev("Wanted", [("n", "3")])]
    save(dash, "dash_tail", "filtered", [ev("Unwanted"), wanted[0], ev("Other")])
    save(dash, "dash_tail", "filtered", [ev("Unwanted")])
    save(dash, "dash_tail", "filtered-2", [wanted[1], ev("Unwanted"), wanted[2]])
    wait_for(lambda: wanted[-1].event_id in tail.ids(), 15, "the last wanted event on the tail")
    assert [i for i in tail.ids() if i not in probes] == [e.event_id for e in wanted]
    assert {e["event_type"] for e in tail.events} == {"Wanted"}


def test_a_closed_tail_stops_counting_as_a_subscriber_within_seconds(dash: ServerThread, admin: Client) -> None:
    """aiohttp does not tell a handler that its client left; the tail must notice by itself."""

    def live() -> int:
        return int(ok(admin.get("/api/subscriptions"))["live"]["dash_tail"])

    wait_for(lambda: live() == 0, 10, "no tail open on dash_tail")
    tail = Tail(admin, "dash_tail")
    wait_for(lambda: live() == 1, 10, "the tail to count as a live subscriber")
    tail.close()
    closed = time.monotonic()
    wait_for(lambda: live() == 0, 5, "the closed tail to stop counting")
    assert time.monotonic() - closed < 5


# --- Subscriptions ---------------------------------------------------------------------------


def test_event_subscription_is_listed_with_position_and_lag(dash: ServerThread, admin: Client) -> None:
    channel = grpc.insecure_channel(dash.address)
    call = pb_grpc.EventStoreStub(channel).SubscribeToEvents(  # type: ignore[no-untyped-call]
        pb.CatchUpSubscribeToEventStoreRequest(boundary="dash_subs", subscriber_name="dash-reader"),
        metadata=auth_metadata(), timeout=55)
    reader: StreamReader[pb.Event] = StreamReader(call, channel, "dash-reader")

    def listed() -> dict[str, Any] | None:
        reader.check()
        answer = ok(admin.get("/api/subscriptions"))
        found = [s for s in answer["subscriptions"] if (s["boundary"], s["subscriber_name"]) == ("dash_subs",
                                                                                                 "dash-reader")
                 and s["connected"]]  # a named one that went away stays listed a while, not connected
        return {**found[0], "live": answer["live"]} if found else None

    try:
        # Listed at once; counted as live once its (empty) catch-up is over.
        entry = wait_for(lambda: (e := listed()) and e["live"].get("dash_subs", 0) >= 1 and e, 15,
                         "the subscription, live, in /api/subscriptions")
        assert entry["position"] is None, entry
        wait_for(lambda: boundary_entry(ok(admin.get("/api/overview")), "dash_subs")["subscribers"] >= 1, 15,
                 "the overview to count the subscriber")
        save(dash, "dash_subs", "subs-1", [ev("One"), ev("Two")])
        save(dash, "dash_subs", "subs-2", [ev("Three")])
        reader.wait_until(lambda items: len(items) == 3, 15, "three events")
        last = reader.items[-1].position
        expected = {"commit": last.commit_position, "prepare": last.prepare_position}
        entry = wait_for(lambda: (e := listed()) and e["position"] == expected and e["lag"] == 0 and e,
                         15, f"position {expected} and lag 0")
        assert entry["head"] == last.prepare_position == 3
    finally:
        reader.close()
    wait_for(lambda: listed() is None, 15, "the subscription to leave the list")


def test_pubsub_consumer_is_listed(dash: ServerThread, admin: Client) -> None:
    subject, consumer = f"dash.orders.{uuid.uuid4().hex[:6]}", "dash-consumer"
    channel = grpc.insecure_channel(dash.address)
    call = pb_grpc.EventStoreStub(channel).SubscribeToPubSub(  # type: ignore[no-untyped-call]
        pb.SubscribeRequest(subject=subject, consumer_name=consumer), metadata=auth_metadata(), timeout=55)
    reader: StreamReader[pb.SubscribeResponse] = StreamReader(call, channel, consumer)

    def publish() -> str:
        message_id = str(uuid.uuid4())
        with dash.stub() as stub:
            stub.PublishToPubSub(pb.PublishRequest(id=message_id, subject=subject, data="{}"),
                                 metadata=auth_metadata(), timeout=10)
        return message_id

    try:
        def received() -> list[str]:
            reader.check()
            return [r.message.id for r in reader.items]

        establish(publish, received)

        def entry() -> dict[str, Any] | None:
            found = [p for p in ok(admin.get("/api/subscriptions"))["pubsub"]
                     if (p["subject"], p["consumer_name"]) == (subject, consumer)]
            return found[0] if found and found[0]["pending"] == 0 and found[0]["ack_pending"] == 0 else None

        found = wait_for(entry, 15, "the pub/sub consumer, all delivered and acknowledged")
        # The JetStream stream (ORISUN_PUBSUB) is internal: not shown since issue #16.
        assert {"subject", "consumer_name", "pending", "ack_pending", "redelivered"} <= set(found)
        assert "stream" not in found and isinstance(found["redelivered"], int)
    finally:
        reader.close()

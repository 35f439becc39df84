"""The admin dashboard's HTTP API on a real server (docs/dashboard.md; issue 6, parts 2 and 4):
the overview, events and streams.

Written from docs/dashboard.md, not from the implementation, with the standard-library client of
tests/dashboard_client.py. The live tail (SSE) and subscriptions are in
test_dashboard_http_live.py; login, sessions, CSRF, throttling, headers, users and roles in
test_dashboard_security*.py; what issue #16 added in test_dashboard_operating_http.py.

One server for the module; every test reads or writes its own boundary (positions are per
boundary, so they are known exactly). Events are saved over gRPC and compared with GetEvents.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import pytest

import orisun
from orisun._proto import eventstore_pb2 as pb
from orisun.runtime.postgres import EmbeddedPostgres
from tests.dashboard_client import (
    Client,
    assert_error,
    assert_events_equal,
    boundary_entry,
    cursor,
    ev,
    logged_in,
    ok,
    read_all,
    save,
)
from tests.support import ServerThread, running_server, wait_for

pytestmark = pytest.mark.timeout(60)

DATA_BOUNDARIES = ["dash_overview", "dash_empty", "dash_events", "dash_tail", "dash_subs"]
BOUNDARIES = {"orisun_admin": "orisun_admin", **{name: name for name in DATA_BOUNDARIES}}


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

"""The dashboard's JSON API for operating (issue #16): totals with a bounded cost, the search by
event id and position, the stream prefix filter, streams by last write, the storage size and
event types of the overview, subscriptions with connection, rate and lag, the internal boundary
marked apart, and the default admin password flag (checked once per change of the admin user).

One server for the module; every test reads or writes boundaries of its own.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import grpc
import pytest

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from orisun.runtime.postgres import EmbeddedPostgres
from orisun.service import monitor
from tests.dashboard_client import Client, Response, assert_error, ev, logged_in, ok, read_all, save
from tests.support import ADMIN, ServerThread, StreamReader, auth_metadata, running_server, wait_for

pytestmark = pytest.mark.timeout(90)

BOUNDARIES = {name: name for name in ["orisun_admin", "ops_events", "ops_streams", "ops_overview", "ops_subs",
                                      "ops_window"]}
# ops_events: (stream, event types) per write, in this order.
WRITES = [("order-1", ["Created", "Paid"]), ("order-2", ["Created"]), ("cart-1", ["Added", "Added"]),
          ("order-10", ["Created"]), ("order-1", ["Shipped"]), ("cart-2", ["Added"]), ("order-2", ["Paid"])]


@pytest.fixture(scope="module")
def dash(postgres: EmbeddedPostgres) -> Iterator[ServerThread]:
    with running_server(postgres.conninfo, "test_dash_ops", boundaries=BOUNDARIES) as server:
        yield server


@pytest.fixture(scope="module")
def admin(dash: ServerThread) -> Client:
    return logged_in(dash)


@pytest.fixture(scope="module")
def seeded(dash: ServerThread) -> list[pb.Event]:
    for stream, types in WRITES:
        save(dash, "ops_events", stream, [ev(t, [("kind", t.lower())]) for t in types])
    return read_all(dash, "ops_events")


def get(client: Client, path: str, query: dict[str, str] | None = None) -> Response:
    return client.get(f"{path}?{urlencode(query)}" if query else path)


def page(client: Client, boundary: str, **query: Any) -> dict[str, Any]:
    """A page of events; newest first unless ``direction`` says otherwise (as the events page asks)."""
    query.setdefault("direction", "desc")
    answer: dict[str, Any] = ok(get(client, f"/api/boundaries/{boundary}/events", query))
    return answer


def ids(events: list[Any]) -> list[str]:
    return [e["event_id"] if isinstance(e, dict) else e.event_id for e in events]


# --- Totals ------------------------------------------------------------------------------------


def test_totals_head_without_filters_version_for_a_stream_counted_for_the_rest(
    admin: Client, seeded: list[pb.Event]
) -> None:
    everything = page(admin, "ops_events", total="1", count="3")
    assert everything["total"] == {"count": len(seeded), "exact": True, "window": None}
    assert page(admin, "ops_events", stream="order-1", total="1")["total"]["count"] == 3  # version 2
    assert page(admin, "ops_events", stream="no-such", total="1")["total"] == {"count": 0, "exact": True,
                                                                              "window": None}
    assert page(admin, "ops_events", type="Created", total="1")["total"]["count"] == 3
    assert page(admin, "ops_events", tag="kind:added", total="1")["total"]["count"] == 3
    assert page(admin, "ops_events", stream="order-2", type="Paid", total="1")["total"]["count"] == 1
    # Without total=1 nothing is counted.
    assert "total" not in page(admin, "ops_events")


def test_a_filtered_total_stops_at_its_cap(admin: Client, seeded: list[pb.Event],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(monitor, "COUNT_CAP", 2)
    assert page(admin, "ops_events", type="Created", total="1")["total"] == {"count": 2, "exact": False,
                                                                            "window": None}
    assert page(admin, "ops_events", type="Shipped", total="1")["total"] == {"count": 1, "exact": True,
                                                                            "window": None}
    # The head and a stream's version are exact whatever the cap.
    assert page(admin, "ops_events", total="1")["total"]["exact"] is True


def test_before_tells_the_page_number(admin: Client, seeded: list[pb.Event]) -> None:
    first = page(admin, "ops_events", count="3")  # newest first
    assert first["before"] == 0
    second = page(admin, "ops_events", count="3", after=first["next"])
    assert second["before"] == 3
    oldest = page(admin, "ops_events", count="3", direction="asc", after=f"{seeded[3].position.commit_position}:"
                                                                         f"{seeded[3].position.prepare_position}")
    assert oldest["before"] == 4
    stream = page(admin, "ops_events", stream="order-1", count="1", direction="desc")
    assert stream["before"] == 0 and page(admin, "ops_events", stream="order-1", count="1",
                                          after=stream["next"])["before"] == 1


# --- Search by position and event id --------------------------------------------------------------


def test_at_starts_the_page_at_a_position_in_either_direction(admin: Client, seeded: list[pb.Event]) -> None:
    at = seeded[4].position.prepare_position
    newest_first = page(admin, "ops_events", at=str(at), count="2")
    assert ids(newest_first["events"]) == ids([seeded[4], seeded[3]])
    assert newest_first["before"] == len(seeded) - at
    oldest_first = page(admin, "ops_events", at=str(at), count="2", direction="asc")
    assert ids(oldest_first["events"]) == ids([seeded[4], seeded[5]])
    assert ids(page(admin, "ops_events", at="1", direction="asc", count="1")["events"]) == ids(seeded[:1])
    assert page(admin, "ops_events", at="999999")["events"][0]["event_id"] == seeded[-1].event_id


@pytest.mark.parametrize("query", [{"at": "0"}, {"at": "x"}, {"at": "-1"}, {"at": "3", "after": "1:1"}])
def test_a_bad_at_is_refused_naming_it(admin: Client, query: dict[str, str]) -> None:
    assert_error(get(admin, "/api/boundaries/ops_events/events", query), 400, "at")


def test_an_event_by_its_id(admin: Client, seeded: list[pb.Event]) -> None:
    wanted = seeded[2]
    found = ok(admin.get(f"/api/boundaries/ops_events/events/{wanted.event_id}"))
    assert found["event_id"] == wanted.event_id and found["position"]["prepare"] == wanted.position.prepare_position
    assert found["stream"] == wanted.stream_id and found["event_type"] == wanted.event_type
    assert_error(admin.get(f"/api/boundaries/ops_events/events/{uuid.uuid4()}"), 404)
    assert_error(admin.get("/api/boundaries/ops_events/events/not-a-uuid"), 400, "event_id")
    # Another boundary does not have it.
    assert_error(admin.get(f"/api/boundaries/ops_streams/events/{wanted.event_id}"), 404)
    assert_error(admin.get(f"/api/boundaries/no_such/events/{wanted.event_id}"), 404)


# --- Stream prefix ---------------------------------------------------------------------------------


def test_stream_prefix_matches_every_stream_starting_with_it(admin: Client, seeded: list[pb.Event]) -> None:
    orders = [e for e in seeded if e.stream_id.startswith("order-1")]  # order-1 and order-10
    answer = page(admin, "ops_events", stream_prefix="order-1", total="1", direction="asc")
    assert ids(answer["events"]) == ids(orders)
    assert answer["total"] == {"count": len(orders), "exact": True, "window": None}
    assert answer["next"] is None
    newest = page(admin, "ops_events", stream_prefix="order-", type="Created", count="2")
    created = [e for e in seeded if e.stream_id.startswith("order-") and e.event_type == "Created"]
    assert ids(newest["events"]) == ids(created[::-1][:2])
    rest = page(admin, "ops_events", stream_prefix="order-", type="Created", count="2", after=newest["next"])
    assert ids(rest["events"]) == ids(created[::-1][2:])
    tagged = page(admin, "ops_events", stream_prefix="cart-", tag="kind:added", total="1")
    assert tagged["total"]["count"] == 3 and {e["stream"] for e in tagged["events"]} == {"cart-1", "cart-2"}
    assert_error(get(admin, "/api/boundaries/ops_events/events", {"stream_prefix": "a", "stream": "b"}), 400,
                 "stream_prefix")
    assert_error(get(admin, "/api/boundaries/ops_events/events", {"stream_prefix": "a\x00"}), 400, "stream_prefix")


def test_stream_prefix_reads_a_bounded_window_and_continues_past_it(
    dash: ServerThread, admin: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(10):
        save(dash, "ops_window", f"{'match' if n in (1, 8) else 'other'}-{n}", [ev("E")])
    monkeypatch.setattr(monitor, "WINDOW", 3)
    found, after, pages = [], None, 0
    while True:
        answer = page(admin, "ops_window", stream_prefix="match-", count="5", **({"after": after} if after else {}))
        found += [e["stream"] for e in answer["events"]]
        pages += 1
        if answer["next"] is None:
            break
        after = answer["next"]
        assert pages < 10
    assert found == ["match-8", "match-1"] and pages >= 3  # windows of 3 positions over 10
    assert page(admin, "ops_window", stream_prefix="match-", total="1")["total"] == {"count": 1, "exact": True,
                                                                                    "window": 3}


# --- Streams by last write -------------------------------------------------------------------------


def test_streams_by_last_write_newest_first_with_paging_and_prefix(dash: ServerThread, admin: Client) -> None:
    for stream in ["s-a", "s-b", "s-c", "s-a", "t-x", "s-b"]:
        save(dash, "ops_streams", stream, [ev("E")])
    answer = ok(get(admin, "/api/boundaries/ops_streams/streams", {"order": "last_write"}))
    assert [s["name"] for s in answer["streams"]] == ["s-b", "t-x", "s-a", "s-c"]
    assert [s["version"] for s in answer["streams"]] == [1, 0, 1, 0]
    assert answer["next"] is None
    first = ok(get(admin, "/api/boundaries/ops_streams/streams", {"order": "last_write", "count": "2"}))
    assert [s["name"] for s in first["streams"]] == ["s-b", "t-x"]
    rest = ok(get(admin, "/api/boundaries/ops_streams/streams", {"order": "last_write", "before": first["next"]}))
    assert [s["name"] for s in rest["streams"]] == ["s-a", "s-c"]
    prefixed = ok(get(admin, "/api/boundaries/ops_streams/streams", {"order": "last_write", "prefix": "s-"}))
    assert [s["name"] for s in prefixed["streams"]] == ["s-b", "s-a", "s-c"]
    updated = [datetime.fromisoformat(s["updated_at"]) for s in answer["streams"]]
    assert updated == sorted(updated, reverse=True)
    assert_error(get(admin, "/api/boundaries/ops_streams/streams", {"order": "size"}), 400, "order")
    assert_error(get(admin, "/api/boundaries/ops_streams/streams", {"order": "last_write", "before": "x"}), 400,
                 "before")


# --- Overview ---------------------------------------------------------------------------------------


def test_overview_storage_size_event_types_and_the_internal_boundary(dash: ServerThread, admin: Client) -> None:
    save(dash, "ops_overview", "o-1", [ev("Opened"), ev("Noted"), ev("Noted"), ev("Noted")])
    save(dash, "ops_overview", "o-2", [ev("Opened")])

    def card() -> dict[str, Any] | None:
        found = [b for b in ok(admin.get("/api/overview"))["boundaries"] if b["boundary"] == "ops_overview"]
        return found[0] if found and found[0]["event_types_sampled"] == 5 else None

    entry = wait_for(card, 30, "the overview's event types of ops_overview")  # cached up to DETAILS_TTL
    assert entry["event_types"] == [{"type": "Noted", "events": 3}, {"type": "Opened", "events": 2}]
    assert isinstance(entry["storage_bytes"], int) and entry["storage_bytes"] > 8192
    assert entry["internal"] is False
    internal = [b for b in ok(admin.get("/api/overview"))["boundaries"] if b["internal"]]
    assert [b["boundary"] for b in internal] == ["orisun_admin"]
    boundaries = ok(admin.get("/api/boundaries"))["boundaries"]
    assert {b["name"]: b["internal"] for b in boundaries}["orisun_admin"] is True
    assert not any(b["internal"] for b in boundaries if b["name"] != "orisun_admin")


def test_event_types_cover_only_the_most_recent_events(dash: ServerThread, admin: Client,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(monitor, "TYPE_SAMPLE", 2)
    monkeypatch.setattr(monitor, "DETAILS_TTL", 0.0)
    save(dash, "ops_overview", "o-3", [ev("Closed"), ev("Closed")])
    entry = next(b for b in ok(admin.get("/api/overview"))["boundaries"] if b["boundary"] == "ops_overview")
    assert entry["event_types"] == [{"type": "Closed", "events": 2}] and entry["event_types_sampled"] == 2


# --- Subscriptions ----------------------------------------------------------------------------------


def test_subscriptions_say_connected_since_rate_and_lag_and_hide_internal_names(
    dash: ServerThread, admin: Client
) -> None:
    save(dash, "ops_subs", "sub-1", [ev("A"), ev("B"), ev("C")])
    channel = grpc.insecure_channel(dash.address)
    call = pb_grpc.EventStoreStub(channel).SubscribeToEvents(  # type: ignore[no-untyped-call]
        pb.CatchUpSubscribeToEventStoreRequest(boundary="ops_subs", subscriber_name="ops-reader"),
        metadata=auth_metadata(), timeout=80)
    reader: StreamReader[pb.Event] = StreamReader(call, channel, "ops-reader")
    subject = f"ops.{uuid.uuid4().hex[:6]}"
    pubsub_channel = grpc.insecure_channel(dash.address)
    pubsub_call = pb_grpc.EventStoreStub(pubsub_channel).SubscribeToPubSub(  # type: ignore[no-untyped-call]
        pb.SubscribeRequest(subject=subject, consumer_name="ops-mailer"), metadata=auth_metadata(), timeout=80)
    consumer: StreamReader[pb.SubscribeResponse] = StreamReader(pubsub_call, pubsub_channel, "ops-mailer")
    opened = time.time()

    def entries() -> tuple[dict[str, Any] | None, dict[str, Any] | None, dict[str, Any]]:
        answer = ok(admin.get("/api/subscriptions"))
        sub = [s for s in answer["subscriptions"] if s["subscriber_name"] == "ops-reader"]
        pub = [p for p in answer["pubsub"] if p["consumer_name"] == "ops-mailer"]
        return (sub[0] if sub else None), (pub[0] if pub else None), answer

    try:
        reader.wait_until(lambda items: len(items) == 3, 15, "the three events")
        def listed() -> Any:
            sub, pub, answer = entries()
            return (sub, pub, answer) if sub and sub["delivered"] == 3 and pub else None

        sub, pub, answer = wait_for(listed, 15, "both listed")
        assert sub["connected"] is True and sub["until"] is None and sub["stream"] is None
        assert abs(datetime.fromisoformat(sub["since"]).timestamp() - opened) < 10
        assert sub["head"] == 3 and sub["examined"] == 3 and sub["lag"] == 0
        assert sub["rate"] is None or sub["rate"] >= 0
        assert pub["connected"] is True and pub["calls"] == 1 and pub["subject"] == subject
        assert abs(datetime.fromisoformat(pub["since"]).timestamp() - opened) < 10
        assert pub["lag"] == 0
        # Internal names stay out: no JetStream stream name anywhere, the admin boundary apart.
        assert "ORISUN_PUBSUB" not in json.dumps(answer)
        assert "orisun_admin" not in answer["live"] and answer["live_internal"] == {"orisun_admin": 0}
        # The rate follows deliveries: ten more, looked at twice a second apart.
        save(dash, "ops_subs", "sub-2", [ev("D") for _ in range(10)])
        reader.wait_until(lambda items: len(items) == 13, 15, "ten more")
        rated = wait_for(lambda: (e := entries()[0]) and e["delivered"] == 13 and e["rate"] and e, 15,
                         "a rate above 0")
        assert rated["lag"] == rated["head"] - rated["examined"] == 0
    finally:
        reader.close()
        consumer.close()
    def disconnected() -> Any:
        sub, pub, _ = entries()
        return (sub, pub) if sub and not sub["connected"] and pub and not pub["connected"] else None

    gone = wait_for(disconnected, 15, "both shown disconnected")
    assert gone[0]["until"] is not None and gone[0]["rate"] is None and gone[0]["delivered"] == 13
    assert gone[1]["since"] is None and gone[1]["calls"] == 0


# --- Default admin password -------------------------------------------------------------------------


def test_the_default_admin_password_is_flagged_and_checked_once_per_change(
    dash: ServerThread, admin: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    users = dash.app.dashboard.users  # type: ignore[union-attr]
    checks: list[str] = []
    original = users.uses_default_password

    async def counted(username: str) -> bool:
        checks.append(username)
        return await original(username)

    monkeypatch.setattr(users, "uses_default_password", counted)
    dash.app.dashboard._default_password = None  # type: ignore[union-attr]
    for _ in range(3):
        session = ok(admin.get("/api/session"))
        assert session["default_admin_password"] is True and session["admin_username"] == ADMIN[0]
        assert session["admin_boundary"] == "orisun_admin"
    assert checks == [ADMIN[0]]
    try:
        ok(admin.post(f"/api/users/{ADMIN[0]}/password", {"password": "Another-Secret-9"}), 204)
        assert ok(admin.get("/api/session"))["default_admin_password"] is False
        assert ok(admin.get("/api/session"))["default_admin_password"] is False
        assert len(checks) == 2
    finally:
        ok(admin.post(f"/api/users/{ADMIN[0]}/password", {"password": ADMIN[1]}), 204)
    assert ok(admin.get("/api/session"))["default_admin_password"] is True

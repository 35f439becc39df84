"""SubscribeToEvents / CatchUpSubscribeToEvents on a real server: what a subscription delivers, the
brief's example, errors and auth (docs/contract.md §2, §4, §5 and §7). Written from the contract, not
from the implementation. What is checked:

- a subscription delivers every event of its boundary matching its query, after its position
  (exclusive; absent = from the start), history first and then live, in position order, each once,
  carrying exactly what GetEvents returns for the same event (ids, data and metadata byte for byte,
  tags, positions, stream, version, creation time);
- its query means what it means to GetEvents (random events and random queries, compared with
  GetEvents' answer for the same query and cursor);
- the position cursor: from the start, from a saved position, from the middle of a write, from a
  position beyond the head;
- the brief's SubscribeToEvents example, verbatim through the real grpcurl, and the older RPC name
  CatchUpSubscribeToEvents;
- errors on the stream with the contract's codes, and that reading needs no write role.

The catch-up -> live handover is in tests/test_subscriptions_handover.py, subscriber_name in
tests/test_subscriptions_names.py; fixtures and helpers in tests/subscriptions_support.py.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from tests import subscriptions_support
from tests.brief import BRIEF_SUBSCRIBE_TO_EVENTS
from tests.subscriptions_support import (
    DELIVERY_TIMEOUT,
    READER,
    RPCS,
    Subscription,
    assert_same_events,
    ev,
    head,
    pos,
    prepares,
    query,
    read_all,
    refusal,
    save,
)
from tests.support import GrpcurlStream, ServerThread, auth_metadata, grpcurl, wait_for

# Fixtures of tests/subscriptions_support.py, bound to names of this module so that pytest finds them here.
sub_server = subscriptions_support.sub_server
stub = subscriptions_support.stub
subscribe = subscriptions_support.subscribe


pytestmark = pytest.mark.timeout(120)


# --- What a subscription delivers --------------------------------------------------------------


PAYLOADS = [  # (data, metadata): must come back byte for byte, from PostgreSQL and from the live feed
    ('{"a":1}', ""),
    ('  {\n\t"a" :   1 ,\r\n  "b":[ ]  }  \n', '\t{ "m" : [ 1 , 2 ] }\n'),
    ('{"name": "Zoë — 日本語 🎉", "ß": "ü"}', '{"who": "Ωmega"}'),
    ('{"esc": "q\\" b\\\\ n\\n u\\u00e9 s\\ud83d\\ude00"}', '{"x": "\\u0000 is escaped"}'),
    ('{"big": 123456789012345678901234567890, "f": 1.000000000000000000001}', "[]"),
    ('"text"', "null"),
    ("[" + ",".join(['"' + "x" * 1000 + '"'] * 100) + "]", '{"size": "100 kB"}'),
]
TAGS = [(), (("b", "2"), ("a", "1"), ("a", "1")), (("event_type", "Custom"), ("eventType", "x"), ("empty", "")),
        (("ünï", "cødé 🎉"),)]


def _varied(round_: str) -> list[tuple[str, list[pb.EventToSave]]]:
    """Writes (stream, events) with every kind of payload and tag, some with several events (so
    commit and prepare positions differ) and some continuing a stream (versions above 0)."""
    events = [ev(f"Type{i % 3}", TAGS[i % len(TAGS)], data, metadata) for i, (data, metadata) in enumerate(PAYLOADS)]
    events[1].event_id = events[1].event_id.upper()  # comes back in canonical lowercase, like GetEvents'
    return [(f"order-{round_}", events[:3]), (f"other-{round_}", events[3:4]), (f"order-{round_}", events[4:]),
            (f"single-{round_}", [ev("Last", [("round", round_)])])]


@pytest.mark.parametrize("rpc", RPCS)
def test_events_carry_exactly_what_get_events_returns(
    stub: pb_grpc.EventStoreStub, subscribe: Callable[..., Subscription], rpc: str
) -> None:
    boundary = "sub_roundtrip"
    start = head(stub, boundary)  # the test runs once per RPC name on the same boundary
    for stream, events in _varied(f"history-{rpc}"):
        save(stub, boundary, stream, events)
    subscription = subscribe(boundary, rpc=rpc, position=pos(start, start))
    history_end = head(stub, boundary)
    subscription.wait_for_position(history_end)  # catch-up done: what follows comes live
    for stream, events in _varied(f"live-{rpc}"):
        save(stub, boundary, stream, events)
    end = head(stub, boundary)
    subscription.wait_for_position(end)

    expected = read_all(stub, boundary, after=pos(start, start))
    assert prepares(expected) == list(range(start + 1, end + 1))
    assert any(e.position.commit_position != e.position.prepare_position for e in expected)
    assert any(e.version > 0 for e in expected)
    assert_same_events(subscription.events, expected, f"{rpc}: history and live")
    live = [e for e in subscription.events if e.position.prepare_position > history_end]
    assert [(e.data, e.metadata) for e in live if e.event_type != "Last"] == PAYLOADS


def _random_tags(rng: random.Random, types: list[str]) -> list[tuple[str, str]]:
    tags = [(rng.choice("abc"), rng.choice("123")) for _ in range(rng.randint(0, 3))]
    if rng.random() < 0.15:  # a stored tag named like the pseudo-tag: it is just a tag
        tags.append((rng.choice(["event_type", "eventType"]), rng.choice(types)))
    rng.shuffle(tags)
    return tags


def _random_query(rng: random.Random, types: list[str], fence: tuple[str, str]) -> pb.Query:
    criteria: list[list[tuple[str, str]]] = []
    for _ in range(rng.randint(1, 3)):
        criterion = [(rng.choice("abc"), rng.choice("123")) for _ in range(rng.randint(1, 2))]
        if rng.random() < 0.5:
            criterion.append((rng.choice(["event_type", "eventType"]), rng.choice(types)))
        rng.shuffle(criterion)
        criteria.append(criterion)
    criteria.append([fence])  # so that every subscription of the test ends on the fence event
    rng.shuffle(criteria)
    return query(*criteria)


def test_query_semantics_match_get_events(
    stub: pb_grpc.EventStoreStub, subscribe: Callable[..., Subscription]
) -> None:
    boundary = "sub_queries"
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    types = ["Opened", "Paid", "Closed"]
    fence = ("fence", uuid.uuid4().hex)

    def write_random(count: int) -> None:
        written = 0
        while written < count:
            n = rng.randint(1, 5)
            events = [ev(rng.choice(types), _random_tags(rng, types)) for _ in range(n)]
            save(stub, boundary, f"s-{rng.randint(1, 4)}", events)
            written += n

    write_random(150)
    history = read_all(stub, boundary)
    cases: list[tuple[pb.Query | None, pb.Position | None]] = [(None, None)]
    for i in range(10):
        cursor = None
        if i % 3 == 1:
            cursor = rng.choice(history).position
        elif i % 3 == 2:
            cursor = pos(0, 0)
        cases.append((_random_query(rng, types, fence), cursor))
    subscriptions = [subscribe(boundary, q=q, position=cursor, rpc=RPCS[i % 2]) for i, (q, cursor) in enumerate(cases)]
    write_random(150)
    last = save(stub, boundary, "fence", [ev("Fence", [fence])]).log_position.prepare_position

    for (q, cursor), subscription in zip(cases, subscriptions, strict=True):
        subscription.wait_for_position(last)
        expected = read_all(stub, boundary, q, cursor)
        shown = json_format.MessageToDict(q) if q is not None else None
        what = f"seed {seed}, query {shown}, after {cursor}"
        assert expected and expected[-1].position.prepare_position == last
        assert_same_events(subscription.events, expected, what)


def test_position_cursor(stub: pb_grpc.EventStoreStub, subscribe: Callable[..., Subscription]) -> None:
    boundary = "sub_cursors"
    # Writes of 3, 4 and 3 events: positions 1-3 (commit 3), 4-7 (commit 7), 8-10 (commit 10).
    for stream, size in (("a", 3), ("b", 4), ("a", 3)):
        save(stub, boundary, stream, [ev() for _ in range(size)])
    saved = read_all(stub, boundary)
    assert [(e.position.commit_position, e.position.prepare_position) for e in saved][3:7] == [
        (7, 4), (7, 5), (7, 6), (7, 7)]

    cursors: dict[str, tuple[pb.Position | None, list[int]]] = {
        # name: (cursor, expected positions once 10 single-event writes and one 5-event write follow)
        "absent": (None, list(range(1, 26))),
        "zero": (pos(0, 0), list(range(1, 26))),
        "saved-event": (saved[4].position, list(range(6, 26))),  # (7, 5): the rest of its write on
        "end-of-write": (saved[6].position, list(range(8, 26))),  # (7, 7)
        "whole-write": (pos(7, 0), list(range(4, 26))),  # lexicographic: every event of the write ending at 7
        "head": (saved[-1].position, list(range(11, 26))),
        "beyond-head": (pos(15, 15), list(range(16, 26))),
    }
    subscriptions = {name: subscribe(boundary, position=cursor) for name, (cursor, _) in cursors.items()}
    for name, (_, expected) in cursors.items():
        if expected[0] <= 10:  # has history: let it arrive first, so that the rest comes live
            subscriptions[name].wait_for_position(10)
    for _ in range(10):  # 11..20, each its own write: commit == prepare
        save(stub, boundary, "c", [ev()])
    last = save(stub, boundary, "d", [ev() for _ in range(5)]).log_position.prepare_position  # 21..25
    assert last == 25

    for name, (cursor, expected) in cursors.items():
        subscriptions[name].wait_for_position(last)
        got = subscriptions[name].events
        assert prepares(got) == expected, name
        assert_same_events(got, read_all(stub, boundary, after=cursor), f"{name}: same as GetEvents")


# --- The brief's example through grpcurl ---------------------------------------------------------


PAYMENT_TYPES = ("PaymentInitiated", "PaymentAuthorized", "PaymentFailed")


def _payment_writes(stub: pb_grpc.EventStoreStub, label: str) -> list[str]:
    """Writes mixing the three payment types with others; the ids of the payment-typed ones, in order."""
    writes = [
        ("payment-1", ["PaymentInitiated", "OrderCreated", "PaymentAuthorized"]),
        ("payment-2", ["PaymentRefunded", "PaymentInitiated"]),
        ("order-1", ["OrderShipped"]),
        ("payment-2", ["PaymentFailed", "PaymentSettled", "PaymentInitiated", "PaymentAuthorized"]),
    ]
    ids = []
    for stream, types in writes:
        events = [ev(t, [("payment_id", stream), ("label", label)],
                     json.dumps({"amount": 100 + n, "currency": "EUR"}), json.dumps({"source": label}))
                  for n, t in enumerate(types)]
        save(stub, "payments", f"{stream}-{label}", events)
        ids += [e.event_id for e in events if e.event_type in PAYMENT_TYPES]
    return ids


def _grpcurl_events(stream: GrpcurlStream) -> list[pb.Event]:
    """grpcurl's JSON output, parsed back into Events (it prints the proto field names)."""
    return [json_format.ParseDict(o, pb.Event()) for o in stream.objects]


def _wait_grpcurl(stream: GrpcurlStream, count: int) -> list[pb.Event]:
    def arrived() -> list[pb.Event] | None:
        stream.check()
        events = _grpcurl_events(stream)
        return events if len(events) >= count else None

    result: list[pb.Event] = wait_for(arrived, DELIVERY_TIMEOUT, f"{count} events in grpcurl's output")
    return result


def _grpcurl_until_accepted(address: str, method: str, body: str) -> GrpcurlStream:
    """Start grpcurl until the server accepts the call (the subscriber name frees asynchronously
    after its previous holder went away): accepted once it prints an event of the history."""
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while True:
        stream = GrpcurlStream(address, method, body)

        def answered(stream: GrpcurlStream = stream) -> bool:
            return bool(stream.objects) or stream.process.poll() is not None

        try:
            wait_for(answered, DELIVERY_TIMEOUT, f"{method} through grpcurl to print an event or exit")
        except BaseException:
            stream.close()
            raise
        if stream.objects:
            return stream
        stderr = stream.process.stderr.read() if stream.process.stderr else ""
        stream.close()
        assert "AlreadyExists" in stderr, stderr
        assert time.monotonic() < deadline, f"the subscriber name stayed taken: {stderr}"


def test_brief_subscribe_example_through_grpcurl(sub_server: ServerThread, stub: pb_grpc.EventStoreStub) -> None:
    body = json.loads(BRIEF_SUBSCRIBE_TO_EVENTS)
    assert (body["boundary"], body["subscriber_name"]) == ("payments", "payment-processor")
    brief_query = json_format.ParseDict(body["query"], pb.Query())
    expected_ids = _payment_writes(stub, "before")

    first = GrpcurlStream(sub_server.address, "eventstore.EventStore/SubscribeToEvents", BRIEF_SUBSCRIBE_TO_EVENTS)
    try:
        _wait_grpcurl(first, len(expected_ids))
        # The same body under the older RPC name, while the first holds the name: refused at once.
        refused = grpcurl(sub_server.address, "eventstore.EventStore/CatchUpSubscribeToEvents",
                          data=BRIEF_SUBSCRIBE_TO_EVENTS, timeout=20)
        assert refused.returncode != 0, refused.stdout
        assert "AlreadyExists" in refused.stderr, refused.stderr
        assert "payment-processor" in refused.stderr, refused.stderr

        expected_ids += _payment_writes(stub, "after")
        got = _wait_grpcurl(first, len(expected_ids))
        assert [e.event_id for e in got] == expected_ids
        assert all(e.event_type in PAYMENT_TYPES for e in got)
        assert_same_events(got, read_all(stub, "payments", brief_query), "the brief's subscription")
    finally:
        first.close()

    second = _grpcurl_until_accepted(sub_server.address, "eventstore.EventStore/CatchUpSubscribeToEvents",
                                     BRIEF_SUBSCRIBE_TO_EVENTS)
    try:
        expected_ids += _payment_writes(stub, "again")
        got = _wait_grpcurl(second, len(expected_ids))
        assert [e.event_id for e in got] == expected_ids
        assert_same_events(got, read_all(stub, "payments", brief_query), "CatchUpSubscribeToEvents")
    finally:
        second.close()


# --- Errors and auth ----------------------------------------------------------------------------------


@pytest.mark.parametrize("rpc", RPCS)
@pytest.mark.parametrize(
    ("request_fields", "code", "named"),
    [
        ({"boundary": "nowhere"}, grpc.StatusCode.NOT_FOUND, "nowhere"),
        ({"boundary": ""}, grpc.StatusCode.INVALID_ARGUMENT, "boundary"),
        ({"boundary": "sub_errors", "query": query([("a", "1")], [("", "x")])}, grpc.StatusCode.INVALID_ARGUMENT,
         "query.criteria[1].tags[0].key"),
        ({"boundary": "sub_errors", "subscriber_name": "payment processor"}, grpc.StatusCode.INVALID_ARGUMENT,
         "subscriber_name"),
    ],
    ids=["unknown-boundary", "no-boundary", "empty-tag-key", "name-with-space"],
)
def test_invalid_subscriptions_are_refused_on_the_stream(
    sub_server: ServerThread, rpc: str, request_fields: dict[str, Any], code: grpc.StatusCode, named: str
) -> None:
    got, details = refusal(sub_server, pb.CatchUpSubscribeToEventStoreRequest(**request_fields), rpc)
    assert got == code, details
    assert named in details


@pytest.mark.parametrize("rpc", RPCS)
@pytest.mark.parametrize(
    "metadata",
    [[], auth_metadata("admin", "wrong"), auth_metadata("nobody-here", "changeit")],
    ids=["no-credentials", "wrong-password", "unknown-user"],
)
def test_subscribing_needs_credentials(
    sub_server: ServerThread, stub: pb_grpc.EventStoreStub, rpc: str, metadata: list[tuple[str, str]]
) -> None:
    if head(stub, "sub_errors") == 0:
        save(stub, "sub_errors", "s", [ev()])  # an accepted call would deliver it: the refusal is real
    code, details = refusal(sub_server, pb.CatchUpSubscribeToEventStoreRequest(boundary="sub_errors"), rpc, metadata)
    assert code == grpc.StatusCode.UNAUTHENTICATED, details


def test_a_user_without_write_roles_may_subscribe(
    stub: pb_grpc.EventStoreStub, subscribe: Callable[..., Subscription]
) -> None:
    boundary = "sub_reader"
    save(stub, boundary, "s", [ev(), ev()])
    with pytest.raises(grpc.RpcError) as raised:
        save(stub, boundary, "s", [ev()], auth=READER)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED  # the user really is read-only
    reader = subscribe(boundary, auth=READER, name="reader", q=query([("event_type", "Happened")]))
    reader.wait_for_count(2)
    last = save(stub, boundary, "s", [ev()]).log_position.prepare_position
    reader.wait_for_position(last)
    assert_same_events(reader.events, read_all(stub, boundary), "the reader's subscription")


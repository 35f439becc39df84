"""CatchUpSubscribeToStream on a real server: what it delivers, errors, auth and the README's example
(issue #15, point 1; docs/contract.md §5 applied to one stream). Written from the issue and the
proto's comments. What is checked:

- it delivers the stream's events with a version above ``afterVersion`` (-1 = from the start; an
  absent field is 0), history first and then live, in order, each once, carrying exactly what
  GetEvents returns for the same stream; never an event of another stream;
- ``afterVersion`` in the middle of the stream and beyond its current end (nothing until the
  stream's versions pass it);
- ``query`` filters the stream's events exactly as GetEvents' ``query`` filters a stream read;
- errors: INVALID_ARGUMENT naming the field, NOT_FOUND, UNAUTHENTICATED; a read-only user may
  subscribe; the README's grpcurl example, verbatim.

The handover, subscriber_name and a node without live feed are in
tests/test_stream_subscriptions_handover.py; fixtures and helpers in
tests/stream_subscriptions_support.py.
"""

from __future__ import annotations

import json
import random
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from tests import stream_subscriptions_support
from tests.stream_subscriptions_support import (
    DELIVERY_TIMEOUT,
    READER,
    StreamSubscription,
    assert_same_events,
    ev,
    query,
    read_stream,
    refusal,
    save,
    versions,
)
from tests.support import GrpcurlStream, ServerThread, auth_metadata, wait_for

# Fixtures of tests/stream_subscriptions_support.py, bound to names of this module so that pytest finds them here.
st_server = stream_subscriptions_support.st_server
stub = stream_subscriptions_support.stub
subscribe = stream_subscriptions_support.subscribe


pytestmark = pytest.mark.timeout(120)


README = Path(__file__).resolve().parent.parent / "README.md"


# --- What it delivers ------------------------------------------------------------------------------


def _interleaved(stub: pb_grpc.EventStoreStub, boundary: str, stream: str, label: str) -> None:
    """Writes to ``stream`` (several events per write: commit and prepare positions differ)
    between writes to other streams, one of them named like it with a suffix."""
    save(stub, boundary, f"{stream}-other", [ev("Other", [("stream", stream)])])
    save(stub, boundary, stream, [ev("Opened", [("label", label)]), ev("Paid", [("label", label), ("x", "1")])])
    save(stub, boundary, stream + "x", [ev("Opened", [("label", label)])])  # a prefix is not the stream
    save(stub, boundary, stream, [ev("Shipped", [("label", label)], data='{\n "pad" : [ 1 , 2 ] }\n')])
    save(stub, boundary, f"{stream}-other", [ev("Other"), ev("Other")])


def test_catch_up_then_live_only_the_stream(stub: pb_grpc.EventStoreStub,
                                            subscribe: Callable[..., StreamSubscription]) -> None:
    boundary, stream = "st_roundtrip", f"order-{uuid.uuid4().hex[:6]}"
    for n in range(3):
        _interleaved(stub, boundary, stream, f"history-{n}")
    subscription = subscribe(boundary, stream)
    history = read_stream(stub, boundary, stream)
    assert versions(history) == list(range(9))
    subscription.wait_for_version(8)  # the catch-up is done: what follows comes live
    for n in range(3):
        _interleaved(stub, boundary, stream, f"live-{n}")
    last = save(stub, boundary, stream, [ev("Last")])
    subscription.wait_for_version(last.new_stream_version)
    expected = read_stream(stub, boundary, stream)
    assert versions(expected) == list(range(19))
    assert any(e.position.commit_position != e.position.prepare_position for e in expected)
    assert_same_events(subscription.events, expected, "history and live")
    assert {e.stream_id for e in subscription.events} == {stream}


@pytest.mark.parametrize(
    ("after_version", "expected_first"),
    [(-1, 0), (None, 1), (0, 1), (4, 5), (7, 8), (9, 10), (12, 13)],
    ids=["from-start", "absent-is-0", "0", "middle", "last-of-history", "just-beyond", "far-beyond"],
)
def test_after_version(stub: pb_grpc.EventStoreStub, subscribe: Callable[..., StreamSubscription],
                       after_version: int | None, expected_first: int) -> None:
    """History of versions 0-7; then versions 8-15 are written live. Beyond the stream's end,
    nothing comes until its versions pass ``afterVersion``."""
    boundary, stream = "st_after", f"s-{uuid.uuid4().hex[:6]}"
    for _ in range(4):
        save(stub, boundary, stream, [ev(), ev()])
        save(stub, boundary, f"{stream}-noise", [ev()])
    subscription = subscribe(boundary, stream, after_version)
    if expected_first <= 7:
        subscription.wait_for_version(7)
    for _ in range(8):
        save(stub, boundary, stream, [ev()])
        save(stub, boundary, f"{stream}-noise", [ev()])
    subscription.wait_for_version(15)
    assert versions(subscription.events) == list(range(expected_first, 16))
    assert_same_events(subscription.events, read_stream(stub, boundary, stream, from_version=expected_first),
                       f"after {after_version}")


def test_far_beyond_the_end_delivers_nothing_until_passed(
    stub: pb_grpc.EventStoreStub, subscribe: Callable[..., StreamSubscription]
) -> None:
    """A subscriber far beyond, beside one from the start: once the other has seen the whole
    stream, the far one has delivered nothing; it starts at the first version above its own."""
    boundary, stream = "st_after", f"beyond-{uuid.uuid4().hex[:6]}"
    save(stub, boundary, stream, [ev() for _ in range(3)])
    far = subscribe(boundary, stream, 1_000)
    farthest = subscribe(boundary, stream, 2**63 - 1)  # the largest int64: valid, never reached
    witness = subscribe(boundary, stream, -1)
    save(stub, boundary, stream, [ev() for _ in range(30)])
    witness.wait_for_version(32)
    assert far.events == []  # (and the exact list below shows nothing below 1,001 came later either)
    far.check()
    save(stub, boundary, stream, [ev() for _ in range(1_001 - 32)])  # versions 33..1,001
    far.wait_for_version(1_001)
    assert versions(far.events) == [1_001]
    farthest.check()
    assert farthest.events == []


def _random_query(rng: random.Random, fence: tuple[str, str]) -> pb.Query:
    criteria: list[list[tuple[str, str]]] = []
    for _ in range(rng.randint(1, 3)):
        criterion = [(rng.choice("ab"), rng.choice("12")) for _ in range(rng.randint(1, 2))]
        if rng.random() < 0.5:
            criterion.append((rng.choice(["event_type", "eventType"]), rng.choice(["Opened", "Paid"])))
        criteria.append(criterion)
    criteria.append([fence])
    rng.shuffle(criteria)
    return query(*criteria)


def test_query_filters_the_stream_like_get_events(
    stub: pb_grpc.EventStoreStub, subscribe: Callable[..., StreamSubscription]
) -> None:
    boundary, stream = "st_queries", f"q-{uuid.uuid4().hex[:6]}"
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    fence = ("fence", uuid.uuid4().hex)

    def write_random(count: int) -> None:
        for _ in range(count):
            tags = [(rng.choice("ab"), rng.choice("12")) for _ in range(rng.randint(0, 3))]
            target = stream if rng.random() < 0.6 else f"{stream}-{rng.randint(1, 2)}"
            save(stub, boundary, target, [ev(rng.choice(["Opened", "Paid", "Closed"]), tags)])

    write_random(60)
    cases: list[tuple[pb.Query | None, int]] = [(query([("event_type", "Paid")], [fence]), -1),
                                                (query([("a", "1"), ("b", "2")], [fence]), 3)]
    cases += [(_random_query(rng, fence), rng.choice([-1, 5, 20])) for _ in range(6)]
    subscriptions = [subscribe(boundary, stream, after, q=q) for q, after in cases]
    write_random(60)
    fence_event = ev("Fence", [fence])
    save(stub, boundary, stream, [fence_event])
    for (q, after), subscription in zip(cases, subscriptions, strict=True):
        subscription.wait_for_event(fence_event.event_id)
        expected = read_stream(stub, boundary, stream, q, from_version=after + 1)
        shown = json_format.MessageToDict(q) if q is not None else None
        assert_same_events(subscription.events, expected, f"seed {seed}, query {shown}, after {after}")


# --- Errors, auth, the README's example ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_fields", "code", "named"),
    [
        ({"boundary": "nowhere", "stream": "s"}, grpc.StatusCode.NOT_FOUND, "nowhere"),
        ({"boundary": "", "stream": "s"}, grpc.StatusCode.INVALID_ARGUMENT, "boundary"),
        ({"boundary": "st_errors"}, grpc.StatusCode.INVALID_ARGUMENT, "stream"),
        ({"boundary": "st_errors", "stream": "s" * 513}, grpc.StatusCode.INVALID_ARGUMENT, "stream"),
        ({"boundary": "st_errors", "stream": "a\x00b"}, grpc.StatusCode.INVALID_ARGUMENT, "stream"),
        ({"boundary": "st_errors", "stream": "s", "afterVersion": -2}, grpc.StatusCode.INVALID_ARGUMENT,
         "afterVersion"),
        ({"boundary": "st_errors", "stream": "s", "afterVersion": -(2**63)}, grpc.StatusCode.INVALID_ARGUMENT,
         "afterVersion"),
        ({"boundary": "st_errors", "stream": "s", "query": query([("a", "1")], [("", "x")])},
         grpc.StatusCode.INVALID_ARGUMENT, "query.criteria[1].tags[0].key"),
        ({"boundary": "st_errors", "stream": "s", "subscriber_name": "has space"}, grpc.StatusCode.INVALID_ARGUMENT,
         "subscriber_name"),
    ],
    ids=["unknown-boundary", "no-boundary", "no-stream", "long-stream", "nul-in-stream", "after-minus-2",
         "after-min-int64", "empty-tag-key", "name-with-space"],
)
def test_invalid_requests_are_refused(st_server: ServerThread, request_fields: dict[str, Any],
                                      code: grpc.StatusCode, named: str) -> None:
    got, details = refusal(st_server, pb.CatchUpSubscribeToStreamRequest(**request_fields))
    assert got == code, details
    assert named in details
    assert len(details) < 1024


@pytest.mark.parametrize(
    "metadata",
    [[], auth_metadata("admin", "wrong"), auth_metadata("nobody-here", "changeit")],
    ids=["no-credentials", "wrong-password", "unknown-user"],
)
def test_subscribing_needs_credentials(st_server: ServerThread, stub: pb_grpc.EventStoreStub,
                                       metadata: list[tuple[str, str]]) -> None:
    save(stub, "st_errors", "s", [ev()])  # an accepted call would deliver it: the refusal is real
    code, details = refusal(st_server, pb.CatchUpSubscribeToStreamRequest(boundary="st_errors", stream="s",
                                                                          afterVersion=-1), metadata=metadata)
    assert code == grpc.StatusCode.UNAUTHENTICATED, details


def test_a_user_without_write_roles_may_subscribe(stub: pb_grpc.EventStoreStub,
                                                  subscribe: Callable[..., StreamSubscription]) -> None:
    save(stub, "st_reader", "s", [ev(), ev()])
    reader = subscribe("st_reader", "s", auth=READER, name="reader")
    reader.wait_for_version(1)
    last = save(stub, "st_reader", "s", [ev()]).new_stream_version
    reader.wait_for_version(last)
    assert_same_events(reader.events, read_stream(stub, "st_reader", "s"), "the reader's subscription")


def readme_example() -> str:
    """The JSON body of the README's CatchUpSubscribeToStream grpcurl example."""
    text = README.read_text()
    section = text[text.index("### CatchUpSubscribeToStream"):]
    match = re.search(r"eventstore\.EventStore/CatchUpSubscribeToStream <<'JSON'\n(.*?)\nJSON\n", section, re.DOTALL)
    assert match is not None, "the README's CatchUpSubscribeToStream section has no grpcurl example"
    return match.group(1)


def test_the_readme_example_through_grpcurl(st_server: ServerThread, stub: pb_grpc.EventStoreStub) -> None:
    body = readme_example()
    fields = json.loads(body)
    boundary, stream = fields["boundary"], fields["stream"]
    q = json_format.ParseDict(fields.get("query", {}), pb.Query())
    events = [ev(t, [("customer", "c-1")]) for t in ("OrderCreated", "PaymentProcessed", "OrderShipped", "Noted")]
    for event in events:
        save(stub, boundary, stream, [event])
        save(stub, boundary, f"{stream}-other", [ev(event.event_type)])
    expected = read_stream(stub, boundary, stream, q, from_version=int(fields.get("afterVersion", 0)) + 1)
    assert expected, "the example's subscription delivers something of this history"
    process = GrpcurlStream(st_server.address, "eventstore.EventStore/CatchUpSubscribeToStream", body)
    try:
        def arrived() -> list[pb.Event] | None:
            process.check()
            got = [json_format.ParseDict(o, pb.Event()) for o in process.objects]
            return got if len(got) >= len(expected) else None

        got = wait_for(arrived, DELIVERY_TIMEOUT, f"{len(expected)} events in grpcurl's output")
        assert_same_events(got, expected, "the README's example")
    finally:
        process.close()


"""Upstream Orisun's clients against Orisun, through stubs built from their own protos (issue #15).

The protos are fixtures (tests/compat/protos/, see its README); tests/compat/stubs.py compiles
them at test time into private descriptor pools, so every request here is encoded exactly as
upstream's generated clients encode it, and every answer decoded as they decode it:

- OrisunLabs/orisun-node-client at df80552 (``node``): SaveEvents, GetEvents,
  CatchUpSubscribeToEvents, CatchUpSubscribeToStream; int64 positions, uint64 versions, int64
  expected versions, no tags on EventToSave/Event, ``afterPosition``;
- oexza/Orisun's Java client at 4c0ec17 (``java``): SaveEvents, GetEvents,
  CatchUpSubscribeToEvents, PublishToPubSub, SubscribeToPubSub with ``bytes`` data, no
  new_stream_version; and its conflict parsing (``Utils.extractVersionNumbers``);
- the node client's HEAD ``orisun.Admin`` (upstream-head/admin.proto): every RPC, by the rules of
  Orisun's proto/admin.proto (ADMIN role, status codes, never a success=false hiding an error
  except ValidateCredentials). Its ``orisun.EventStore`` (position-based appends, no streams) is
  not served: UNIMPLEMENTED.

The answers are compared with what Orisun's own proto reads for the same events.
"""

from __future__ import annotations

import functools
import json
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from orisun.runtime.postgres import EmbeddedPostgres
from tests.compat import stubs
from tests.support import ServerThread, StreamReader, auth_metadata, running_server, wait_for

pytestmark = pytest.mark.timeout(120)

NODE_B, JAVA_B, ADMIN_B = "compat_node", "compat_java", "compat_admin"
BOUNDARIES = {"orisun_admin": "orisun_admin", NODE_B: NODE_B, JAVA_B: "compat_java_events", ADMIN_B: ADMIN_B}
AUTH = auth_metadata()
READER = ("compat-reader", "reader-password-1")  # no roles: may read, not write, not administer
DELIVERY_TIMEOUT = 30.0
# Upstream's Java client, Utils.extractVersionNumbers: java.util.regex, case-sensitive, find().
JAVA_CONFLICT = re.compile(r"Expected\s+(\d+),\s+Actual\s+(\d+)")

# Every RPC of Orisun's eventstore.EventStore that each upstream proto also has, and the tests here
# that cover it (test_every_shared_rpc_is_covered keeps this list honest).
COVERED = {
    "node": {"SaveEvents", "GetEvents", "CatchUpSubscribeToEvents", "CatchUpSubscribeToStream"},
    "java": {"SaveEvents", "GetEvents", "CatchUpSubscribeToEvents", "PublishToPubSub", "SubscribeToPubSub"},
}


@functools.cache
def node() -> stubs.Protos:
    return stubs.node_client()


@functools.cache
def java() -> stubs.Protos:
    return stubs.java_client()


@functools.cache
def head() -> stubs.Protos:
    return stubs.upstream_head()


def enum(protos: stubs.Protos, full_name: str, value: str) -> int:
    number: int = protos.pool.FindEnumTypeByName(full_name).values_by_name[value].number
    return number


def msg(protos: stubs.Protos, type_name: str, /, **fields: Any) -> Any:
    """A message of ``protos`` by short name (package eventstore, or orisun for upstream's HEAD)."""
    package = "orisun" if protos.folder == "upstream-head" else "eventstore"
    return protos.message(f"{package}.{type_name}")(**fields)


# --- Fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(postgres: EmbeddedPostgres) -> Iterator[ServerThread]:
    with running_server(postgres.conninfo, "test_compat", boundaries=BOUNDARIES) as started:
        users = started.app.users
        assert users is not None
        started.call(users.create("Compat reader", *READER, []))
        # Wrong credentials on purpose, all from 127.0.0.1: not a brute force to slow down.
        users.throttle.threshold = 1_000_000
        yield started


@pytest.fixture(scope="module")
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    with server.channel() as ch:
        yield ch


@pytest.fixture(scope="module")
def ours(channel: grpc.Channel) -> pb_grpc.EventStoreStub:
    return pb_grpc.EventStoreStub(channel)


@pytest.fixture(scope="module")
def node_stub(channel: grpc.Channel) -> stubs.Stub:
    return node().stub(channel, "eventstore.EventStore")


@pytest.fixture(scope="module")
def java_stub(channel: grpc.Channel) -> stubs.Stub:
    return java().stub(channel, "eventstore.EventStore")


@pytest.fixture(scope="module")
def admin_stub(channel: grpc.Channel) -> stubs.Stub:
    return head().stub(channel, "orisun.Admin")


class Reader(StreamReader[Any]):
    """A server-streaming call of an upstream stub on its own channel, read by a thread."""

    def __init__(self, server: ServerThread, protos: stubs.Protos, service: str, rpc: str, request: Message,
                 auth: list[tuple[str, str]] = AUTH) -> None:
        channel = grpc.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)])
        call = getattr(protos.stub(channel, service), rpc)(request, metadata=auth, timeout=110)
        super().__init__(call, channel, f"{protos.folder} {rpc}")

    def wait_for_count(self, count: int) -> list[Any]:
        self.wait_until(lambda items: len(items) >= count, DELIVERY_TIMEOUT, f"{count} items (has {len(self.items)})")
        return self.items


@pytest.fixture
def reader(server: ServerThread) -> Iterator[Any]:
    started: list[Reader] = []

    def start(protos: stubs.Protos, rpc: str, request: Message, service: str = "eventstore.EventStore") -> Reader:
        r = Reader(server, protos, service, rpc, request)
        started.append(r)
        return r

    yield start
    for r in started:
        r.close()


def refused(call: Any, *args: Any, **kwargs: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        call(*args, **{"metadata": AUTH, "timeout": 30, **kwargs})
    return raised.value.code(), raised.value.details() or ""


def new_id() -> str:
    return str(uuid.uuid4())


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def our_stream(ours: pb_grpc.EventStoreStub, boundary: str, stream: str) -> list[pb.Event]:
    request = pb.GetEventsRequest(boundary=boundary, stream=pb.GetStreamQuery(name=stream), count=10_000)
    return list(ours.GetEvents(request, metadata=AUTH, timeout=30).events)


def same_event(theirs: Any, mine: pb.Event) -> None:
    """An event as an upstream client decoded it equals Orisun's own reading, field by field
    (upstream's Event has no tags: those bytes are skipped as an unknown field)."""
    assert (theirs.event_id, theirs.event_type, theirs.data, theirs.metadata, theirs.stream_id, theirs.version) == (
        mine.event_id, mine.event_type, mine.data, mine.metadata, mine.stream_id, mine.version)
    assert (theirs.position.commit_position, theirs.position.prepare_position) == (
        mine.position.commit_position, mine.position.prepare_position)
    assert (theirs.date_created.seconds, theirs.date_created.nanos) == (
        mine.date_created.seconds, mine.date_created.nanos)


def same_events(theirs: Sequence[Any], mine: Sequence[pb.Event]) -> None:
    assert [e.event_id for e in theirs] == [e.event_id for e in mine]
    for t, m in zip(theirs, mine, strict=True):
        same_event(t, m)


def test_every_shared_rpc_is_covered() -> None:
    """The RPCs each upstream proto shares with Orisun's are the ones this module tests."""
    mine = {m.name for m in pb.DESCRIPTOR.services_by_name["EventStore"].methods}
    for label, protos in (("node", node()), ("java", java())):
        theirs = {m.name for m in protos.service("eventstore.EventStore").methods}
        assert theirs <= mine, f"{label}: RPCs Orisun lacks: {theirs - mine}"
        assert theirs & mine == COVERED[label], label


# --- The Node client (df80552) ---------------------------------------------------------------------


def node_save(stub: stubs.Stub, stream: str, events: Sequence[Any], expected: int,
              subset: Any = None, boundary: str = NODE_B, auth: list[tuple[str, str]] = AUTH) -> Any:
    request = msg(node(), "SaveEventsRequest", boundary=boundary, events=events,
                  stream=msg(node(), "SaveStreamQuery", name=stream, expected_version=expected, subsetQuery=subset))
    return stub.SaveEvents(request, metadata=auth, timeout=30)


def node_event(event_type: str = "Happened", data: str | None = None) -> Any:
    return msg(node(), "EventToSave", event_id=new_id(), event_type=event_type,
               data=data or json.dumps({"n": uuid.uuid4().hex[:6]}), metadata='{"by": "node"}')


def test_node_save_with_every_expected_version(node_stub: stubs.Stub, ours: pb_grpc.EventStoreStub) -> None:
    stream = unique("node-versions")
    first = node_save(node_stub, stream, [node_event(), node_event()], -1)  # must not exist yet
    assert first.new_stream_version == 1
    second = node_save(node_stub, stream, [node_event()], 1)  # exactly version 1
    assert second.new_stream_version == 2
    third = node_save(node_stub, stream, [node_event()], -2)  # any
    assert third.new_stream_version == 3
    stored = our_stream(ours, NODE_B, stream)
    assert [e.version for e in stored] == [0, 1, 2, 3]
    assert (third.log_position.commit_position, third.log_position.prepare_position) == (
        stored[-1].position.commit_position, stored[-1].position.prepare_position)
    for expected, actual in ((-1, 3), (1, 3), (7, 3)):
        code, details = refused(node_stub.SaveEvents, msg(node(), "SaveEventsRequest", boundary=NODE_B,
                                events=[node_event()], stream=msg(node(), "SaveStreamQuery", name=stream,
                                                                  expected_version=expected)))
        assert code == grpc.StatusCode.ALREADY_EXISTS, details
        assert f"Expected {expected}, Actual {actual}" in details
    assert len(our_stream(ours, NODE_B, stream)) == 4, "a refused write stores nothing"


def test_node_idempotent_retry_returns_the_original_result(node_stub: stubs.Stub) -> None:
    stream = unique("node-retry")
    events = [node_event(), node_event()]
    original = node_save(node_stub, stream, events, -1)
    retried = node_save(node_stub, stream, events, -1)  # the answer was lost: the client sends it again
    assert retried == original


def test_node_subset_query(node_stub: stubs.Stub, ours: pb_grpc.EventStoreStub) -> None:
    """Node's EventToSave has no tags: its subsetQuery can narrow by the event_type pseudo-tag."""
    stream = unique("node-subset")
    node_save(node_stub, stream, [node_event("Opened"), node_event("Paid"), node_event("Noted")], -1)
    paid = msg(node(), "Query", criteria=[msg(node(), "Criterion", tags=[msg(node(), "Tag", key="event_type",
                                                                            value="Paid")])])
    code, details = refused(node_stub.SaveEvents, msg(node(), "SaveEventsRequest", boundary=NODE_B,
                            events=[node_event("Paid")], stream=msg(node(), "SaveStreamQuery", name=stream,
                                                                    expected_version=2, subsetQuery=paid)))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "Expected 2, Actual 1" in details, details
    result = node_save(node_stub, stream, [node_event("Paid")], 1, subset=paid)
    assert result.new_stream_version == 3
    assert [e.event_type for e in our_stream(ours, NODE_B, stream)] == ["Opened", "Paid", "Noted", "Paid"]


def _tagged_history(ours: pb_grpc.EventStoreStub, boundary: str, stream: str, tag: str) -> list[pb.Event]:
    """Events saved with tags through Orisun's proto (upstream's old EventToSave has none): six
    more with the tag ``compat: tag``; every event with that tag, as Orisun reads them."""
    for n in range(6):
        request = pb.SaveEventsRequest(
            boundary=boundary, stream=pb.SaveStreamQuery(name=stream if n % 2 else f"{stream}-other",
                                                         expected_version=-2),
            events=[pb.EventToSave(event_id=new_id(), event_type=f"T{n % 3}", data=json.dumps({"n": n}),
                                   tags=[pb.Tag(key="compat", value=tag), pb.Tag(key="n", value=str(n))])])
        ours.SaveEvents(request, metadata=AUTH, timeout=30)
    query = pb.Query(criteria=[pb.Criterion(tags=[pb.Tag(key="compat", value=tag)])])
    return list(ours.GetEvents(pb.GetEventsRequest(boundary=boundary, query=query), metadata=AUTH).events)


def test_node_get_events_by_stream_tags_cursor_and_direction(node_stub: stubs.Stub,
                                                              ours: pb_grpc.EventStoreStub) -> None:
    tag = uuid.uuid4().hex
    stream = unique("node-read")
    tagged = _tagged_history(ours, NODE_B, stream, tag)
    assert len(tagged) == 6
    n = functools.partial(msg, node())
    by_tag = n("Query", criteria=[n("Criterion", tags=[n("Tag", key="compat", value=tag)])])

    got = node_stub.GetEvents(n("GetEventsRequest", boundary=NODE_B, query=by_tag, count=100), metadata=AUTH).events
    same_events(got, tagged)
    got = node_stub.GetEvents(n("GetEventsRequest", boundary=NODE_B, stream=n("GetStreamQuery", name=stream,
                                                                              from_version=1)), metadata=AUTH).events
    same_events(got, [e for e in tagged if e.stream_id == stream][1:])
    cursor = n("Position", commit_position=tagged[2].position.commit_position,
               prepare_position=tagged[2].position.prepare_position)
    got = node_stub.GetEvents(n("GetEventsRequest", boundary=NODE_B, query=by_tag, from_position=cursor, count=2),
                              metadata=AUTH).events
    same_events(got, tagged[3:5])
    got = node_stub.GetEvents(n("GetEventsRequest", boundary=NODE_B, query=by_tag, from_position=cursor,
                                direction=enum(node(), "eventstore.Direction", "DESC")), metadata=AUTH).events
    same_events(got, tagged[:2][::-1])
    by_type = n("Query", criteria=[n("Criterion", tags=[n("Tag", key="compat", value=tag),
                                                        n("Tag", key="eventType", value="T1")])])
    got = node_stub.GetEvents(n("GetEventsRequest", boundary=NODE_B, query=by_type), metadata=AUTH).events
    same_events(got, [e for e in tagged if e.event_type == "T1"])


def test_node_catch_up_subscribe_to_events(node_stub: stubs.Stub, ours: pb_grpc.EventStoreStub,
                                           reader: Any) -> None:
    tag = uuid.uuid4().hex
    history = _tagged_history(ours, NODE_B, unique("node-sub"), tag)
    n = functools.partial(msg, node())
    by_tag = n("Query", criteria=[n("Criterion", tags=[n("Tag", key="compat", value=tag)])])
    after = n("Position", commit_position=history[1].position.commit_position,
              prepare_position=history[1].position.prepare_position)
    subscription = reader(node(), "CatchUpSubscribeToEvents", n("CatchUpSubscribeToEventStoreRequest",
                          boundary=NODE_B, query=by_tag, afterPosition=after, subscriber_name=unique("node")))
    subscription.wait_for_count(4)  # the catch-up
    everything = _tagged_history(ours, NODE_B, unique("node-sub"), tag)
    assert everything[:6] == history
    same_events(subscription.wait_for_count(10), everything[2:])


def test_node_catch_up_subscribe_to_stream(node_stub: stubs.Stub, ours: pb_grpc.EventStoreStub,
                                           reader: Any) -> None:
    """Issue #15, point 1: the Node client's subscription to one stream (its basic-usage example)."""
    stream = unique("node-stream")
    n = functools.partial(msg, node())
    node_save(node_stub, stream, [node_event("Opened"), node_event("Paid")], -1)
    node_save(node_stub, f"{stream}-other", [node_event("Opened")], -1)
    everything = reader(node(), "CatchUpSubscribeToStream", n("CatchUpSubscribeToStreamRequest", boundary=NODE_B,
                                                              stream=stream, afterVersion=-1))
    after_first = reader(node(), "CatchUpSubscribeToStream", n("CatchUpSubscribeToStreamRequest", boundary=NODE_B,
                                                               stream=stream, afterVersion=0,
                                                               subscriber_name=unique("node-stream")))
    paid = n("Query", criteria=[n("Criterion", tags=[n("Tag", key="event_type", value="Paid")])])
    only_paid = reader(node(), "CatchUpSubscribeToStream", n("CatchUpSubscribeToStreamRequest", boundary=NODE_B,
                                                             stream=stream, afterVersion=-1, query=paid))
    everything.wait_for_count(2)
    node_save(node_stub, stream, [node_event("Paid"), node_event("Shipped")], 1)
    node_save(node_stub, f"{stream}-other", [node_event("Paid")], 0)
    stored = our_stream(ours, NODE_B, stream)
    same_events(everything.wait_for_count(4), stored)
    same_events(after_first.wait_for_count(3), stored[1:])
    same_events(only_paid.wait_for_count(2), [e for e in stored if e.event_type == "Paid"])
    # Refusals come as the node client expects them: a status on the stream.
    code, details = refused(lambda *a, **k: next(iter(node_stub.CatchUpSubscribeToStream(*a, **k))),
                            n("CatchUpSubscribeToStreamRequest", boundary="no_such_boundary", stream=stream))
    assert code == grpc.StatusCode.NOT_FOUND, details


def test_node_positions_and_versions_decode_the_same(node_stub: stubs.Stub, ours: pb_grpc.EventStoreStub) -> None:
    """int64 positions and uint64 versions (node) against uint64 positions and uint32 versions
    (Orisun): the same varints on the wire."""
    stream = unique("node-wire")
    result = node_save(node_stub, stream, [node_event() for _ in range(3)], -1)
    mine = our_stream(ours, NODE_B, stream)
    theirs = node_stub.GetEvents(msg(node(), "GetEventsRequest", boundary=NODE_B,
                                     stream=msg(node(), "GetStreamQuery", name=stream)), metadata=AUTH).events
    same_events(theirs, mine)
    assert result.log_position.prepare_position == mine[-1].position.prepare_position > 0


# --- The Java client (4c0ec17) ------------------------------------------------------------------------


def java_event(event_type: str = "Happened") -> Any:
    return msg(java(), "EventToSave", event_id=new_id(), event_type=event_type,
               data=json.dumps({"n": uuid.uuid4().hex[:6]}), metadata='{"by": "java"}')


def java_save_request(stream: str, events: Sequence[Any], expected: int, subset: Any = None) -> Any:
    return msg(java(), "SaveEventsRequest", boundary=JAVA_B, events=events,
               stream=msg(java(), "SaveStreamQuery", name=stream, expected_version=expected, subsetQuery=subset))


def java_versions(details: str) -> tuple[int, int]:
    """What upstream's Java client makes of a conflict (Utils.extractVersionNumbers), or an
    IllegalArgumentException as AssertionError."""
    match = JAVA_CONFLICT.search(details)
    assert match is not None, f"the Java client cannot read this conflict: {details!r}"
    return int(match[1]), int(match[2])


def test_java_save_with_every_expected_version_and_retry(java_stub: stubs.Stub, ours: pb_grpc.EventStoreStub) -> None:
    stream = unique("java-versions")
    events = [java_event(), java_event()]
    first = java_stub.SaveEvents(java_save_request(stream, events, -1), metadata=AUTH, timeout=30)
    java_stub.SaveEvents(java_save_request(stream, [java_event()], 1), metadata=AUTH, timeout=30)
    last = java_stub.SaveEvents(java_save_request(stream, [java_event()], -2), metadata=AUTH, timeout=30)
    stored = our_stream(ours, JAVA_B, stream)
    assert [e.version for e in stored] == [0, 1, 2, 3]
    assert last.log_position.prepare_position == stored[-1].position.prepare_position
    retried = java_stub.SaveEvents(java_save_request(stream, events, -1), metadata=AUTH, timeout=30)
    assert retried == first  # an idempotent retry, though the stream has moved on


def test_java_client_reads_the_conflicts_versions(java_stub: stubs.Stub) -> None:
    """Issue #15, point 2: the Java client's regex finds the right expected and actual versions."""
    stream = unique("java-conflict")
    java_stub.SaveEvents(java_save_request(stream, [java_event("A"), java_event("B"), java_event("A")], -1),
                         metadata=AUTH, timeout=30)
    for expected, subset, actual in ((0, None, 2), (5, None, 2), (0, "B", 1), (7, "A", 2)):
        query = None if subset is None else msg(java(), "Query", criteria=[msg(java(), "Criterion", tags=[
            msg(java(), "Tag", key="event_type", value=subset)])])
        code, details = refused(java_stub.SaveEvents, java_save_request(stream, [java_event()], expected, query))
        assert code == grpc.StatusCode.ALREADY_EXISTS, details
        assert java_versions(details) == (expected, actual)
        assert details.startswith("OptimisticConcurrencyException:StreamVersionConflict: ")


def test_java_get_events_by_stream_subset_tags_cursor_and_direction(java_stub: stubs.Stub,
                                                                    ours: pb_grpc.EventStoreStub) -> None:
    tag = uuid.uuid4().hex
    stream = unique("java-read")
    tagged = _tagged_history(ours, JAVA_B, stream, tag)
    j = functools.partial(msg, java())
    by_tag = j("Query", criteria=[j("Criterion", tags=[j("Tag", key="compat", value=tag)])])
    got = java_stub.GetEvents(j("GetEventsRequest", boundary=JAVA_B, query=by_tag), metadata=AUTH).events
    same_events(got, tagged)
    t1 = j("Query", criteria=[j("Criterion", tags=[j("Tag", key="event_type", value="T1")])])
    got = java_stub.GetEvents(j("GetEventsRequest", boundary=JAVA_B, stream=j("GetStreamQuery", name=stream,
                                                                              subsetQuery=t1)), metadata=AUTH).events
    same_events(got, [e for e in tagged if e.stream_id == stream and e.event_type == "T1"])
    cursor = j("Position", commit_position=tagged[3].position.commit_position,
               prepare_position=tagged[3].position.prepare_position)
    got = java_stub.GetEvents(j("GetEventsRequest", boundary=JAVA_B, query=by_tag, from_position=cursor,
                                direction=enum(java(), "eventstore.Direction", "DESC"), count=2), metadata=AUTH).events
    same_events(got, tagged[1:3][::-1])


def test_java_catch_up_subscribe_to_events(java_stub: stubs.Stub, ours: pb_grpc.EventStoreStub, reader: Any) -> None:
    tag = uuid.uuid4().hex
    _tagged_history(ours, JAVA_B, unique("java-sub"), tag)
    j = functools.partial(msg, java())
    by_tag = j("Query", criteria=[j("Criterion", tags=[j("Tag", key="compat", value=tag)])])
    subscription = reader(java(), "CatchUpSubscribeToEvents", j("CatchUpSubscribeToEventStoreRequest",
                          boundary=JAVA_B, query=by_tag, subscriber_name=unique("java")))
    subscription.wait_for_count(6)
    everything = _tagged_history(ours, JAVA_B, unique("java-sub"), tag)
    same_events(subscription.wait_for_count(12), everything)


def java_publish(stub: stubs.Stub, subject: str, data: bytes, message_id: str = "") -> None:
    stub.PublishToPubSub(msg(java(), "PublishRequest", id=message_id, subject=subject, data=data),
                         metadata=AUTH, timeout=30)


def establish(stub: stubs.Stub, subject: str, subscribers: Sequence[Reader]) -> set[str]:
    """Publish probes until every subscriber has received one (a new consumer gets only what is
    published after it subscribed); the probes' ids."""
    probes: set[str] = set()

    def received() -> bool:
        java_publish(stub, subject, b"probe", probe := new_id())
        probes.add(probe)
        return wait_for_any(lambda: all({r.message.id for r in s.items} & probes for s in subscribers), 0.3)

    wait_for(received, DELIVERY_TIMEOUT, "the pub/sub subscriptions to be established")
    return probes


def wait_for_any(condition: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return bool(condition())


def test_java_pubsub_with_bytes_data_fan_out_and_competing_consumers(
    java_stub: stubs.Stub, ours: pb_grpc.EventStoreStub, reader: Any
) -> None:
    """Java's ``bytes data`` is the same on the wire as Orisun's ``string data`` for UTF-8."""
    subject = f"compat.{uuid.uuid4().hex[:8]}"
    j = functools.partial(msg, java())
    fan_a = reader(java(), "SubscribeToPubSub", j("SubscribeRequest", subject=subject, consumer_name=unique("a")))
    fan_b = reader(java(), "SubscribeToPubSub", j("SubscribeRequest", subject=subject, consumer_name=unique("b")))
    shared = unique("workers")
    workers = [reader(java(), "SubscribeToPubSub", j("SubscribeRequest", subject=subject, consumer_name=shared))
               for _ in range(2)]
    probes = establish(java_stub, subject, [fan_a, fan_b, workers[0]])
    payloads = {new_id(): json.dumps({"n": n, "text": "Zoë 日本 🎉"}).encode() for n in range(20)}
    for message_id, data in payloads.items():
        java_publish(java_stub, subject, data, message_id)
    ours.PublishToPubSub(pb.PublishRequest(id=(mine := new_id()), subject=subject, data='{"from": "orisun"}',
                                           metadata='{"m": 1}'), metadata=AUTH, timeout=30)
    payloads[mine] = b'{"from": "orisun"}'

    def delivered(subscribers: Sequence[Reader]) -> dict[str, bytes]:
        return {r.message.id: r.message.data for s in subscribers for r in s.items if r.message.id not in probes}

    for subscribers in ([fan_a], [fan_b], workers):
        wait_for(lambda s=subscribers: set(payloads) <= set(delivered(s)), DELIVERY_TIMEOUT, "every message")
        assert delivered(subscribers) == payloads
        assert all(r.message.subject == subject for s in subscribers for r in s.items)
    ids = [r.message.id for w in workers for r in w.items if r.message.id not in probes]
    assert sorted(ids) == sorted(payloads), "competing consumers: each message to one of them"


def test_java_pubsub_data_that_is_not_utf8_is_refused(java_stub: stubs.Stub) -> None:
    """Orisun's data is text: bytes that are not UTF-8 cannot be decoded as its PublishRequest."""
    code, details = refused(java_stub.PublishToPubSub, msg(java(), "PublishRequest", subject="compat.binary",
                                                           data=b"\xff\xfe\x00"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details


# --- Upstream's later orisun.EventStore ---------------------------------------------------------------


def test_upstreams_later_event_store_is_not_served(channel: grpc.Channel) -> None:
    """upstream-head's ``orisun.EventStore`` (position-based appends without streams, criteria
    matched against the data JSON) is another API: its calls answer UNIMPLEMENTED."""
    stub = head().stub(channel, "orisun.EventStore")
    code, _ = refused(stub.GetEvents, msg(head(), "GetEventsRequest", boundary=NODE_B))
    assert code == grpc.StatusCode.UNIMPLEMENTED


# --- orisun.Admin through upstream's admin.proto ---------------------------------------------------


def a(type_name: str, /, **fields: Any) -> Any:
    return msg(head(), type_name, **fields)


def admin_users(stub: stubs.Stub) -> dict[str, Any]:
    return {u.username: u for u in stub.ListUsers(a("ListUsersRequest"), metadata=AUTH, timeout=30).users}


def create_user(stub: stubs.Stub, username: str, password: str, roles: Sequence[str] = (), name: str = "") -> Any:
    return stub.CreateUser(a("CreateUserRequest", name=name, username=username, password=password, roles=roles),
                           metadata=AUTH, timeout=30).user


def can_read(ours: pb_grpc.EventStoreStub, username: str, password: str) -> grpc.StatusCode:
    try:
        ours.GetEvents(pb.GetEventsRequest(boundary=ADMIN_B, count=1), metadata=auth_metadata(username, password),
                       timeout=30)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize(
    ("rpc", "request_name"),
    [("GetUserCount", "GetUserCountRequest"), ("ListUsers", "ListUsersRequest"),
     ("ListBoundaries", "ListBoundariesRequest"), ("CreateUser", "CreateUserRequest"),
     ("DeleteUser", "DeleteUserRequest"), ("ValidateCredentials", "ValidateCredentialsRequest"),
     ("GetEventCount", "GetEventCountRequest"), ("GetBoundary", "GetBoundaryRequest"),
     ("CreateBoundary", "CreateBoundaryRequest")],
)
def test_admin_rpcs_need_the_admin_role(admin_stub: stubs.Stub, rpc: str, request_name: str) -> None:
    call = getattr(admin_stub, rpc)
    code, details = refused(call, a(request_name), metadata=auth_metadata(*READER))
    assert code == grpc.StatusCode.PERMISSION_DENIED, details
    code, details = refused(call, a(request_name), metadata=[])
    assert code == grpc.StatusCode.UNAUTHENTICATED, details
    code, details = refused(call, a(request_name), metadata=auth_metadata("admin", "wrong"))
    assert code == grpc.StatusCode.UNAUTHENTICATED, details


def test_admin_get_user_count_the_node_admin_clients_health_check(admin_stub: stubs.Stub) -> None:
    count = admin_stub.GetUserCount(a("GetUserCountRequest"), metadata=AUTH, timeout=30).count
    assert count == len(admin_users(admin_stub)) >= 2  # admin and the reader at least
    create_user(admin_stub, unique("counted"), "password-1")
    assert admin_stub.GetUserCount(a("GetUserCountRequest"), metadata=AUTH, timeout=30).count == count + 1


def test_admin_list_users(admin_stub: stubs.Stub) -> None:
    users = admin_stub.ListUsers(a("ListUsersRequest"), metadata=AUTH, timeout=30).users
    usernames = [u.username for u in users]
    assert usernames == sorted(usernames), "by username"
    admin = {u.username: u for u in users}["admin"]
    assert list(admin.roles) == ["ADMIN"]
    assert uuid.UUID(admin.user_id)
    assert admin.HasField("created_at") and admin.created_at.seconds > 0
    reader = {u.username: u for u in users}[READER[0]]
    assert (reader.name, list(reader.roles)) == ("Compat reader", [])


def test_admin_create_user(admin_stub: stubs.Stub, node_stub: stubs.Stub, ours: pb_grpc.EventStoreStub) -> None:
    username = unique("writer")
    user = create_user(admin_stub, username, "password-1", ["OPERATIONS"], name="A Writer")
    assert (user.username, user.name, list(user.roles)) == (username, "A Writer", ["OPERATIONS"])
    assert uuid.UUID(user.user_id) and user.created_at.seconds > 0
    assert admin_users(admin_stub)[username].user_id == user.user_id
    # Usable at once, with its role.
    node_save(node_stub, unique("by-new-user"), [node_event()], -1, boundary=ADMIN_B,
              auth=auth_metadata(username, "password-1"))
    # The name defaults to the username; a user without roles may only read.
    plain = create_user(admin_stub, unique("plain"), "password-2")
    assert plain.name == plain.username and list(plain.roles) == []
    assert can_read(ours, plain.username, "password-2") == grpc.StatusCode.OK
    code, _ = refused(node_stub.SaveEvents, msg(node(), "SaveEventsRequest", boundary=ADMIN_B, events=[node_event()],
                                                stream=msg(node(), "SaveStreamQuery", name="x", expected_version=-2)),
                      metadata=auth_metadata(plain.username, "password-2"))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    # Errors are status codes naming the field.
    code, details = refused(admin_stub.CreateUser, a("CreateUserRequest", username=username, password="password-3"))
    assert code == grpc.StatusCode.ALREADY_EXISTS and username in details, details
    for fields, field in (({"username": "", "password": "p-1"}, "username"),
                          ({"username": unique("nopass"), "password": ""}, "password"),
                          ({"username": unique("badrole"), "password": "p-1", "roles": ["ROOT"]}, "roles")):
        code, details = refused(admin_stub.CreateUser, a("CreateUserRequest", **fields))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and field in details, (fields, details)


def test_admin_change_password(admin_stub: stubs.Stub, ours: pb_grpc.EventStoreStub) -> None:
    username = unique("changer")
    user = create_user(admin_stub, username, "old-password", ["OPERATIONS"])
    own = auth_metadata(username, "old-password")
    # One's own, with the current password, without the ADMIN role.
    answer = admin_stub.ChangePassword(a("ChangePasswordRequest", user_id=user.user_id, current_password="old-password",
                                         new_password="new-password"), metadata=own, timeout=30)
    assert answer.success is True
    assert can_read(ours, username, "new-password") == grpc.StatusCode.OK
    assert can_read(ours, username, "old-password") == grpc.StatusCode.UNAUTHENTICATED
    own = auth_metadata(username, "new-password")
    # A wrong current password.
    code, details = refused(admin_stub.ChangePassword, a("ChangePasswordRequest", user_id=user.user_id,
                            current_password="not-it", new_password="other-password"), metadata=own)
    assert code == grpc.StatusCode.PERMISSION_DENIED, details
    # Someone else's, without the ADMIN role.
    admin_id = admin_users(admin_stub)["admin"].user_id
    code, details = refused(admin_stub.ChangePassword, a("ChangePasswordRequest", user_id=admin_id,
                            current_password="new-password", new_password="taken-over"), metadata=own)
    assert code == grpc.StatusCode.PERMISSION_DENIED, details
    # An ADMIN changes anyone's without their current password.
    answer = admin_stub.ChangePassword(a("ChangePasswordRequest", user_id=user.user_id, new_password="reset-password"),
                                       metadata=AUTH, timeout=30)
    assert answer.success is True
    assert can_read(ours, username, "reset-password") == grpc.StatusCode.OK
    # Errors.
    code, details = refused(admin_stub.ChangePassword, a("ChangePasswordRequest", user_id=str(uuid.uuid4()),
                                                         new_password="whatever-1"))
    assert code == grpc.StatusCode.NOT_FOUND, details
    code, details = refused(admin_stub.ChangePassword, a("ChangePasswordRequest", user_id=user.user_id,
                                                         new_password=""))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "password" in details, details


def test_admin_delete_user(admin_stub: stubs.Stub, ours: pb_grpc.EventStoreStub) -> None:
    username = unique("deleted")
    user = create_user(admin_stub, username, "password-1")
    assert can_read(ours, username, "password-1") == grpc.StatusCode.OK
    answer = admin_stub.DeleteUser(a("DeleteUserRequest", user_id=user.user_id), metadata=AUTH, timeout=30)
    assert answer.success is True
    assert username not in admin_users(admin_stub)
    assert can_read(ours, username, "password-1") == grpc.StatusCode.UNAUTHENTICATED
    code, details = refused(admin_stub.DeleteUser, a("DeleteUserRequest", user_id=user.user_id))
    assert code == grpc.StatusCode.NOT_FOUND, details
    admin_id = admin_users(admin_stub)["admin"].user_id
    code, details = refused(admin_stub.DeleteUser, a("DeleteUserRequest", user_id=admin_id))
    assert code == grpc.StatusCode.FAILED_PRECONDITION, details
    assert "admin" in admin_users(admin_stub)


def test_admin_validate_credentials(admin_stub: stubs.Stub) -> None:
    answer = admin_stub.ValidateCredentials(a("ValidateCredentialsRequest", username=READER[0], password=READER[1]),
                                            metadata=AUTH, timeout=30)
    assert answer.success is True and answer.user.username == READER[0]
    for username, password in ((READER[0], "wrong"), (unique("nobody"), "whatever")):
        answer = admin_stub.ValidateCredentials(a("ValidateCredentialsRequest", username=username, password=password),
                                                metadata=AUTH, timeout=30)
        assert answer.success is False and not answer.HasField("user")


def test_admin_get_event_count(admin_stub: stubs.Stub, node_stub: stubs.Stub) -> None:
    before = admin_stub.GetEventCount(a("GetEventCountRequest", boundary=ADMIN_B), metadata=AUTH, timeout=30).count
    node_save(node_stub, unique("counted"), [node_event() for _ in range(3)], -1, boundary=ADMIN_B)
    after = admin_stub.GetEventCount(a("GetEventCountRequest", boundary=ADMIN_B), metadata=AUTH, timeout=30).count
    assert after == before + 3
    code, details = refused(admin_stub.GetEventCount, a("GetEventCountRequest", boundary="no_such_boundary"))
    assert code == grpc.StatusCode.NOT_FOUND and "no_such_boundary" in details, details


def test_admin_list_and_get_boundaries(admin_stub: stubs.Stub) -> None:
    listed = admin_stub.ListBoundaries(a("ListBoundariesRequest"), metadata=AUTH, timeout=30).boundaries
    names = [b.name for b in listed]
    assert names == sorted(names), "by name"
    by_name = {b.name: b for b in listed}
    active = enum(head(), "orisun.BoundaryLifecycleStatus", "BOUNDARY_LIFECYCLE_STATUS_ACTIVE")
    for name, schema in BOUNDARIES.items():  # configured (ORISUN_PG_SCHEMAS): they predate the catalog
        boundary = by_name[name]
        assert (boundary.placement.backend, boundary.placement.namespace) == ("postgres", schema)
        assert boundary.status == active and boundary.existed_before_catalog and boundary.last_error == ""
        got = admin_stub.GetBoundary(a("GetBoundaryRequest", name=name), metadata=AUTH, timeout=30).boundary
        assert got == boundary
    code, details = refused(admin_stub.GetBoundary, a("GetBoundaryRequest", name="no_such_boundary"))
    assert code == grpc.StatusCode.NOT_FOUND and "no_such_boundary" in details, details


def test_admin_create_boundary_is_usable_at_once(admin_stub: stubs.Stub, node_stub: stubs.Stub,
                                                 reader: Any) -> None:
    name = f"compat_rt_{uuid.uuid4().hex[:8]}"
    created = admin_stub.CreateBoundary(a("CreateBoundaryRequest", name=name, description="made by test_compat"),
                                        metadata=AUTH, timeout=60).boundary
    assert (created.name, created.description, created.placement.namespace) == (name, "made by test_compat", name)
    assert created.placement.backend == "postgres" and not created.existed_before_catalog
    assert admin_stub.GetBoundary(a("GetBoundaryRequest", name=name), metadata=AUTH, timeout=30).boundary == created
    assert name in {b.name for b in admin_stub.ListBoundaries(a("ListBoundariesRequest"), metadata=AUTH).boundaries}
    # Usable at once, by upstream's node client: write, read, subscribe.
    stream = unique("fresh")
    result = node_save(node_stub, stream, [node_event(), node_event()], -1, boundary=name)
    assert (result.log_position.prepare_position, result.new_stream_version) == (2, 1)
    subscription = reader(node(), "CatchUpSubscribeToStream", msg(node(), "CatchUpSubscribeToStreamRequest",
                                                                   boundary=name, stream=stream, afterVersion=-1))
    assert [e.version for e in subscription.wait_for_count(2)] == [0, 1]
    assert admin_stub.GetEventCount(a("GetEventCountRequest", boundary=name), metadata=AUTH).count == 2
    # Errors.
    code, details = refused(admin_stub.CreateBoundary, a("CreateBoundaryRequest", name=name))
    assert code == grpc.StatusCode.ALREADY_EXISTS and name in details, details
    for bad in ("", "Bad Name!", "1starts_with_digit", "pg_reserved"):
        code, details = refused(admin_stub.CreateBoundary, a("CreateBoundaryRequest", name=bad))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "name" in details, (bad, details)

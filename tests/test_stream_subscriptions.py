"""CatchUpSubscribeToStream on a real server (issue #15, point 1; docs/contract.md §5 applied to one stream).

Written from the issue and the proto's comments. What is checked:

- it delivers the stream's events with a version above ``afterVersion`` (-1 = from the start; an
  absent field is 0), history first and then live, in order, each once, carrying exactly what
  GetEvents returns for the same stream; never an event of another stream;
- ``afterVersion`` in the middle of the stream and beyond its current end (nothing until the
  stream's versions pass it);
- ``query`` filters the stream's events exactly as GetEvents' ``query`` filters a stream read;
- the catch-up → live handover while writers write to the stream and to other streams of the
  boundary, with thousands of events of history (no gap, no duplicate, no reordering); a slow
  subscriber left behind the server's live window;
- ``subscriber_name``: one name per boundary, shared with SubscribeToEvents;
- a node whose live feed brings nothing (publishers stopped): the stream's events still come,
  read from PostgreSQL;
- errors: INVALID_ARGUMENT naming the field, NOT_FOUND, UNAUTHENTICATED; a read-only user may
  subscribe; the README's grpcurl example, verbatim.

As in tests/test_subscriptions.py: one server per module (1 and 2 worker processes), each test its
own boundary, and a subscription is checked once it has delivered the last event it must deliver
(delivery is in order, so what came before is then final and compared exactly).
"""

from __future__ import annotations

import json
import random
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from orisun.runtime.postgres import EmbeddedPostgres
from orisun.service import subscriptions as subscriptions_module
from tests.support import (
    ADMIN,
    CHANNEL_OPTIONS,
    GrpcurlStream,
    ServerThread,
    StreamReader,
    auth_metadata,
    running_server,
    server_settings,
    shared_tmpdir,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)

READER = ("stream-reader", "reader-password-1")  # a user without roles: may read, not write
DELIVERY_TIMEOUT = 30.0

BOUNDARY_NAMES = [
    "orders",  # the README's example
    "st_roundtrip", "st_after", "st_queries", "st_handover", "st_slow", "st_names", "st_names_other",
    "st_errors", "st_reader", "st_unfed",
]
BOUNDARIES = {"orisun_admin": "orisun_admin", **{name: name for name in BOUNDARY_NAMES}}
README = Path(__file__).resolve().parent.parent / "README.md"


# --- Fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture(scope="module", params=[1, 2], ids=["1-worker", "2-workers"])
def st_server(postgres: EmbeddedPostgres, request: pytest.FixtureRequest) -> Iterator[ServerThread]:
    with running_server(postgres.conninfo, "test_stream_subs", workers=request.param,
                        boundaries=BOUNDARIES) as server:
        users = server.app.users
        assert users is not None
        server.call(users.create("Stream reader", *READER, []))
        yield server


@pytest.fixture
def stub(st_server: ServerThread) -> Iterator[pb_grpc.EventStoreStub]:
    with st_server.stub() as client:
        yield client


def ev(event_type: str = "Happened", tags: Sequence[tuple[str, str]] = (), data: str | None = None) -> pb.EventToSave:
    return pb.EventToSave(
        event_id=str(uuid.uuid4()),
        event_type=event_type,
        data=data if data is not None else json.dumps({"n": uuid.uuid4().hex[:8]}),
        tags=[pb.Tag(key=k, value=v) for k, v in tags],
    )


def save(stub: pb_grpc.EventStoreStub, boundary: str, stream: str, events: Sequence[pb.EventToSave]) -> pb.WriteResult:
    request = pb.SaveEventsRequest(boundary=boundary, stream=pb.SaveStreamQuery(name=stream, expected_version=-2),
                                   events=events)
    result: pb.WriteResult = stub.SaveEvents(request, metadata=auth_metadata(), timeout=30)
    return result


def query(*criteria: Sequence[tuple[str, str]]) -> pb.Query:
    return pb.Query(criteria=[pb.Criterion(tags=[pb.Tag(key=k, value=v) for k, v in c]) for c in criteria])


def read_stream(stub: pb_grpc.EventStoreStub, boundary: str, stream: str, q: pb.Query | None = None,
                from_version: int = 0) -> list[pb.Event]:
    """GetEvents of one stream (versions >= from_version, matching ``q``), paged in ASC order."""
    events: list[pb.Event] = []
    while True:
        request = pb.GetEventsRequest(boundary=boundary, query=q, count=10_000,
                                      stream=pb.GetStreamQuery(name=stream, from_version=from_version))
        if events:
            request.from_position.CopyFrom(events[-1].position)
        page = list(stub.GetEvents(request, metadata=auth_metadata(), timeout=30).events)
        events += page
        if len(page) < 10_000:
            return events


def versions(events: Sequence[pb.Event]) -> list[int]:
    return [e.version for e in events]


def assert_same_events(got: Sequence[pb.Event], expected: Sequence[pb.Event], what: str) -> None:
    """Stream and version first (a readable diff), then every field of every event."""
    assert [(e.stream_id, e.version) for e in got] == [(e.stream_id, e.version) for e in expected], what
    for g, e in zip(got, expected, strict=True):
        assert g == e, f"{what}: event {e.stream_id}@{e.version} differs from GetEvents'"


class StreamSubscription(StreamReader[pb.Event]):
    """A CatchUpSubscribeToStream call on its own channel, read by a thread."""

    def __init__(
        self,
        server: ServerThread,
        boundary: str,
        stream: str,
        after_version: int | None = -1,
        *,
        q: pb.Query | None = None,
        name: str = "",
        auth: tuple[str, str] = ADMIN,
        pause_after: int | None = None,
        options: list[tuple[str, Any]] | None = None,
    ) -> None:
        channel = grpc.insecure_channel(server.address, options=[*CHANNEL_OPTIONS, *(options or [])])
        request = pb.CatchUpSubscribeToStreamRequest(boundary=boundary, stream=stream, query=q, subscriber_name=name)
        if after_version is not None:
            request.afterVersion = after_version
        call = pb_grpc.EventStoreStub(channel).CatchUpSubscribeToStream(request, metadata=auth_metadata(*auth),
                                                                         timeout=110)
        super().__init__(call, channel, f"CatchUpSubscribeToStream({boundary}/{stream}, after={after_version}, "
                         f"name={name!r})", pause_after=pause_after)

    @property
    def events(self) -> list[pb.Event]:
        return self.items

    def wait_for_event(self, event_id: str, timeout: float = DELIVERY_TIMEOUT) -> None:
        """Until the event ``event_id`` has arrived (it must be one this subscription delivers)."""
        self.wait_until(lambda events: any(e.event_id == event_id for e in events), timeout, f"event {event_id}")

    def wait_for_version(self, version: int, timeout: float = DELIVERY_TIMEOUT) -> None:
        self.wait_until(lambda events: bool(events) and events[-1].version >= version, timeout,
                        f"version {version} (at {versions(self.events)[-1:]})")


@pytest.fixture
def subscribe(st_server: ServerThread) -> Iterator[Callable[..., StreamSubscription]]:
    """Start stream subscriptions; all are cancelled and joined at the end of the test."""
    started: list[StreamSubscription] = []

    def start(boundary: str, stream: str, after_version: int | None = -1, **kwargs: Any) -> StreamSubscription:
        subscription = StreamSubscription(st_server, boundary, stream, after_version, **kwargs)
        started.append(subscription)
        return subscription

    yield start
    for subscription in started:
        subscription.close()


def first_outcome(server: ServerThread, request: Any, rpc: str = "CatchUpSubscribeToStream",
                  metadata: list[tuple[str, str]] | None = None) -> pb.Event | grpc.RpcError:
    """The first thing a new call yields, an event or its error; the call is cancelled after."""
    with server.channel() as channel:
        call = getattr(pb_grpc.EventStoreStub(channel), rpc)(
            request, metadata=auth_metadata() if metadata is None else metadata, timeout=10)
        try:
            event: pb.Event = next(call)
            return event
        except grpc.RpcError as exc:
            return exc
        finally:
            call.cancel()


def refusal(server: ServerThread, request: Any, rpc: str = "CatchUpSubscribeToStream",
            metadata: list[tuple[str, str]] | None = None) -> tuple[grpc.StatusCode, str]:
    outcome = first_outcome(server, request, rpc, metadata)
    assert isinstance(outcome, grpc.RpcError), f"{rpc} was not refused: it delivered {outcome}"
    return outcome.code(), outcome.details() or ""


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


# --- Handover, concurrency and back-pressure -----------------------------------------------------


class Writer:
    """A thread committing small writes to one stream on its own channel until stopped."""

    def __init__(self, server: ServerThread, boundary: str, stream: str) -> None:
        self._channel = grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS)
        self._stub = pb_grpc.EventStoreStub(self._channel)
        self._boundary, self._stream = boundary, stream
        self._stop = threading.Event()
        self.writes = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"writer-{stream}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                save(self._stub, self._boundary, self._stream, [ev("Live", [("n", str(self.writes))])
                                                                 for _ in range(1 + self.writes % 3)])
                self.writes += 1
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._channel.close()
        assert not self._thread.is_alive(), "writer did not stop"
        assert self.error is None, f"writer failed: {self.error!r}"


def test_handover_under_concurrent_writers(
    st_server: ServerThread, stub: pb_grpc.EventStoreStub, subscribe: Callable[..., StreamSubscription]
) -> None:
    """3,000 events of history in the stream among 3,000 of other streams; two writers on the
    stream and two on other streams while the subscriptions catch up, hand over and go live."""
    boundary, stream = "st_handover", "hot"
    for start in range(0, 3_000, 500):
        save(stub, boundary, stream, [ev("Bulk", [("n", str(start + i))]) for i in range(500)])
        save(stub, boundary, f"cold-{start}", [ev("Bulk") for _ in range(500)])
    writers = [Writer(st_server, boundary, s) for s in (stream, stream, "cold-a", "cold-b")]
    try:
        wait_for(lambda: all(w.writes >= 2 or w.error for w in writers), DELIVERY_TIMEOUT, "the writers to run")
        everything = subscribe(boundary, stream)
        live_only = subscribe(boundary, stream, q=query([("event_type", "Live")]))
        from_middle = subscribe(boundary, stream, 1_700)
        everything.wait_for_version(2_999)
        written = sum(w.writes for w in writers)
        wait_for(lambda: sum(w.writes for w in writers) >= written + 60, DELIVERY_TIMEOUT, "writes after catch-up")
    finally:
        for writer in writers:
            writer.stop()
    last = save(stub, boundary, stream, [ev("Live", [("n", "fence")])]).new_stream_version
    expected = read_stream(stub, boundary, stream)
    assert versions(expected) == list(range(last + 1))
    for subscription, wanted in ((everything, expected), (live_only, [e for e in expected if e.event_type == "Live"]),
                                 (from_middle, expected[1_701:])):
        subscription.wait_for_version(last)
        assert_same_events(subscription.events, wanted, subscription.label)


def test_slow_subscriber_behind_the_live_window_still_gets_everything(
    st_server: ServerThread, stub: pb_grpc.EventStoreStub, subscribe: Callable[..., StreamSubscription],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The live window shrunk to 20 events (in this process: with workers, theirs stays as it is)
    and subscribers that stop reading: they fall behind and are served from PostgreSQL through
    the stream's index, with nothing lost or repeated."""
    monkeypatch.setattr(subscriptions_module, "TAIL_EVENTS", 20)
    boundary, stream = "st_slow", "slow"
    returns: list[int] = []  # cursors of the stream reads made after some live delivery
    original = subscriptions_module.read_stream_range

    async def counting(db: Any, schema: str, name: str, after_version: int, after: int, *args: Any) -> Any:
        if name == stream and after > 0:
            returns.append(after)
        return await original(db, schema, name, after_version, after, *args)

    monkeypatch.setattr(subscriptions_module, "read_stream_range", counting)
    data = json.dumps({"pad": "s" * 2000})
    slow_options = [("grpc.http2.bdp_probe", 0)]
    slow_live = subscribe(boundary, stream, pause_after=50, options=slow_options)
    save(stub, boundary, stream, [ev("Bulk", data=data)])
    slow_live.wait_for_version(0)
    rng = random.Random(11)
    for n in range(60):
        save(stub, boundary, stream if n % 2 else f"other-{n % 3}", [ev("Bulk", data=data)
                                                                     for _ in range(rng.randint(1, 40))])
    slow_catch_up = subscribe(boundary, stream, 10, pause_after=50, name="slow-catch-up", options=slow_options)
    fast = subscribe(boundary, stream)
    slow_catch_up.wait_until(lambda events: len(events) >= 50, DELIVERY_TIMEOUT, "50 events")
    for n in range(60):
        save(stub, boundary, stream if n % 3 else f"other-{n % 3}", [ev("Bulk", data=data)
                                                                     for _ in range(rng.randint(1, 40))])
    last = save(stub, boundary, stream, [ev("Bulk")]).new_stream_version
    fast.wait_for_version(last)
    slow_live.resume()
    slow_catch_up.resume()
    expected = read_stream(stub, boundary, stream)
    for subscription, wanted in ((fast, expected), (slow_live, expected), (slow_catch_up, expected[11:])):
        subscription.wait_for_version(last)
        assert_same_events(subscription.events, wanted, subscription.label)
    if st_server.settings.workers == 1:  # (workers serve the calls in processes of their own)
        assert returns, "no subscriber fell behind the live window: the test did not test that"


# --- subscriber_name -------------------------------------------------------------------------------


def test_subscriber_name_is_exclusive_and_shared_with_subscribe_to_events(
    st_server: ServerThread, stub: pb_grpc.EventStoreStub, subscribe: Callable[..., StreamSubscription]
) -> None:
    boundary = "st_names"
    save(stub, boundary, "a", [ev()])
    save(stub, boundary, "b", [ev()])
    save(stub, "st_names_other", "a", [ev()])
    name = f"projector-{uuid.uuid4().hex[:6]}"
    holder = subscribe(boundary, "a", name=name)
    holder.wait_for_version(0)
    started = time.monotonic()
    for request, rpc in [
        (pb.CatchUpSubscribeToStreamRequest(boundary=boundary, stream="a", afterVersion=-1, subscriber_name=name),
         "CatchUpSubscribeToStream"),
        (pb.CatchUpSubscribeToStreamRequest(boundary=boundary, stream="b", afterVersion=-1, subscriber_name=name),
         "CatchUpSubscribeToStream"),  # another stream of the boundary: the same name space
        (pb.CatchUpSubscribeToEventStoreRequest(boundary=boundary, subscriber_name=name), "SubscribeToEvents"),
        (pb.CatchUpSubscribeToEventStoreRequest(boundary=boundary, subscriber_name=name), "CatchUpSubscribeToEvents"),
    ]:
        code, details = refusal(st_server, request, rpc)
        assert code == grpc.StatusCode.ALREADY_EXISTS, (rpc, details)
        assert name in details
    assert time.monotonic() - started < 10, "refused at once, not after a wait"
    # The same name on another boundary is another subscriber.
    other = subscribe("st_names_other", "a", name=name)
    other.wait_for_version(0)
    # The holder was not disturbed.
    last = save(stub, boundary, "a", [ev()]).new_stream_version
    holder.wait_for_version(last)
    assert versions(holder.events) == [0, 1]

    # A SubscribeToEvents holding a name refuses a stream subscription of that name.
    events_name = f"events-{uuid.uuid4().hex[:6]}"
    with st_server.channel() as channel:
        call = pb_grpc.EventStoreStub(channel).SubscribeToEvents(
            pb.CatchUpSubscribeToEventStoreRequest(boundary=boundary, subscriber_name=events_name),
            metadata=auth_metadata(), timeout=30)
        try:
            next(call)  # holds the name once it delivers
            code, details = refusal(st_server, pb.CatchUpSubscribeToStreamRequest(
                boundary=boundary, stream="a", afterVersion=-1, subscriber_name=events_name))
            assert code == grpc.StatusCode.ALREADY_EXISTS, details
        finally:
            call.cancel()


# --- Without the live feed ---------------------------------------------------------------------------


def test_a_node_without_live_feed_serves_the_stream_from_postgres(postgres: EmbeddedPostgres) -> None:
    """Two nodes on one database, every publisher stopped: nothing reaches any feed, so a stream
    subscriber on the node that does not write gets the stream only because its node notices the
    commits (NOTIFY) and reads them from PostgreSQL. Writes through both nodes, interleaved with
    other streams; the stream's events must come complete, in order, once each."""
    from tests.support import fresh_database

    boundaries = {"orisun_admin": "orisun_admin", "st_unfed": "st_unfed"}
    with fresh_database(postgres.conninfo, "test_unfed") as conninfo:
        dirs = [shared_tmpdir("orisun-test-unfed-") for _ in range(2)]
        nodes = [ServerThread(server_settings(d, conninfo, boundaries=boundaries, shutdown_timeout=2.0)) for d in dirs]
        subscription: StreamSubscription | None = None
        try:
            for node in nodes:
                node.start()
            for node in nodes:
                feed = node.app.feed
                assert feed is not None
                node.call(feed.close())
            with nodes[0].stub() as first, nodes[1].stub() as second:
                save(first, "st_unfed", "s", [ev()])
                subscription = StreamSubscription(nodes[1], "st_unfed", "s")
                subscription.wait_for_version(0)
                for n in range(60):
                    writer = first if n % 3 else second
                    save(writer, "st_unfed", "s" if n % 2 else "t", [ev() for _ in range(1 + n % 4)])
                last = save(first, "st_unfed", "s", [ev()]).new_stream_version
                subscription.wait_for_version(last)
                assert_same_events(subscription.events, read_stream(first, "st_unfed", "s"), "without feed")
        finally:
            if subscription is not None:
                subscription.close()
            for node in reversed(nodes):
                node.stop()
            for d in dirs:
                shutil.rmtree(d, ignore_errors=True)


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

"""The live feed and live subscriptions on real servers (docs/contract.md §2 and §5, issue #4).

Covered here, each against real PostgreSQL, real nats-server and gRPC on free ports:

1. exactly-once ordered delivery under load: 8 concurrent writers (mixed batch sizes, racing
   optimistic-concurrency writers) while subscribers run from the start, from a saved WriteResult
   position mid-load, filtered by tags, and one that disconnects and resumes from the last
   position it received;
2. the JetStream feed itself: ``ORISUN_EVENTS_<boundary>`` holds every position once, its last
   sequence is the boundary's head, and the message at sequence N decodes to event N;
3. recovery: the nats-server child SIGKILLed under load (the supervisor restarts it), and every
   publisher stopped between commit and publish (subscribers on two nodes are served from
   PostgreSQL; a new publisher resumes from the stream's durable checkpoint);
4. two nodes on one database: one feed owner, subscribers on both nodes see the writes of both,
   ownership fail-over when the owner stops, ``subscriber_name`` exclusivity across nodes; and
   live delivery pushed within milliseconds to subscribers on either node;
5. a server restarted on the same database and data dir: clients resume with no gap, no duplicate.

Every check compares exact sequences with what GetEvents returns for the whole boundary (or the
query), so a missing, repeated or reordered event fails the test. Writers run on their own event
loop thread (``Load``), subscribers each on their own channel and thread (``Subscriber``); the
``harness`` fixture cancels every call, stops every writer and server and removes their data dirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from nats.aio.client import Client as NatsClient

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from orisun.app import MAX_FEED_BACKLOG, Orisun
from orisun.messaging.feed import MARKER_HEADER, FeedPublisher, decode, stream_name
from orisun.service.feed import LiveFeed
from orisun.transport.convert import event_to_proto
from tests.support import ServerThread, StreamReader, server_settings, shared_tmpdir, wait_for
from tests.test_concurrency import AUTH, BOUNDARIES, BOUNDARY, Write, actual_version, new_events, save, verify

pytestmark = pytest.mark.timeout(150)

ADMIN_BOUNDARY = "orisun_admin"
# Mixed batch sizes: mostly small writes, some large enough that a subscriber's resume point or a
# feed publish round often falls inside one write.
BATCH_SIZES = (1, 1, 1, 2, 3, 5, 20)
KINDS = ("Placed", "Shipped")
DELIVERY_TIMEOUT = 30.0  # for everything written to reach a subscriber or the feed
PUSH_BOUND_MS = 200.0  # "within milliseconds", with room for a loaded machine
SUBSCRIPTION_DEADLINE = 140.0  # gRPC deadline of each streaming call: none outlives its test
# Writers on a few shared streams with expected version -2, racing on exact versions (conflicts),
# and each on a stream of its own.
WRITER_MODES = ("any", "any", "any", "cas", "cas", "cas", "own", "own")
# The filtered subscriber's query: criteria are OR'd, tags inside one are AND'd; event_type is the
# pseudo-tag matching the event's type.
FILTER = pb.Query(criteria=[
    pb.Criterion(tags=[pb.Tag(key="writer", value="1")]),
    pb.Criterion(tags=[pb.Tag(key="writer", value="6"), pb.Tag(key="event_type", value="Shipped")]),
])


def key(event: pb.Event) -> tuple[int, int, str]:
    return event.position.prepare_position, event.position.commit_position, event.event_id


def keys(events: Sequence[pb.Event]) -> list[tuple[int, int, str]]:
    return [key(e) for e in events]


def after(events: Sequence[pb.Event], position: pb.Position) -> list[pb.Event]:
    """The events after the exclusive cursor ``position`` (pairs compare commit, then prepare)."""
    cursor = (position.commit_position, position.prepare_position)
    return [e for e in events if (e.position.commit_position, e.position.prepare_position) > cursor]


def matches_filter(event: pb.Event) -> bool:
    """FILTER evaluated in the test, independently of the server's SQL."""
    tags = {(t.key, t.value) for t in event.tags}
    return ("writer", "1") in tags or (("writer", "6") in tags and event.event_type == "Shipped")


# --- Reading the boundary and the feed ------------------------------------------------------------


def get_all(server: ServerThread, query: pb.Query | None = None, page: int = 10_000) -> list[pb.Event]:
    """GetEvents over the whole boundary (or ``query``), ASC, paged with the exclusive cursor."""
    events: list[pb.Event] = []
    with server.stub() as stub:
        while True:
            request = pb.GetEventsRequest(boundary=BOUNDARY, count=page, direction=pb.ASC, query=query)
            if events:
                request.from_position.CopyFrom(events[-1].position)
            got = stub.GetEvents(request, metadata=AUTH, timeout=30).events
            events.extend(got)
            if len(got) < page:
                return events


async def _on_loop(function: Callable[[], Any]) -> Any:
    return function()


def owns(server: ServerThread, boundary: str = BOUNDARY) -> bool:
    """Whether ``server`` publishes ``boundary``'s feed (asked on the server's own loop)."""
    feed = server.app.feed
    assert feed is not None
    return bool(server.call(_on_loop(lambda: feed.owns(boundary))))


def nats_client(server: ServerThread) -> NatsClient:
    client = server.app.nats_client
    assert client is not None
    return client


async def _feed_last(client: NatsClient) -> int:
    info = await client.jetstream().stream_info(stream_name(BOUNDARY))
    return int(info.state.last_seq)


def feed_last(server: ServerThread) -> int:
    """The last sequence of the boundary's feed stream in ``server``'s NATS (0 if none yet)."""
    try:
        return int(server.call(_feed_last(nats_client(server)), timeout=10))
    except Exception:  # the stream not created yet, or NATS restarting: not there yet
        return 0


class FeedStream:
    """What ``ORISUN_EVENTS_<boundary>`` holds: its state and every message, decoded."""

    def __init__(self, first: int, last: int, messages: int, deleted: int, created: datetime | None,
                 events: list[pb.Event], times: dict[int, datetime]) -> None:
        self.first, self.last, self.messages, self.deleted = first, last, messages, deleted
        self.created = created
        self.events = events
        self.times = times  # sequence -> when JetStream stored the message


async def _read_feed(client: NatsClient) -> FeedStream:
    js = client.jetstream()
    name = stream_name(BOUNDARY)
    info = await js.stream_info(name)
    state = info.state
    events: list[pb.Event] = []
    times: dict[int, datetime] = {}
    for seq in range(state.first_seq, state.last_seq + 1):
        msg = await js.get_msg(name, seq)  # NotFoundError for a missing sequence
        assert msg.seq == seq
        assert not (msg.headers and MARKER_HEADER in msg.headers), f"marker at {seq}: small events fit in NATS"
        assert msg.data is not None and msg.time is not None
        events.append(event_to_proto(decode(msg.data)))
        times[seq] = msg.time
    return FeedStream(state.first_seq, state.last_seq, state.messages, state.num_deleted or 0, info.created,
                      events, times)


def read_feed(server: ServerThread) -> FeedStream:
    return server.call(_read_feed(nats_client(server)), timeout=60)  # type: ignore[no-any-return]


def check_feed(server: ServerThread, expected: list[pb.Event]) -> FeedStream:
    """The feed catches up with the boundary and then holds positions 1..head, each once, each
    message decoding to exactly the event GetEvents returns at that position."""
    head = expected[-1].position.prepare_position
    wait_for(lambda: feed_last(server) == head, DELIVERY_TIMEOUT, f"the feed to reach the head {head}")
    feed = read_feed(server)
    assert (feed.first, feed.last, feed.messages, feed.deleted) == (1, head, head, 0)
    assert [e.position.prepare_position for e in feed.events] == list(range(1, head + 1))
    assert keys(feed.events) == keys(expected)
    assert feed.events == expected, "a feed message differs from the stored event"
    return feed


# --- Subscribers and writers ----------------------------------------------------------------------


class Subscriber(StreamReader[pb.Event]):
    """One SubscribeToEvents call on its own channel (a separate client), read by a thread.

    With ``stop_after`` the client cancels the call itself after that many events: a client that
    disconnects at a point of its own choosing and later resumes from its last position."""

    def __init__(self, server: ServerThread, *, position: pb.Position | None = None, query: pb.Query | None = None,
                 name: str = "", stop_after: int | None = None) -> None:
        self.name = name
        channel = grpc.insecure_channel(server.address)
        request = pb.CatchUpSubscribeToEventStoreRequest(boundary=BOUNDARY, subscriber_name=name, query=query)
        if position is not None:
            request.position.CopyFrom(position)
        call = pb_grpc.EventStoreStub(channel).SubscribeToEvents(  # type: ignore[no-untyped-call]
            request, metadata=AUTH, timeout=SUBSCRIPTION_DEADLINE)
        super().__init__(call, channel, f"subscriber {name!r}", stop_after=stop_after)

    @property
    def events(self) -> list[pb.Event]:
        return self.items

    def last(self) -> pb.Position:
        return self.items[-1].position

    def received_up_to(self, position: int) -> bool:
        """True once an event at or after ``position`` arrived; fails at once if the call failed."""
        self.check()
        events = self.items
        return bool(events) and events[-1].position.prepare_position >= position

    def expect(self, expected: list[pb.Event]) -> None:
        """Wait until the last expected event arrived, then compare everything received, exactly."""
        assert expected, "nothing to expect: the test wrote too little"
        target = expected[-1].position.prepare_position
        with_timeout_ignored(lambda: wait_for(lambda: self.received_up_to(target), DELIVERY_TIMEOUT,
                                              f"subscriber {self.name!r} to receive position {target}"))
        self.check()
        got = self.events
        assert keys(got) == keys(expected), f"subscriber {self.name!r}: {describe_difference(got, expected)}"
        assert got == expected, f"subscriber {self.name!r} received events that differ from the stored ones"


def with_timeout_ignored(wait: Callable[[], Any]) -> None:
    # A subscriber that never reaches the target fails on the exact comparison that follows,
    # whose message says what is missing or repeated; the timeout itself says nothing more.
    try:
        wait()
    except AssertionError as exc:
        if "timed out" not in str(exc):
            raise


def describe_difference(got: list[pb.Event], expected: list[pb.Event]) -> str:
    got_positions = [e.position.prepare_position for e in got]
    duplicates = len(got_positions) - len(set(got_positions))
    first_difference = next((i for i, (g, x) in enumerate(zip(got, expected, strict=False)) if key(g) != key(x)),
                            min(len(got), len(expected)))
    return (f"received {len(got)} events, expected {len(expected)}; {duplicates} duplicate positions; first "
            f"difference at index {first_difference}: got {got_positions[first_difference:first_difference + 5]}, "
            f"expected {[e.position.prepare_position for e in expected[first_difference:first_difference + 5]]}")


class Load:
    """Eight writers on their own event loop thread, writing until ``stop()``.

    Any outcome other than success or (for racing writers) an optimistic-concurrency conflict
    fails the test when the load is stopped."""

    MAX_EVENTS = 50_000  # a safety stop, should a test never call stop()

    def __init__(self, addresses: Sequence[str], tag: str) -> None:
        self._addresses = addresses
        self._tag = tag
        self.log: list[Write] = []
        self.written = 0  # events acknowledged
        self.conflicts = 0
        self.last_result: pb.WriteResult | None = None
        self._stopping = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"load-{tag}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._error = exc

    async def _main(self) -> None:
        channels = [grpc.aio.insecure_channel(self._addresses[w % len(self._addresses)])
                    for w in range(len(WRITER_MODES))]
        try:
            stubs = [pb_grpc.EventStoreStub(c) for c in channels]  # type: ignore[no-untyped-call]
            await asyncio.gather(*(self._writer(stubs[w], w, mode) for w, mode in enumerate(WRITER_MODES)))
        finally:
            for channel in channels:
                await channel.close()

    async def _writer(self, stub: pb_grpc.EventStoreStub, writer: int, mode: str) -> None:
        rng = random.Random(f"{self._tag}-{writer}")
        streams = {"any": [f"{self._tag}-any-{i}" for i in range(3)], "cas": [f"{self._tag}-cas-{i}" for i in range(2)],
                   "own": [f"{self._tag}-own-{writer}"]}[mode]
        known = dict.fromkeys(streams, -1)
        while not self._stopping.is_set() and self.written < self.MAX_EVENTS:
            stream = rng.choice(streams)
            expected = -2 if mode == "any" else known[stream]
            write = Write(stream, expected, new_events(rng.choice(BATCH_SIZES), writer, kind=rng.choice(KINDS)), writer)
            self.log.append(write)
            await save(stub, write)
            if write.result is not None:
                known[stream] = write.result.new_stream_version
                self.written += len(write.events)
                self.last_result = write.result
            elif write.code == grpc.StatusCode.ALREADY_EXISTS and mode == "cas":
                self.conflicts += 1
                known[stream] = actual_version(write.details, expected)
            else:
                raise AssertionError(f"writer {writer} ({mode}) on {stream}: {write.code} {write.details}")

    def wait_written(self, count: int) -> None:
        def reached() -> bool:
            if not self._thread.is_alive():
                raise AssertionError(f"the writers stopped early: {self._error!r}")
            return self.written >= count

        wait_for(reached, DELIVERY_TIMEOUT, f"{count} events written")

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "the writers did not stop"
        if self._error is not None:
            raise AssertionError(f"a writer failed: {self._error}") from self._error


class Harness:
    """Servers on one database (each with its own data dir unless given one), subscribers and
    writers; ``close`` ends them all, calls first."""

    def __init__(self, database: str) -> None:
        self._database = database
        self._servers: list[ServerThread] = []
        self._subscribers: list[Subscriber] = []
        self._loads: list[Load] = []
        self._dirs: list[Path] = []

    def new_data_dir(self) -> Path:
        path = shared_tmpdir("orisun-test-feed-")
        self._dirs.append(path)
        return path

    def start(self, data_dir: Path | None = None, **overrides: Any) -> ServerThread:
        # A short drain on stop: a node is stopped with subscriptions open on purpose.
        settings = server_settings(data_dir or self.new_data_dir(), self._database,
                                   **{"boundaries": BOUNDARIES, "shutdown_timeout": 2.0, **overrides})
        server = ServerThread(settings)
        self._servers.append(server)
        return server.start()

    def subscribe(self, server: ServerThread, **kwargs: Any) -> Subscriber:
        subscriber = Subscriber(server, **kwargs)
        self._subscribers.append(subscriber)
        return subscriber

    def load(self, servers: Sequence[ServerThread], tag: str) -> Load:
        load = Load([s.address for s in servers], tag)
        self._loads.append(load)
        return load

    def close(self) -> None:
        for subscriber in self._subscribers:
            subscriber.close()
        for load in self._loads:
            # A writer's failure was reported by the test that stopped the load, or is secondary
            # to that test's own failure.
            with contextlib.suppress(AssertionError):
                load.stop()
        for server in reversed(self._servers):
            server.stop()
        for path in self._dirs:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def harness(database: str) -> Iterator[Harness]:
    h = Harness(database)
    try:
        yield h
    finally:
        h.close()


def subscribe_when_free(harness: Harness, server: ServerThread, name: str, position: pb.Position | None,
                        within: float = 5.0) -> tuple[Subscriber, int]:
    """Subscribe with ``name``, again while the server still answers ALREADY_EXISTS (a disconnected
    client's claim ends asynchronously on the server); the subscriber and the refusals met."""
    refusals = 0
    deadline = time.monotonic() + within
    while True:
        subscriber = harness.subscribe(server, name=name, position=position)
        wait_for(answered(subscriber), DELIVERY_TIMEOUT, f"subscriber {name!r} to be accepted or refused")
        if subscriber.error_code() != grpc.StatusCode.ALREADY_EXISTS:
            subscriber.check()
            return subscriber, refusals
        refusals += 1
        assert time.monotonic() < deadline, f"subscriber_name {name!r} still taken {within}s after its client left"


def answered(subscriber: Subscriber) -> Callable[[], bool]:
    """Whether the subscription delivered something or ended (refused)."""
    return lambda: bool(subscriber.events) or subscriber.stopped.is_set()


def refused(subscriber: Subscriber) -> grpc.StatusCode:
    """The status a subscription ended with, waiting for it to end."""
    wait_for(subscriber.stopped.is_set, 10, f"subscriber {subscriber.name!r} to be refused")
    assert subscriber.events == [], "a refused subscription delivered events"
    code = subscriber.error_code()
    assert code is not None, f"the subscription ended without a status: {subscriber.error!r}"
    return code


# --- 1. Exactly once, in order, under load ----------------------------------------------------


def test_subscribers_get_every_event_exactly_once_in_order_under_load(harness: Harness) -> None:
    server = harness.start()
    from_start = harness.subscribe(server, name="from-start")
    filtered = harness.subscribe(server, query=FILTER)
    # Disconnects on its own after 700 events, most likely inside a multi-event write.
    resumer = harness.subscribe(server, name="resumer", stop_after=700)

    load = harness.load([server], "load")
    load.wait_written(1000)
    assert load.last_result is not None
    saved = load.last_result.log_position  # a position a client got from a WriteResult
    midway = harness.subscribe(server, position=saved)

    wait_for(resumer.stopped.is_set, DELIVERY_TIMEOUT, "the resuming subscriber to disconnect")
    resumer.check()
    first_part = resumer.events
    resumed, refusals = subscribe_when_free(harness, server, "resumer", first_part[-1].position)

    load.wait_written(3000)
    load.stop()
    everything = get_all(server)
    verify(everything, load.log)
    print(f"{len(everything)} events from {len(load.log)} writes, {load.conflicts} conflicts; resumed after "
          f"{refusals} ALREADY_EXISTS while the old claim ended")
    assert load.conflicts > 0, "the racing writers never conflicted"
    assert len({e.position.commit_position for e in everything}) < len(everything), "no multi-event write"

    from_start.expect(everything)
    midway.expect(after(everything, saved))
    assert midway.events[0].position.prepare_position == saved.prepare_position + 1

    matching = get_all(server, FILTER)
    assert keys(matching) == keys([e for e in everything if matches_filter(e)]), "GetEvents' query disagrees"
    assert 0 < len(matching) < len(everything)
    filtered.expect(matching)

    assert len(first_part) == 700
    resumed.expect(after(everything, first_part[-1].position))
    assert keys(first_part + resumed.events) == keys(everything)


# --- 2. The JetStream feed itself ---------------------------------------------------------------


def test_feed_stream_holds_every_position_once_as_stored(harness: Harness) -> None:
    server = harness.start()
    with server.stub() as stub:
        # Unicode, tags repeated and in a chosen order, empty and non-empty metadata: the feed's
        # codec must carry each exactly as GetEvents returns it.
        odd = new_events(3, 99, kind="Ünïcödé")
        odd[0].data = '{"text": "ünïcödé \\" and \\\\ and 🎉", "n": 1.50}'
        odd[1].tags.extend([pb.Tag(key="z", value=""), pb.Tag(key="a", value="1"), pb.Tag(key="a", value="1")])
        odd[2].metadata = '{"trace": "äöü"}'
        stub.SaveEvents(Write("odd", -1, odd).request(), metadata=AUTH, timeout=30)
    load = harness.load([server], "feed")
    load.wait_written(600)
    load.stop()
    everything = get_all(server)
    assert len(everything) >= 603
    feed = check_feed(server, everything)
    assert owns(server) and owns(server, ADMIN_BOUNDARY)
    assert server.call(_on_loop(lambda: server.app.feed.published(BOUNDARY))) == feed.last  # type: ignore[union-attr]


# --- 3. Recovery --------------------------------------------------------------------------------


def test_nats_killed_under_load_subscribers_miss_nothing_and_feed_catches_up(harness: Harness) -> None:
    server = harness.start()
    nats = server.app.nats
    assert nats is not None and nats.pid is not None
    from_start = harness.subscribe(server)
    filtered = harness.subscribe(server, query=FILTER)
    load = harness.load([server], "kill")
    load.wait_written(800)

    killed = nats.pid
    os.kill(killed, signal.SIGKILL)  # only the nats-server child this test's server started
    # Started while NATS is down or restarting: its tail must come up without the feed.
    during = harness.subscribe(server, name="during-outage")
    def restarted() -> bool:
        # A server that gave up on nats-server asked to stop (exit status 1): say so at once.
        assert server.app.exit_code == 0, "the server gave up restarting nats-server and is stopping (see its log)"
        return nats.pid not in (None, killed)

    wait_for(restarted, 15, "the supervisor to restart nats-server")
    restarted_at = time.monotonic()
    client = nats_client(server)
    wait_for(lambda: client.is_connected, 15, "the server's NATS client to reconnect")
    at_restart = load.written
    load.wait_written(at_restart + 1500)
    load.stop()
    stopped_at = time.monotonic()

    everything = get_all(server)
    verify(everything, load.log)
    from_start.expect(everything)
    filtered.expect(get_all(server, FILTER))
    during.expect(everything)
    check_feed(server, everything)
    print(f"{len(everything)} events; the feed reached the head {time.monotonic() - restarted_at:.1f}s after "
          f"nats-server was restarted (the writers stopped {stopped_at - restarted_at:.1f}s after it)")


async def _restart_publisher(app: Orisun) -> None:
    """A new publisher for every boundary, built as Orisun._start builds it."""
    assert app.db is not None and app.nats_client is not None and app.locks is not None
    feed = LiveFeed(app.db, FeedPublisher(app.nats_client, retention=app.settings.live_feed_retention,
                                          max_backlog=MAX_FEED_BACKLOG), app.locks)
    feed.start()
    app.feed = feed


def test_publisher_stopped_subscribers_read_postgres_then_feed_resumes_from_checkpoint(harness: Harness) -> None:
    nodes = [harness.start(), harness.start()]
    wait_for(lambda: [owns(n) for n in nodes].count(True) == 1, 10, "exactly one node to own the feed")
    owner, other = nodes if owns(nodes[0]) else nodes[::-1]
    live = [harness.subscribe(owner), harness.subscribe(other)]
    load = harness.load([owner], "paused")
    load.wait_written(300)
    load.stop()
    before = get_all(owner)
    published = check_feed(owner, before)

    # Every publisher is gone between commits and publishes, as if the nodes crashed there:
    # nothing reaches any feed. Writes go through both nodes, so each node's subscriber gets the
    # other node's events only from PostgreSQL (NOTIFY, then a read), its own node's from the
    # writer: both paths, interleaved, must still make one gapless sequence.
    for node in nodes:
        feed = node.app.feed
        assert feed is not None
        node.call(feed.close())
    assert [owns(owner), owns(other)] == [False, False]
    load = harness.load(nodes, "unpublished")
    load.wait_written(1000)
    load.stop()
    unpublished = get_all(owner)
    for subscriber in live:
        subscriber.expect(unpublished)
    assert feed_last(owner) == before[-1].position.prepare_position, "something published with no publisher"

    # A new publisher takes the lock and continues from the stream's last sequence, its durable
    # checkpoint: the messages already there are not published again (they keep their times).
    owner.call(_restart_publisher(owner.app))
    wait_for(lambda: owns(owner), 10, "the new publisher to own the feed")
    resumed = check_feed(owner, unpublished)
    assert resumed.created == published.created, "the feed stream was recreated"
    assert {seq: resumed.times[seq] for seq in published.times} == published.times, "published twice"

    # And it publishes live again.
    load = harness.load(nodes, "republished")
    load.wait_written(300)
    load.stop()
    everything = get_all(owner)
    check_feed(owner, everything)
    for subscriber in live:
        subscriber.expect(everything)


# --- 4. Several nodes on one database -----------------------------------------------------------


def test_two_nodes_one_owner_failover_and_subscriber_name_exclusivity(harness: Harness) -> None:
    nodes = [harness.start(), harness.start()]
    for boundary in (BOUNDARY, ADMIN_BOUNDARY):
        wait_for(lambda b=boundary: [owns(n, b) for n in nodes].count(True) == 1, 10,  # type: ignore[misc]
                 f"exactly one node to own the feed of {boundary}")
    owner, other = nodes if owns(nodes[0]) else nodes[::-1]

    seed = harness.load([owner], "seed")
    seed.wait_written(20)
    seed.stop()
    # subscriber_name is exclusive across nodes, and on one node.
    holder = harness.subscribe(owner, name="projector")
    wait_for(lambda: holder.received_up_to(1), DELIVERY_TIMEOUT, "the name's holder to start")
    assert refused(harness.subscribe(other, name="projector")) == grpc.StatusCode.ALREADY_EXISTS
    assert refused(harness.subscribe(owner, name="projector")) == grpc.StatusCode.ALREADY_EXISTS

    on_owner = harness.subscribe(owner)
    on_other = harness.subscribe(other)
    on_other_filtered = harness.subscribe(other, query=FILTER)
    load = harness.load(nodes, "two-nodes")  # writers alternate between the nodes
    load.wait_written(2000)
    load.stop()
    everything = get_all(other)
    verify(everything, seed.log + load.log)  # in the order written
    assert {w.writer % 2 for w in load.log if w.result is not None} == {0, 1}, "not written through both nodes"
    # Still exactly one owner after the other node has tried to take the lock every second
    # throughout the load.
    assert [owns(owner), owns(other)] == [True, False]
    on_owner.expect(everything)
    on_other.expect(everything)
    on_other_filtered.expect(get_all(other, FILTER))
    holder.expect(everything)
    check_feed(owner, everything)

    # Fail-over: stop the owner (with subscriptions open on it); the other node takes the feed.
    requested = time.monotonic()
    stopping = threading.Thread(target=owner.stop, name="stop-owner")
    stopping.start()
    wait_for(lambda: owns(other), 15, "the other node to take over the feed")
    took_over = time.monotonic() - requested
    stopping.join(timeout=60)
    stopped = time.monotonic() - requested
    print(f"fail-over: the surviving node owned the feed {took_over:.2f}s after the owner's stop was requested "
          f"(the stop itself took {stopped:.2f}s)")
    assert not stopping.is_alive()
    wait_for(holder.stopped.is_set, 10, "the stopped node's subscription to end")

    # The name is free once its node stopped.
    successor = harness.subscribe(other, name="projector")
    wait_for(lambda: successor.received_up_to(1), DELIVERY_TIMEOUT, "the name to be free")

    # The surviving node's subscribers go on with what is written afterwards, with no gap.
    load = harness.load([other], "after-failover")
    load.wait_written(500)
    load.stop()
    everything = get_all(other)
    on_other.expect(everything)
    on_other_filtered.expect(get_all(other, FILTER))
    successor.expect(everything)
    check_feed(other, everything)


def test_two_nodes_live_events_are_pushed_to_subscribers_on_every_node(harness: Harness) -> None:
    """docs/contract.md §5: live delivery is pushed, "within milliseconds of its commit", with no
    fixed polling delay, for a subscriber on any node, whichever node the event was written through."""
    nodes = [harness.start(), harness.start()]
    wait_for(lambda: [owns(n) for n in nodes].count(True) == 1, 10, "exactly one node to own the feed")
    owner, other = nodes if owns(nodes[0]) else nodes[::-1]
    subscribers = [harness.subscribe(owner), harness.subscribe(other)]
    medians = {f"{w} -> {s}": m for w, writer in (("owner", owner), ("other", other))
               for s, m in zip(("owner", "other"), delivery_latencies(writer, subscribers), strict=True)}
    print("live delivery, median ms from sending the write (written through -> subscribed on):",
          ", ".join(f"{route} {ms:.0f}" for route, ms in medians.items()))
    everything = get_all(owner)
    for subscriber in subscribers:
        subscriber.expect(everything)
    # Well above a push's few milliseconds on a busy test machine, well below any poll or stall
    # timer of half a second.
    slow = {route: round(ms) for route, ms in medians.items() if ms > PUSH_BOUND_MS}
    assert slow == {}, f"live events not pushed within {PUSH_BOUND_MS} ms (median, ms by route): {slow}"


def delivery_latencies(writer: ServerThread, subscribers: Sequence[Subscriber], rounds: int = 6) -> list[float]:
    """Median milliseconds from sending a single write until each subscriber has its event."""
    samples: list[list[float]] = [[] for _ in subscribers]
    with writer.stub() as stub:
        for r in range(rounds):
            began = time.monotonic()
            result = stub.SaveEvents(Write("latency", -2, new_events(1, 1000 + r)).request(), metadata=AUTH,
                                     timeout=30)
            pending = dict(enumerate(subscribers))
            while pending:
                for i, subscriber in list(pending.items()):
                    if subscriber.received_up_to(result.log_position.prepare_position):
                        samples[i].append((time.monotonic() - began) * 1000)
                        del pending[i]
                assert time.monotonic() - began < DELIVERY_TIMEOUT, "a latency probe was not delivered"
                time.sleep(0.001)  # polling granularity of the measurement, not a synchronisation
    return [statistics.median(s) for s in samples]


# --- 5. Restart -----------------------------------------------------------------------------------


def test_restart_on_same_database_and_data_dir_clients_resume_without_gap(harness: Harness) -> None:
    data_dir = harness.new_data_dir()
    first = harness.start(data_dir)
    with first.stub() as stub:
        # One 50-event write: the client below stops inside it, so its resume position is
        # (commit 50, prepare 25) and the rest of that write must still come.
        stub.SaveEvents(Write("big", -1, new_events(50, 0)).request(), metadata=AUTH, timeout=30)
    early = harness.subscribe(first, stop_after=25)
    wait_for(early.stopped.is_set, DELIVERY_TIMEOUT, "the early client to disconnect")
    early.check()
    assert early.last() == pb.Position(commit_position=50, prepare_position=25)

    # Connected across the stop: ends at whatever it had received when the server went away.
    across = harness.subscribe(first)
    load = harness.load([first], "before-restart")
    load.wait_written(1000)
    load.stop()
    before = get_all(first)
    published = check_feed(first, before)
    across.expect(before)
    first.stop()
    wait_for(across.stopped.is_set, 10, "the subscription to end with its server")
    assert across.error_code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), across.error

    second = harness.start(data_dir)
    early_resumed = harness.subscribe(second, position=early.last())
    across_resumed = harness.subscribe(second, position=across.last())
    load = harness.load([second], "after-restart")
    load.wait_written(1000)
    load.stop()
    everything = get_all(second)
    early_resumed.expect(after(everything, early.last()))
    across_resumed.expect(after(everything, across.last()))
    assert keys(early.events + early_resumed.events) == keys(everything)
    assert keys(across.events + across_resumed.events) == keys(everything)
    # The feed continued from its durable checkpoint in the data dir: not recreated, nothing
    # published twice, the new events after the old ones.
    resumed = check_feed(second, everything)
    assert resumed.created == published.created, "the feed stream was recreated on restart"
    assert {seq: resumed.times[seq] for seq in published.times} == published.times, "published twice"

"""The harness shared by the live feed tests (tests/test_live_feed*.py; docs/contract.md §2 and §5,
issue #4): reading the boundary and the feed, subscribers and writers.

Every check compares exact sequences with what GetEvents returns for the whole boundary (or the
query), so a missing, repeated or reordered event fails the test. Writers run on their own event
loop thread (``Load``), subscribers each on their own channel and thread (``Subscriber``); the
``harness`` fixture cancels every call, stops every writer and server and removes their data dirs.

The test files bind the fixtures here (`harness`) to module names of their own, so that pytest finds
them there (importing a fixture that a test takes as a parameter is a lint error, F811).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from nats.aio.client import Client as NatsClient

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from orisun.messaging.feed import MARKER_HEADER, decode, stream_name
from orisun.transport.convert import event_to_proto
from tests.support import ServerThread, StreamReader, server_settings, shared_tmpdir, wait_for
from tests.test_concurrency import AUTH, BOUNDARIES, BOUNDARY, Write, actual_version, new_events, save

ADMIN_BOUNDARY = "orisun_admin"
# Mixed batch sizes: mostly small writes, some large enough that a subscriber's resume point or a
# feed publish round often falls inside one write.
BATCH_SIZES = (1, 1, 1, 2, 3, 5, 20)
KINDS = ("Placed", "Shipped")
DELIVERY_TIMEOUT = 30.0  # for everything written to reach a subscriber or the feed


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


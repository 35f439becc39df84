"""CatchUpSubscribeToStream on a real server: the catch-up -> live handover while writers write to the
stream and to other streams of the boundary, with thousands of events of history (no gap, no
duplicate, no reordering); a slow subscriber left behind the server's live window;
``subscriber_name`` (one name per boundary, shared with SubscribeToEvents); and a node whose live
feed brings nothing (publishers stopped), whose stream's events still come, read from PostgreSQL.
Fixtures and helpers: tests/stream_subscriptions_support.py.
"""

from __future__ import annotations

import json
import random
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from orisun.runtime.postgres import EmbeddedPostgres
from orisun.service import subscriptions as subscriptions_module
from tests import stream_subscriptions_support
from tests.stream_subscriptions_support import (
    DELIVERY_TIMEOUT,
    StreamSubscription,
    assert_same_events,
    ev,
    query,
    read_stream,
    refusal,
    save,
    versions,
)
from tests.support import CHANNEL_OPTIONS, ServerThread, auth_metadata, server_settings, shared_tmpdir, wait_for

# Fixtures of tests/stream_subscriptions_support.py, bound to names of this module so that pytest finds them here.
st_server = stream_subscriptions_support.st_server
stub = stream_subscriptions_support.stub
subscribe = stream_subscriptions_support.subscribe


pytestmark = pytest.mark.timeout(120)


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


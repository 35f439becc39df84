"""SubscribeToEvents: the catch-up -> live handover under concurrent writers, with thousands of
events of history, and a slow subscriber (one that stops reading while thousands of events are
written, with the server's live window shrunk to a few events) that still gets everything in order,
once each. Fixtures and helpers: tests/subscriptions_support.py.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable

import grpc
import pytest

from orisun._proto import eventstore_pb2_grpc as pb_grpc
from orisun.service import subscriptions as subscriptions_module
from tests import subscriptions_support
from tests.subscriptions_support import (
    DELIVERY_TIMEOUT,
    Subscription,
    assert_same_events,
    ev,
    head,
    pos,
    prepares,
    query,
    read_all,
    save,
)
from tests.support import CHANNEL_OPTIONS, ServerThread, wait_for

# Fixtures of tests/subscriptions_support.py, bound to names of this module so that pytest finds them here.
sub_server = subscriptions_support.sub_server
stub = subscriptions_support.stub
subscribe = subscriptions_support.subscribe


pytestmark = pytest.mark.timeout(120)


def save_many(stub: pb_grpc.EventStoreStub, boundary: str, count: int, *, batch: int = 500,
              data: str | None = None, event_type: str = "Bulk") -> int:
    """Save ``count`` events in writes of ``batch``; the last position written."""
    last = 0
    for start in range(0, count, batch):
        events = [ev(event_type, [("n", str(start + i))], data=data) for i in range(min(batch, count - start))]
        last = save(stub, boundary, f"bulk-{start % 7}", events).log_position.prepare_position
    return last


# --- Handover and back-pressure ------------------------------------------------------------------


class Writer:
    """A thread committing small writes to ``boundary`` on its own channel until stopped."""

    def __init__(self, server: ServerThread, boundary: str, stream: str) -> None:
        self._channel = grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS)
        self._stub = pb_grpc.EventStoreStub(self._channel)
        self._boundary = boundary
        self._stream = stream
        self._stop = threading.Event()
        self.writes = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"writer-{stream}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                save(self._stub, self._boundary, self._stream, [ev("Live", [("w", self._stream)]) for _ in range(3)])
                self.writes += 1
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._channel.close()
        assert not self._thread.is_alive(), "writer did not stop"
        assert self.error is None, f"writer failed: {self.error!r}"


def test_handover_under_concurrent_writes(
    sub_server: ServerThread, stub: pb_grpc.EventStoreStub, subscribe: Callable[..., Subscription]
) -> None:
    boundary = "sub_handover"
    history = save_many(stub, boundary, 3_000)
    writers = [Writer(sub_server, boundary, f"writer-{n}") for n in range(2)]
    try:
        wait_for(lambda: all(w.writes >= 2 or w.error for w in writers), DELIVERY_TIMEOUT, "the writers to run")
        # Started while writers commit: their events land during catch-up and at the handover.
        everything = subscribe(boundary)
        live_only = subscribe(boundary, q=query([("event_type", "Live")]), rpc="CatchUpSubscribeToEvents")
        # Event 1700's own position (its write of 500 ends at 2000): a cursor inside a catch-up page.
        from_middle = subscribe(boundary, position=pos(2_000, 1_700))

        at_start = head(stub, boundary)
        everything.wait_for_position(at_start)
        writes_at_catch_up = sum(w.writes for w in writers)
        # Keep writing well past the handover.
        wait_for(lambda: sum(w.writes for w in writers) >= writes_at_catch_up + 50, DELIVERY_TIMEOUT,
                 "writes after the catch-up")
    finally:
        for writer in writers:
            writer.stop()
    last = save(stub, boundary, "fence", [ev("Live", [("w", "fence")])]).log_position.prepare_position
    assert last > at_start > history

    for subscription in (everything, live_only, from_middle):
        subscription.wait_for_position(last)
    assert everything.positions() == list(range(1, last + 1))
    assert_same_events(everything.events, read_all(stub, boundary), "no query")
    assert_same_events(live_only.events, read_all(stub, boundary, query([("event_type", "Live")])), "Live only")
    assert from_middle.positions() == list(range(1_701, last + 1))
    assert_same_events(from_middle.events, read_all(stub, boundary, after=pos(2_000, 1_700)), "from 1700")


def test_slow_subscriber_falls_behind_and_still_gets_everything(
    sub_server: ServerThread,
    stub: pb_grpc.EventStoreStub,
    subscribe: Callable[..., Subscription],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server's live window of recent events shrunk to 20: writes of up to 100 events and
    subscribers that stop reading leave every subscriber behind it again and again; they must be
    served from PostgreSQL, with nothing lost or repeated."""
    monkeypatch.setattr(subscriptions_module, "TAIL_EVENTS", 20)
    boundary = "sub_slow"
    data = json.dumps({"pad": "s" * 2000})  # ~2 kB: 1,000 of them are far more than a flow-control window
    # No BDP probing: the paused client's HTTP/2 window stays small, so the server cannot push far ahead.
    slow_options = [("grpc.http2.bdp_probe", 0)]

    # Subscribed before anything exists: everything is live to it; it stops reading at 100.
    slow_live = subscribe(boundary, pause_after=100, options=slow_options)
    first = save(stub, boundary, "first", [ev("Bulk", data=data)]).log_position.prepare_position
    slow_live.wait_for_position(first)  # established
    save_many(stub, boundary, 599, batch=100, data=data)  # 2..600

    # Subscribed with 600 events of history: stops reading at 100, inside its catch-up.
    slow_catch_up = subscribe(boundary, pause_after=100, name="slow-catch-up", rpc="CatchUpSubscribeToEvents",
                              options=slow_options)
    fast = subscribe(boundary)
    slow_catch_up.wait_for_count(100)
    slow_live.wait_for_count(100)

    rng = random.Random(7)
    written = 600
    while written < 2_000:
        size = rng.randint(1, 100)
        save(stub, boundary, f"s-{written % 5}", [ev("Bulk", data=data) for _ in range(size)])
        written += size
    last = head(stub, boundary)
    fast.wait_for_position(last)  # the others' pause holds nobody else up

    slow_live.resume()
    slow_catch_up.resume()
    expected = read_all(stub, boundary)
    assert prepares(expected) == list(range(1, last + 1))
    for subscription in (fast, slow_live, slow_catch_up):
        subscription.wait_for_position(last)
        assert_same_events(subscription.events, expected, subscription.label)


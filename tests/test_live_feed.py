"""The live feed and live subscriptions on real servers (docs/contract.md §2 and §5, issue #4), each
against real PostgreSQL, real nats-server and gRPC on free ports:

1. exactly-once ordered delivery under load: 8 concurrent writers (mixed batch sizes, racing
   optimistic-concurrency writers) while subscribers run from the start, from a saved WriteResult
   position mid-load, filtered by tags, and one that disconnects and resumes from the last
   position it received;
2. the JetStream feed itself: ``ORISUN_EVENTS_<boundary>`` holds every position once, its last
   sequence is the boundary's head, and the message at sequence N decodes to event N;
3. a server restarted on the same database and data dir: clients resume with no gap, no duplicate.

Recovery from failures is in tests/test_live_feed_recovery.py, several nodes on one database in
tests/test_live_feed_nodes.py; the harness in tests/live_feed_support.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import grpc
import pytest

from orisun._proto import eventstore_pb2 as pb
from tests import live_feed_support
from tests.live_feed_support import (
    ADMIN_BOUNDARY,
    DELIVERY_TIMEOUT,
    FILTER,
    Harness,
    Subscriber,
    _on_loop,
    check_feed,
    get_all,
    keys,
    owns,
)
from tests.support import ServerThread, wait_for
from tests.test_concurrency import AUTH, BOUNDARY, Write, new_events, verify

# Fixtures of tests/live_feed_support.py, bound to names of this module so that pytest finds them here.
harness = live_feed_support.harness


pytestmark = pytest.mark.timeout(150)


def after(events: Sequence[pb.Event], position: pb.Position) -> list[pb.Event]:
    """The events after the exclusive cursor ``position`` (pairs compare commit, then prepare)."""
    cursor = (position.commit_position, position.prepare_position)
    return [e for e in events if (e.position.commit_position, e.position.prepare_position) > cursor]


def matches_filter(event: pb.Event) -> bool:
    """FILTER evaluated in the test, independently of the server's SQL."""
    tags = {(t.key, t.value) for t in event.tags}
    return ("writer", "1") in tags or (("writer", "6") in tags and event.event_type == "Shipped")


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


"""The live feed's recovery on real servers (docs/contract.md §2 and §5, issue #4): the nats-server
child SIGKILLed under load (the supervisor restarts it), and every publisher stopped between commit
and publish (subscribers on two nodes are served from PostgreSQL; a new publisher resumes from the
stream's durable checkpoint). The harness: tests/live_feed_support.py.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from orisun.app import MAX_FEED_BACKLOG, Orisun
from orisun.messaging.feed import FeedPublisher
from orisun.service.feed import LiveFeed
from tests import live_feed_support
from tests.live_feed_support import FILTER, Harness, check_feed, feed_last, get_all, nats_client, owns
from tests.support import wait_for
from tests.test_concurrency import verify

# Fixtures of tests/live_feed_support.py, bound to names of this module so that pytest finds them here.
harness = live_feed_support.harness


pytestmark = pytest.mark.timeout(150)


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


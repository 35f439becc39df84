"""Two nodes that both believe they own a boundary's live feed (the window in which a node cut
off from PostgreSQL has not yet noticed that its lock is gone, while another node took it over)
never interleave, repeat or skip events in the feed: every message names the sequence it must
follow (Nats-Expected-Last-Sequence), which the stream's leader checks. Real nats-server."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest

from orisun.messaging.feed import FeedOutOfStep, FeedPublisher, follow
from orisun.model import Event, Position
from orisun.runtime.nats_server import EmbeddedNats, NatsServerOptions

pytestmark = pytest.mark.timeout(90)

BOUNDARY = "orders"
EVENTS = 3000


def stored_events() -> list[Event]:
    """The events as PostgreSQL would have them: positions 1..EVENTS (both owners read the same)."""
    now = datetime.now(UTC)
    return [Event(event_id=f"00000000-0000-4000-8000-{n:012d}", event_type="Happened", data=f'{{"n": {n}}}',
                  metadata="", tags=(), position=Position(n, n), created_at=now, stream=f"s-{n % 7}", version=n // 7)
            for n in range(1, EVENTS + 1)]


async def owner(publisher: FeedPublisher, events: list[Event], seed: int) -> int:
    """Publish everything after the feed's checkpoint, in random batches; when the other owner got
    there first (FeedOutOfStep), start again from the feed's new checkpoint. Returns refusals."""
    rng = random.Random(seed)
    refusals = 0
    done = await publisher.checkpoint(BOUNDARY, 0)
    while done < len(events):
        batch = events[done:done + rng.randint(1, 60)]
        try:
            await publisher.publish(BOUNDARY, batch)
            done = batch[-1].position.prepare
        except FeedOutOfStep:
            refusals += 1
            done = await publisher.checkpoint(BOUNDARY, len(events))
        await asyncio.sleep(0)
    return refusals


def test_two_owners_at_once_leave_every_position_once_in_order(tmp_path: Path) -> None:
    async def run() -> tuple[list[int], list[str], list[int]]:
        nats_server = EmbeddedNats(NatsServerOptions(host="127.0.0.1", port=0, store_dir=tmp_path / "store",
                                                     max_payload=1 << 20, username="orisun", password="secret"),
                                   tmp_path / "run")
        await nats_server.start()
        clients = [await nats_server.connect() for _ in range(3)]
        try:
            events = stored_events()
            publishers = [FeedPublisher(c, retention=3600, max_backlog=EVENTS) for c in clients[:2]]
            refusals = await asyncio.gather(*(owner(p, events, seed) for seed, p in enumerate(publishers)))
            positions, ids = [], []
            async for item in follow(clients[2], BOUNDARY, 0):
                event = item.event()
                assert event is not None
                positions.append(item.position)
                ids.append(event.event_id)
                assert event.position.prepare == item.position
                if item.position == EVENTS:
                    break
            return positions, ids, list(refusals)
        finally:
            for client in clients:
                await client.close()
            await nats_server.stop()

    positions, ids, refusals = asyncio.run(run())
    assert positions == list(range(1, EVENTS + 1))
    assert ids == [e.event_id for e in stored_events()]
    # Both really raced: each was refused at least once when the other had got ahead.
    assert all(r > 0 for r in refusals), refusals

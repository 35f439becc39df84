"""The live feed's hand-off from this node's writer (issue #13): the publisher sends what the writer
handed over from memory and does not read PostgreSQL for it again, whichever arrives first, the
writer's hand-off or PostgreSQL's NOTIFY of the same commit; and publishes that JetStream does not
acknowledge one by one still end with every event in the feed. Real PostgreSQL, nats-server and gRPC.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats.js.errors
import pytest

from orisun._proto import eventstore_pb2 as pb
from orisun.messaging.feed import FeedPublisher, decode, follow, stream_name
from orisun.model import Event, EventToSave, SaveRequest
from orisun.runtime.nats_server import EmbeddedNats, NatsServerOptions
from orisun.service.feed import LiveFeed
from orisun.storage.database import Database
from orisun.storage.locks import SessionLocks
from orisun.storage.migrations import migrate
from orisun.storage.writer import BoundaryWriter
from tests.support import ServerThread, auth_metadata, wait_for
from tests.test_failures import wait_async

pytestmark = pytest.mark.timeout(120)

BOUNDARY = "handoff"
WRITES = 200


async def _on_loop(function: Callable[[], Any]) -> Any:
    return function()


def test_own_commits_are_published_without_reading_postgresql(start_server: Callable[..., ServerThread]) -> None:
    server = start_server(boundaries={"orisun_admin": "orisun_admin", BOUNDARY: BOUNDARY})
    feed = server.app.feed
    assert feed is not None

    def published() -> int | None:
        return server.call(_on_loop(lambda: feed.published(BOUNDARY)))  # type: ignore[no-any-return]

    def reads() -> int:
        return server.call(_on_loop(lambda: feed.reads))  # type: ignore[no-any-return]

    wait_for(lambda: published() is not None, 30, "the node to own the feed")
    with server.stub() as stub:

        def write(n: int) -> int:
            result = stub.SaveEvents(pb.SaveEventsRequest(
                boundary=BOUNDARY, stream=pb.SaveStreamQuery(name=f"s-{n % 5}", expected_version=-2),
                events=[pb.EventToSave(event_id=str(uuid.uuid4()), event_type="Happened", data='{"n": 1}',
                                       tags=[pb.Tag(key="k", value="v")])]), metadata=auth_metadata(), timeout=30)
            return int(result.log_position.prepare_position)

        # Once a first write is published, the publisher's start-up reads (recovery) are behind it.
        position = write(0)
        wait_for(lambda: published() == position, 30, "the feed to publish the first write")
        before = reads()
        for n in range(1, WRITES + 1):
            position = write(n)
    wait_for(lambda: published() == position, 30, "the feed to publish every write")
    # Every NOTIFY of these commits came while the writer was handing them over, or after: none
    # needs PostgreSQL. A few reads are allowed for the publisher's safety net (after a quiet
    # second) on a machine slow enough to pause that long between two writes.
    assert reads() - before <= 3, f"{reads() - before} reads from PostgreSQL for {WRITES} handed-over commits"


def test_a_feed_reset_under_unconfirmed_publishes_is_noticed_and_republished(
        start_server: Callable[..., ServerThread]) -> None:
    """Most publishes are not acknowledged one by one (JetStream drops a refused message without a
    word). When the feed stream is deleted under the publisher, the publisher still finds out (at
    its next confirmation, at the latest once the feed is quiet) and republishes from PostgreSQL."""
    server = start_server(boundaries={"orisun_admin": "orisun_admin", BOUNDARY: BOUNDARY})
    feed, client = server.app.feed, server.app.nats_client
    assert feed is not None and client is not None
    js = client.jetstream()

    async def last() -> int | None:
        try:
            return int((await js.stream_info(stream_name(BOUNDARY))).state.last_seq)
        except nats.js.errors.NotFoundError:
            return None

    with server.stub() as stub:

        def write(n: int) -> int:
            result = stub.SaveEvents(pb.SaveEventsRequest(
                boundary=BOUNDARY, stream=pb.SaveStreamQuery(name="s", expected_version=-2),
                events=[pb.EventToSave(event_id=str(uuid.uuid4()), event_type="Happened", data=f'{{"n": {n}}}')]),
                metadata=auth_metadata(), timeout=30)
            return int(result.log_position.prepare_position)

        wait_for(lambda: server.call(_on_loop(lambda: feed.published(BOUNDARY))) is not None, 30, "feed owner")
        position = write(0)
        wait_for(lambda: server.call(last()) == position, 30, "the first write in the feed")
        server.call(js.delete_stream(stream_name(BOUNDARY)))
        for n in range(1, 6):
            position = write(n)
    wait_for(lambda: server.call(last()) == position, 30, "the feed to be recreated with every write")
    positions = []
    for sequence in range(1, position + 1):
        message = server.call(js.get_msg(stream_name(BOUNDARY), sequence))
        event = decode(message.data or b"")
        positions.append(event.position.prepare)
        assert event.data == f'{{"n": {sequence - 1}}}'
    assert positions == list(range(1, position + 1))




def test_a_notify_ahead_of_the_hand_off_waits_for_it_and_other_nodes_commits_are_read(
        database: str, tmp_path: Path) -> None:
    """LiveFeed alone (real PostgreSQL and nats-server, no NOTIFY listener: the test delivers the
    notifications itself, in the order it wants). A NOTIFY that arrives while this node's writer has
    the same commit in flight is not read from PostgreSQL: the hand-off follows. A NOTIFY of a commit
    no hand-off will bring (another node's) is read from PostgreSQL and published."""
    schema = BOUNDARY

    async def run() -> None:
        nats_server = EmbeddedNats(NatsServerOptions(host="127.0.0.1", port=0, store_dir=tmp_path / "store",
                                                     max_payload=1 << 20, username="orisun", password="secret"),
                                   tmp_path / "run")
        await nats_server.start()
        client = await nats_server.connect()
        db = Database(database, {"orisun_admin": "orisun_admin", BOUNDARY: schema}, pool_size=2)
        await db.open(10)
        locks = SessionLocks(database)
        writing = False
        handed: list[Event] = []
        # interval: no safety-net round (which reads PostgreSQL) during the test.
        feed = LiveFeed(db, FeedPublisher(client, retention=3600, max_backlog=1000), locks, interval=60.0,
                        writing=lambda _: writing)
        ours = BoundaryWriter(db, schema, on_commit=lambda _, events: handed.extend(events))
        others = BoundaryWriter(db, schema)  # another node's writer: nothing handed over
        try:
            await migrate(db, "orisun_admin")
            feed.start()
            await wait_async(lambda: feed.published(BOUNDARY) is not None, 30, "the feed's owner")

            def save(n: int) -> SaveRequest:
                return SaveRequest(BOUNDARY, "s", -2, None,
                                   (EventToSave(str(uuid.uuid4()), "Happened", f'{{"n": {n}}}', "", ()),))

            first = await ours.append(save(0))
            feed.committed(schema, list(handed))
            await wait_async(lambda: feed.published(BOUNDARY) == first.position.prepare, 30, "the first write")
            before = feed.reads
            for n in range(1, 6):
                handed.clear()
                writing = True
                result = await ours.append(save(n))
                feed.committed(schema, head=result.position.prepare)  # the NOTIFY, ahead of the hand-off
                for _ in range(3):  # the publisher's turns while the hand-off is on its way
                    await asyncio.sleep(0.01)
                assert feed.reads == before, "read PostgreSQL for a commit the writer was handing over"
                feed.committed(schema, list(handed))
                writing = False
                await wait_async(lambda p=result.position.prepare: feed.published(BOUNDARY) == p,
                                 30, "the hand-off published")
            assert feed.reads == before
            result = await others.append(save(6))
            feed.committed(schema, head=result.position.prepare)
            position = result.position.prepare
            await wait_async(lambda: feed.published(BOUNDARY) == position, 30, "another node's write published")
            assert feed.reads == before + 1
            async for item in follow(client, BOUNDARY, 0):
                event = item.event()
                assert event is not None and event.data == f'{{"n": {item.position - 1}}}'
                if item.position == result.position.prepare:
                    break
        finally:
            await feed.close()
            await ours.close()
            await others.close()
            await locks.close()
            await db.close()
            await client.close()
            await nats_server.stop()

    asyncio.run(run())

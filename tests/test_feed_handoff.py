"""The live feed's hand-off from this node's writer (issue #13): the publisher sends what the writer
handed over from memory and does not read PostgreSQL for it again, whichever arrives first, the
writer's hand-off or PostgreSQL's NOTIFY of the same commit. Real PostgreSQL, nats-server and gRPC.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import nats.js.errors
import pytest

from orisun._proto import eventstore_pb2 as pb
from orisun.messaging.feed import decode, stream_name
from tests.support import ServerThread, auth_metadata, wait_for

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

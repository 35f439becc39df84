"""The boundary writer's group commit on a real PostgreSQL: requests sent in one group are checked
one after another, so a request may be the retry (or a forbidden reuse) of one before it in the
same group. These cases cannot be arranged reliably through the gRPC server, hence this layer.

All the ``append`` calls of one ``asyncio.gather`` are queued before the writer's task first
runs, so they form one group (one append_events call); ``on_commit`` counts the groups to
make sure of it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence

import pytest

from orisun.errors import AlreadyExists
from orisun.model import Event, EventToSave, ReadRequest, SaveRequest, Tag, WriteResult
from orisun.storage.database import Database
from orisun.storage.events import read_events
from orisun.storage.migrations import migrate
from orisun.storage.writer import BoundaryWriter

pytestmark = pytest.mark.timeout(60)

BOUNDARY, SCHEMA = "groups", "groups"
BOUNDARIES = {"orisun_admin": "orisun_admin", BOUNDARY: SCHEMA}


def event(event_type: str = "Happened", data: str = '{"n": 1}', event_id: str | None = None) -> EventToSave:
    return EventToSave(event_id or str(uuid.uuid4()), event_type, data, "", (Tag("k", "v"),))


def write(stream: str, events: Sequence[EventToSave], expected: int = -2) -> SaveRequest:
    return SaveRequest(BOUNDARY, stream, expected, None, tuple(events))


class Store:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.groups: list[list[Event]] = []
        self.writer = BoundaryWriter(db, SCHEMA, on_commit=lambda _, events: self.groups.append(events))

    async def group(self, *requests: SaveRequest) -> list[WriteResult | BaseException]:
        """The outcomes of ``requests`` sent as one group."""
        before = len(self.groups)
        outcomes = await asyncio.gather(*(self.writer.append(r) for r in requests), return_exceptions=True)
        assert len(self.groups) <= before + 1, "the requests were not committed as one group"
        return list(outcomes)

    async def everything(self) -> list[Event]:
        return await read_events(self.db, SCHEMA, ReadRequest(BOUNDARY, count=10_000))


async def _with_store(conninfo: str, test: Callable[[Store], Awaitable[None]]) -> None:
    db = Database(conninfo, BOUNDARIES, pool_size=2)
    await db.open(10)
    try:
        await migrate(db, "orisun_admin")
        store = Store(db)
        try:
            await test(store)
        finally:
            await store.writer.close()
    finally:
        await db.close()


def run(database: str, test: Callable[[Store], Awaitable[None]]) -> None:
    asyncio.run(_with_store(database, test))


def reuse_refused(outcome: WriteResult | BaseException, named: str) -> str:
    assert isinstance(outcome, AlreadyExists), outcome
    assert named in str(outcome)
    return str(outcome)


def test_a_retry_in_the_same_group_gets_the_same_result(database: str) -> None:
    async def test(store: Store) -> None:
        w = write("s", [event(), event()], -1)
        first, again, third = await store.group(w, w, w)
        assert isinstance(first, WriteResult)
        assert first == again == third
        assert [e.event_id for e in await store.everything()] == [e.event_id for e in w.events]

    run(database, test)


def test_other_reuses_in_the_same_group_are_refused(database: str) -> None:
    async def test(store: Store) -> None:
        a, b = event("A"), event("B")
        w = write("s", [a, b], -1)
        changed = write("s", [a, event("B", '{"n": 2}', b.event_id)])
        prefix = write("s", [event("Other", '{"x": 0}', a.event_id)])
        moved = write("elsewhere", [a, b])
        c = event("C")
        w2 = write("s", [c])
        merged = write("s", [a, b, c])
        outcomes = await store.group(w, changed, prefix, moved, w2, merged, w)
        assert isinstance(outcomes[0], WriteResult) and isinstance(outcomes[4], WriteResult)
        assert "other content" in reuse_refused(outcomes[1], b.event_id)
        assert "other content" in reuse_refused(outcomes[2], a.event_id)
        assert "another stream" in reuse_refused(outcomes[3], a.event_id)
        reuse_refused(outcomes[5], a.event_id)
        assert outcomes[6] == outcomes[0]
        stored = await store.everything()
        assert [(e.event_id, e.event_type, e.data, e.stream) for e in stored] == [
            (x.event_id, x.event_type, x.data, "s") for x in (a, b, c)]
        assert [e.position.prepare for e in stored] == [1, 2, 3]

    run(database, test)


def test_ids_of_a_request_refused_earlier_in_the_group_are_free(database: str) -> None:
    async def test(store: Store) -> None:
        events = [event(), event()]
        conflict, ok = await store.group(write("s", events, 5), write("s", events, -1))
        assert isinstance(conflict, AlreadyExists) and "expected 5, actual -1" in str(conflict)
        assert isinstance(ok, WriteResult) and ok.new_stream_version == 1
        assert len(await store.everything()) == 2

    run(database, test)


def test_a_whole_group_sent_again_gets_its_results(database: str) -> None:
    """What the writer does after losing its connection mid-commit: it sends the group again."""
    async def test(store: Store) -> None:
        writes = [write(f"s{i % 3}", [event(f"T{i}") for _ in range(1 + i % 3)]) for i in range(30)]
        first = await store.group(*writes)
        assert all(isinstance(r, WriteResult) for r in first), first
        stored = await store.everything()
        assert await store.group(*writes) == first
        assert await store.everything() == stored

    run(database, test)

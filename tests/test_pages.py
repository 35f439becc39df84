"""GetEvents pages (issue #13): one statement per page, the byte budget applied by PostgreSQL.

A page holds at most ``count`` events and ``max_bytes`` of encoded events (at least one). These
tests drive ``EventStore.read_page`` with the transport's real PageBuilder on a real PostgreSQL:
- a normal page of ``count`` small events is read with ONE statement;
- a page cut by its size never holds far more than ``max_bytes`` (large events are not loaded
  ``count`` at a time);
- the page is exactly the longest prefix that fits, and ``truncated`` tells whether the next
  event existed but did not fit, for every budget around the events' boundaries;
- a page with large events takes two statements at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from orisun._proto import eventstore_pb2 as pb
from orisun.model import (
    Criterion,
    Direction,
    EventRow,
    EventToSave,
    Position,
    Query,
    ReadRequest,
    Role,
    SaveRequest,
    Tag,
    User,
)
from orisun.service.events import EventStore
from orisun.storage.database import Database
from orisun.storage.migrations import migrate
from orisun.storage.writer import BoundaryWriter
from orisun.transport.convert import PageBuilder
from tests.support import fresh_database

pytestmark = pytest.mark.timeout(120)

BOUNDARY = SCHEMA = "pages"
BOUNDARIES = {"orisun_admin": "orisun_admin", BOUNDARY: SCHEMA}
USER = User("u", "u", "u", frozenset({Role.ADMIN}))
SMALL = 1_000  # stream "small": events of ~200 bytes with two tags
BIG, BIG_BYTES = 300, 100_000  # stream "big": events of ~100 KB
ODD = 80  # stream "odd": events of varied sizes and tags that JSON escapes


def odd_events() -> list[EventToSave]:
    rng = random.Random(13)
    events = []
    for i in range(ODD):
        tags: list[Tag] = [Tag("kind", "odd")]
        if i % 3 == 0:
            tags.append(Tag("ctl", "\x01\x1f\"\\" * rng.randint(1, 60)))  # escaped as 6 and 2 bytes in JSON
        if i % 4 == 0:
            tags.append(Tag("empty", ""))  # proto3 leaves an empty value out
        if i % 7 == 0:
            tags += [Tag(f"k{j}", "é€😀" * rng.randint(0, 80)) for j in range(rng.randint(1, 40))]  # > 1 KB of JSON
        data = json.dumps({"i": i, "pad": "x" * rng.choice([0, 10, 500, 3_000, 40_000])})
        metadata = "" if i % 2 else json.dumps({"m": "y" * rng.randint(0, 300)})
        events.append(EventToSave(str(uuid.uuid4()), "Odd" * rng.randint(1, 30), data, metadata, tuple(tags)))
    return events


@pytest.fixture(scope="module")
def database(postgres: Any) -> Iterator[str]:
    with fresh_database(postgres.conninfo) as conninfo:

        async def fill() -> None:
            db = Database(conninfo, BOUNDARIES, pool_size=2)
            await db.open(10)
            try:
                await migrate(db, "orisun_admin")
                writer = BoundaryWriter(db, SCHEMA)
                try:
                    small = tuple(EventToSave(str(uuid.uuid4()), "Small", json.dumps({"i": i, "note": "n" * 120}),
                                              '{"source": "test"}', (Tag("kind", "small"), Tag("n", str(i % 10))))
                                  for i in range(SMALL))
                    await writer.append(SaveRequest(BOUNDARY, "small", -2, None, small))
                    for first in range(0, BIG, 50):
                        big = tuple(EventToSave(str(uuid.uuid4()), "Big", json.dumps({"i": i, "pad": "p" * BIG_BYTES}),
                                                "", (Tag("kind", "big"),)) for i in range(first, first + 50))
                        await writer.append(SaveRequest(BOUNDARY, "big", -2, None, big))
                    await writer.append(SaveRequest(BOUNDARY, "odd", -2, None, tuple(odd_events())))
                finally:
                    await writer.close()
                async with db.pool.connection() as conn:
                    await conn.execute("ANALYZE")
            finally:
                await db.close()

        asyncio.run(fill())
        yield conninfo


class _Counting:
    """``db.pool`` that counts the statements executed through it."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self.statements = 0

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        async with self._pool.connection() as conn:
            outer = self

            class Conn:
                async def execute(self, *args: Any, **kwargs: Any) -> Any:
                    outer.statements += 1
                    return await conn.execute(*args, **kwargs)

            yield Conn()


class Sink(PageBuilder):
    """The transport's PageBuilder, noting the most bytes it ever held."""

    def __init__(self) -> None:
        super().__init__()
        self.peak = 0

    def add(self, rows: list[EventRow]) -> int:
        used = super().add(rows)
        self.peak = max(self.peak, used)
        return used


def run(database: str, test: Callable[[EventStore, _Counting], Awaitable[None]]) -> None:
    async def main() -> None:
        db = Database(database, BOUNDARIES, pool_size=1)
        await db.open(10)
        counting = _Counting(db.pool)
        db.pool = counting  # type: ignore[assignment]
        store = EventStore(db, max_event_bytes=64 * 1024 * 1024)
        try:
            await test(store, counting)
        finally:
            db.pool = counting._pool
            await db.close()

    asyncio.run(main())


def kind(value: str) -> Query:
    return Query((Criterion((Tag("kind", value),)),))


@pytest.mark.parametrize("by", ["position", "stream", "tag"])
def test_a_normal_page_of_count_events_is_one_statement(database: str, by: str) -> None:
    async def test(store: EventStore, counting: _Counting) -> None:
        request = {"position": ReadRequest(BOUNDARY, count=1000),
                   "stream": ReadRequest(BOUNDARY, stream="small", count=1000),
                   "tag": ReadRequest(BOUNDARY, query=kind("small"), count=1000)}[by]
        sink = Sink()
        page = await store.read_page(USER, request, sink=sink, max_bytes=64 * 1024 * 1024)
        assert (page.count, page.truncated) == (1000, False)
        assert counting.statements == 1
        # The bench's tag query: fewer hits than count, one statement too.
        counting.statements = 0
        page = await store.read_page(USER, ReadRequest(BOUNDARY, query=kind("odd"), count=1000), sink=Sink(),
                                     max_bytes=64 * 1024 * 1024)
        assert (page.count, page.truncated) == (ODD, False)
        assert counting.statements == 1

    run(database, test)


@pytest.mark.parametrize("count", [BIG, 10_000])
@pytest.mark.parametrize("direction", [Direction.ASC, Direction.DESC])
def test_a_cut_page_never_holds_far_more_than_max_bytes(database: str, direction: Direction, count: int) -> None:
    """300 events of 100 KB asked with count=300 (or 10,000) and a 1 MiB budget: the page never
    held more than the budget and an event (reading 100 of them at first held 10 MB)."""
    max_bytes = 1024 * 1024

    async def test(store: EventStore, counting: _Counting) -> None:
        read: list[str] = []
        cursor = None
        for _ in range(BIG):
            sink = Sink()
            request = ReadRequest(BOUNDARY, stream="big", count=count, direction=direction, after=cursor)
            counting.statements = 0
            page = await store.read_page(USER, request, sink=sink, max_bytes=max_bytes)
            assert counting.statements <= 2
            assert sink.peak <= max_bytes + BIG_BYTES + 1024, f"held {sink.peak} bytes for a {max_bytes}-byte page"
            events = pbevents(sink)
            assert len(events) == page.count
            read += [e.event_id for e in events]
            if not page.truncated:
                break
            assert 5 <= page.count <= 10
            cursor = Position(events[-1].position.commit_position, events[-1].position.prepare_position)
        assert len(read) == BIG == len(set(read))

    run(database, test)


def pbevents(sink: PageBuilder) -> list[Any]:
    """The events of the page ``sink`` built."""
    return list(pb.GetEventsResponse.FromString(sink.page(False)).events)


@pytest.mark.parametrize("direction", [Direction.ASC, Direction.DESC])
@pytest.mark.parametrize("by", ["stream", "tag"])
def test_the_page_is_the_longest_prefix_that_fits(database: str, direction: Direction, by: str) -> None:
    def request(count: int) -> ReadRequest:
        if by == "stream":
            return ReadRequest(BOUNDARY, stream="odd", count=count, direction=direction)
        return ReadRequest(BOUNDARY, query=kind("odd"), count=count, direction=direction)

    async def test(store: EventStore, counting: _Counting) -> None:
        sink = Sink()
        page = await store.read_page(USER, request(ODD), sink=sink, max_bytes=1 << 40)
        assert (page.count, page.truncated) == (ODD, False)
        sizes = [e.ByteSize() for e in pbevents(sink)]
        sizes = [1 + (s.bit_length() + 6) // 7 + s for s in sizes]  # field tag, length varint, body
        ends = [sum(sizes[:n]) for n in range(1, ODD + 1)]
        budgets = {1, sizes[0] - 1, sizes[0], *[end + d for end in ends for d in (-1, 0, 1)]}
        for count in (ODD, ODD - 5):
            for budget in sorted(b for b in budgets if b > 0):
                counting.statements = 0
                sink = Sink()
                page = await store.read_page(USER, request(count), sink=sink, max_bytes=budget)
                fit = max(1, sum(1 for end in ends[:count] if end <= budget))
                assert page.count == fit, (count, budget)
                assert page.truncated == (fit < count), (count, budget)
                assert len(pbevents(sink)) == fit
                assert counting.statements <= 2
                # At most the budget (or the lone first event), one event that does not fit, and
                # per event what a lower bound of its size leaves out (varints, optional fields).
                assert sink.peak <= max(budget, sizes[0]) + max(sizes) + 64 * count, (count, budget, sink.peak)

    run(database, test)

"""GetEvents' and the subscriptions' SELECTs: one statement text per *shape*, values as parameters.

The text of a read depends only on its shape (schema, direction, cursor or not, stream, number of
criteria and tags), so psycopg prepares it and PostgreSQL plans it once per connection. These tests
check that the cache never mixes two reads' values, that every placeholder gets a value, and that
the generic plans PostgreSQL may keep for a prepared statement still use the indexes.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable

import psycopg
import pytest

from orisun.model import Criterion, Direction, EventToSave, Position, Query, ReadRequest, SaveRequest, Tag
from orisun.storage.database import Database
from orisun.storage.events import (
    build_page,
    build_range,
    build_read,
    build_stream_range,
    read_range,
    read_rows,
    read_stream_range,
)
from orisun.storage.migrations import migrate
from orisun.storage.writer import BoundaryWriter

pytestmark = pytest.mark.timeout(120)

BOUNDARY, SCHEMA = "shapes", "shapes"
BOUNDARIES = {"orisun_admin": "orisun_admin", BOUNDARY: SCHEMA}
PLACEHOLDER = re.compile(rb"%\((\w+)\)s")


def query(*criteria: tuple[tuple[str, str], ...]) -> Query:
    return Query(tuple(Criterion(tuple(Tag(k, v) for k, v in c)) for c in criteria))


# Reads of every shape: directions, cursors, streams with and without from_version and subsets,
# queries of one and several criteria of one and several tags, the event_type pseudo-tag.
READS = [
    ReadRequest(BOUNDARY),
    ReadRequest(BOUNDARY, direction=Direction.DESC),
    ReadRequest(BOUNDARY, after=Position(10, 7), count=5),
    ReadRequest(BOUNDARY, after=Position(10, 7), count=5, direction=Direction.DESC),
    ReadRequest(BOUNDARY, after=Position(10, 0), direction=Direction.DESC),
    ReadRequest(BOUNDARY, stream="s-1"),
    ReadRequest(BOUNDARY, stream="s-1", from_version=3, direction=Direction.DESC),
    ReadRequest(BOUNDARY, stream="s-1", direction=Direction.DESC, after=Position(5, 5)),
    ReadRequest(BOUNDARY, stream="s-1", stream_subset=query((("a", "1"), ("b", "2")), (("c", "3"),)),
                query=query((("eventType", "X"),))),
    ReadRequest(BOUNDARY, query=query((("tenant", "t-1"),))),
    ReadRequest(BOUNDARY, query=query((("tenant", "t-1"), ("event_type", "E"))), after=Position(3, 3)),
    ReadRequest(BOUNDARY, query=query((("tenant", "t-1"),), (("tenant", "t-2"), ("x", "y"), ("z", "w"))),
                direction=Direction.DESC, after=Position(9, 9)),
]


def test_every_placeholder_has_its_value() -> None:
    for request in READS:
        statement, params = build_read(SCHEMA, request)
        assert set(PLACEHOLDER.findall(statement)) == {name.encode() for name in params}, request
        statement, params = build_page(SCHEMA, request, 1000)
        assert set(PLACEHOLDER.findall(statement)) == {name.encode() for name in params}, request
    for q in (None, query((("tenant", "t-1"),)), query((("a", "1"), ("b", "2")), (("c", "3"),))):
        statement, params = build_range(SCHEMA, Position(4, 4), 100, q, 10)
        assert set(PLACEHOLDER.findall(statement)) == {name.encode() for name in params}, q
        statement, params = build_stream_range(SCHEMA, "s-1", 3, 4, 100, q, 10)
        assert set(PLACEHOLDER.findall(statement)) == {name.encode() for name in params}, q


def test_the_text_depends_on_the_shape_only() -> None:
    texts = {build_read(SCHEMA, request)[0] for request in READS}
    # All shapes differ but READS[3] and READS[4]: two DESC cursors, different only in values.
    assert len(texts) == len(READS) - 1, "two shapes share a text"
    assert build_read(SCHEMA, READS[3])[1]["below"] == 7 and build_read(SCHEMA, READS[4])[1]["below"] == 10
    # The same shape with other values: the very same (cached) text, the other values.
    one = ReadRequest(BOUNDARY, stream="s-1", from_version=2, query=query((("k", "v"),)), count=7)
    other = ReadRequest(BOUNDARY, stream="s'2", from_version=9, query=query((("eventType", "x%s"),)), count=8)
    (text1, params1), (text2, params2) = build_read(SCHEMA, one), build_read(SCHEMA, other)
    assert text1 is text2
    assert (params1["stream"], params1["version"], params1["q0_0k"], params1["q0_0v"], params1["limit"]) == (
        "s-1", 2, "k", "v", 7)
    assert (params2["stream"], params2["version"], params2["q0_0k"], params2["q0_0v"], params2["limit"]) == (
        "s'2", 9, "event_type", "x%s", 8)
    # No value is ever spliced into the text.
    assert b"s'2" not in text2 and b"x%s" not in text2
    assert build_read("other", one)[0] != text1  # the schema is part of the shape


def _run(database: str, test: Callable[[Database], Awaitable[None]]) -> None:
    async def main() -> None:
        # One connection: every read below goes through the same prepared statements.
        db = Database(database, BOUNDARIES, pool_size=1)
        await db.open(10)
        try:
            await migrate(db, "orisun_admin")
            writer = BoundaryWriter(db, SCHEMA)
            try:
                for start in range(0, 12_000, 1_000):  # positions 1..12,000; tenant t-(n % 120)
                    events = tuple(EventToSave(str(uuid.uuid4()), "Thing", "{}", "", (Tag("tenant", f"t-{n % 120}"),))
                                   for n in range(start + 1, start + 1001))
                    await writer.append(SaveRequest(BOUNDARY, f"s-{start // 1000}", -2, None, events))
            finally:
                await writer.close()
            async with db.pool.connection() as conn:
                await conn.execute("ANALYZE")
            await test(db)
        finally:
            await db.close()

    asyncio.run(main())


def test_prepared_reads_never_mix_values(database: str) -> None:
    """Far past psycopg's prepare_threshold, alternating values of one shape: each read its own."""

    async def test(db: Database) -> None:
        for n in range(30):
            tenant = n % 7
            rows = await read_rows(db, SCHEMA, ReadRequest(BOUNDARY, query=query((("tenant", f"t-{tenant}"),)),
                                                           after=Position(n * 100, n * 100), count=5 + n % 3))
            first = n * 100 + 1 + (tenant - (n * 100 + 1)) % 120  # the first position > n*100 with that tenant
            assert [r[0] for r in rows] == [first + 120 * i for i in range(5 + n % 3)], n
            below = n * 100 + 50
            cursor = Position((below - 1) // 1000 * 1000 + 1000, below)  # event `below`'s: writes of 1,000
            rows = await read_rows(db, SCHEMA, ReadRequest(BOUNDARY, query=query((("tenant", f"t-{tenant}"),)),
                                                           after=cursor, count=3,
                                                           direction=Direction.DESC))
            assert [r[0] for r in rows] == [p for p in range(below - 1, 0, -1) if p % 120 == tenant][:3], n
            other = (tenant + 1 + n % 5) % 120
            rows = await read_rows(db, SCHEMA, ReadRequest(
                BOUNDARY, query=query((("tenant", f"t-{tenant}"),), (("tenant", f"t-{other}"),)),
                after=cursor, count=4, direction=Direction.DESC if n % 2 else Direction.ASC))
            span = range(below - 1, 0, -1) if n % 2 else range(below + 1, 12_001)
            assert [r[0] for r in rows] == [p for p in span if p % 120 in (tenant, other)][:4], n
            stream = n % 12
            rows = await read_rows(db, SCHEMA, ReadRequest(BOUNDARY, stream=f"s-{stream}", from_version=n + 1,
                                                           count=2, direction=Direction.DESC))
            assert [(r[2], r[3]) for r in rows] == [(f"s-{stream}", n + 1), (f"s-{stream}", n)], n
            events, _ = await read_range(db, SCHEMA, Position(n * 10, n * 10), 12_000,
                                         query((("tenant", f"t-{tenant}"),)), 3)
            start = n * 10 + 1 + (tenant - (n * 10 + 1)) % 120
            assert [e.position.prepare for e in events] == [start, start + 120, start + 240], n
            # CatchUpSubscribeToStream's catch-up: stream s-k holds positions k*1000+1.., versions 0..999.
            events, through = await read_stream_range(db, SCHEMA, f"s-{stream}", n, n * 7, 12_000,
                                                      query((("tenant", f"t-{tenant}"),)), 2)
            wanted = [v for v in range(n + 1, 1000)
                      if stream * 1000 + v + 1 > n * 7 and (stream * 1000 + v + 1) % 120 == tenant][:2]
            assert [e.version for e in events] == wanted and {e.stream for e in events} == {f"s-{stream}"}, n
            assert through == events[-1].position.prepare
        async with db.pool.connection() as conn:  # the one connection all those reads used
            cursor = await conn.execute("SELECT statement FROM pg_prepared_statements")
            prepared = [row[0] for row in await cursor.fetchall()]
        assert sum(text.startswith("SELECT e.position") for text in prepared) == 7, prepared  # the 7 shapes

    _run(database, test)


def _generic_plan(conn: psycopg.Connection[tuple[str]], statement: bytes) -> str:
    """The plan PostgreSQL makes for ``statement`` not knowing its values, as a prepared statement
    may keep it (plan_cache_mode = auto picks it after five runs when it looks as cheap)."""
    names: list[bytes] = []

    def numbered(match: re.Match[bytes]) -> bytes:
        if match[1] not in names:
            names.append(match[1])
        return b"$%d" % (names.index(match[1]) + 1)

    text = PLACEHOLDER.sub(numbered, statement)
    return "\n".join(row[0] for row in conn.execute(b"EXPLAIN (GENERIC_PLAN) " + text).fetchall())


def test_generic_plans_use_the_indexes(database: str) -> None:
    async def test(db: Database) -> None:
        pass

    _run(database, test)
    with psycopg.connect(database, autocommit=True) as conn:
        if conn.info.server_version < 160000:
            pytest.skip("EXPLAIN (GENERIC_PLAN) needs PostgreSQL 16 or later")
        statements = [build_read(SCHEMA, request)[0] for request in READS]
        statements += [build_page(SCHEMA, request, 1000)[0] for request in READS]  # GetEvents' pages
        statements += [build_range(SCHEMA, Position(4, 4), 100, q, 10)[0]
                       for q in (None, query((("tenant", "t-1"),)), query((("a", "1"),), (("c", "3"), ("d", "4"))))]
        statements += [build_stream_range(SCHEMA, "s-1", 3, 4, 100, q, 10)[0]
                       for q in (None, query((("tenant", "t-1"),)), query((("a", "1"),), (("c", "3"), ("d", "4"))))]
        for statement in statements:
            plan = _generic_plan(conn, statement)
            assert "Seq Scan" not in plan, f"{statement.decode()}\n{plan}"
            assert "Index" in plan, plan

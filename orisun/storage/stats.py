"""Read-only figures for the admin dashboard: a boundary's size, its streams, the server's health."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from datetime import datetime
from typing import cast

from psycopg import sql
from psycopg.types.numeric import Int8

from orisun.model import Event, EventRow, ReadRequest, event_from_row
from orisun.storage._errors import translate_errors
from orisun.storage.database import Database

# The read statement's columns and composition, reused so that a count is led by the same index
# as the read it counts.
from orisun.storage.events import _COLUMNS, _read_select, _read_shape


@dataclass(frozen=True)
class BoundaryStats:
    """A boundary's head position and number of streams."""

    head: int  # the last position; positions are dense, so also the number of events
    streams: int


@dataclass(frozen=True)
class StreamInfo:
    """One stream of a boundary: its name, last version and last write."""

    name: str
    version: int
    updated_at: datetime


async def boundary_stats(db: Database, schema: str) -> BoundaryStats:
    """The head and the number of streams (an exact count: an index-only scan of ``streams``)."""
    query = sql.SQL("SELECT (SELECT position FROM {head}), (SELECT count(*) FROM {streams})").format(
        head=sql.Identifier(schema, "head"), streams=sql.Identifier(schema, "streams")
    )
    with translate_errors(f"reading the figures of boundary schema {schema}"):
        async with db.pool.connection() as conn:
            cursor = await conn.execute(query)
            row = await cursor.fetchone()
    assert row is not None
    return BoundaryStats(head=int(row[0]), streams=int(row[1]))


async def list_streams(db: Database, schema: str, *, after: str, prefix: str, limit: int) -> list[StreamInfo]:
    """Streams by name: those after ``after`` (exclusive; "" = from the first) starting with ``prefix``."""
    query = sql.SQL(
        "SELECT name, version, updated_at FROM {streams} "
        "WHERE name > %(after)s AND starts_with(name, %(prefix)s) ORDER BY name LIMIT %(limit)s"
    ).format(streams=sql.Identifier(schema, "streams"))
    with translate_errors(f"listing the streams of boundary schema {schema}"):
        async with db.pool.connection() as conn:
            cursor = await conn.execute(query, {"after": after, "prefix": prefix, "limit": limit})
            rows = await cursor.fetchall()
    return [StreamInfo(name=row[0], version=row[1], updated_at=row[2]) for row in rows]


async def ping(db: Database) -> float:
    """Seconds a trivial query takes, pool wait included; Unavailable when PostgreSQL is down."""
    began = time.perf_counter()
    with translate_errors("checking PostgreSQL"):
        async with db.pool.connection() as conn:
            await conn.execute("SELECT 1")
    return time.perf_counter() - began


# --- Figures with a bounded cost (issue #16) ----------------------------------------------------
# The dashboard asks for these on page views: every statement below reads a bounded number of
# rows, whatever the size of the boundary. Positions are dense (1..head), so "the most recent N
# events" is the position range (head - N, head], read through the primary key.


async def storage_bytes(db: Database, schema: str) -> int:
    """Bytes the boundary's tables take on disk, indexes and TOAST included (one catalog lookup
    per table of the schema: no table is read)."""
    query = sql.SQL(
        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p', 'm')"
    )
    with translate_errors(f"reading the size of boundary schema {schema}"):
        async with db.pool.connection() as conn:
            cursor = await conn.execute(query, {"schema": schema})
            row = await cursor.fetchone()
    return int(row[0]) if row is not None else 0


async def recent_event_types(db: Database, schema: str, head: int, sample: int) -> list[tuple[str, int]]:
    """How many of the ``sample`` most recent events (positions after ``head - sample``) have each
    type, most frequent first."""
    query = sql.SQL(
        "SELECT event_type, count(*) FROM {events} WHERE position > %(low)s "
        "GROUP BY event_type ORDER BY count(*) DESC, event_type LIMIT 50"
    ).format(events=sql.Identifier(schema, "events"))
    with translate_errors(f"reading the event types of boundary schema {schema}"):
        async with db.pool.connection() as conn:
            cursor = await conn.execute(query, {"low": Int8(max(head - sample, 0))})
            rows = await cursor.fetchall()
    return [(str(row[0]), int(row[1])) for row in rows]


async def stream_version(db: Database, schema: str, stream: str) -> int | None:
    """The stream's version (its number of events minus one), None when it has none."""
    query = sql.SQL("SELECT version FROM {streams} WHERE name = %(name)s").format(
        streams=sql.Identifier(schema, "streams"))
    with translate_errors(f"reading a stream of boundary schema {schema}"):
        async with db.pool.connection() as conn:
            cursor = await conn.execute(query, {"name": stream})
            row = await cursor.fetchone()
    return int(row[0]) if row is not None else None


async def count_matching(db: Database, schema: str, request: ReadRequest, cap: int) -> int:
    """The number of events a read's filters match, counting no further than ``cap + 1``: the
    read's own statement (led by the same index) cut at ``cap + 1`` rows."""
    shape, params = _read_shape(schema, replace(request, after=None, count=cap + 1))
    query = sql.SQL("SELECT count(*) FROM ({}) matching").format(_read_select(shape, sql.SQL("1")))
    with translate_errors(f"counting events of boundary {request.boundary!r}"):
        async with db.pool.connection() as conn:
            cursor = await conn.execute(query, params)
            row = await cursor.fetchone()
    return int(row[0]) if row is not None else 0


async def read_event_by_id(db: Database, schema: str, event_id: str) -> Event | None:
    """The event with this id (a UUID: the caller checks), through the event_id unique index."""
    query = sql.SQL("SELECT {cols} FROM {events} e WHERE e.event_id = %(id)s::uuid").format(
        cols=_COLUMNS, events=sql.Identifier(schema, "events"))
    with translate_errors(f"finding an event of boundary schema {schema}"):
        async with db.pool.connection() as conn:
            cursor = await conn.execute(query, {"id": event_id})
            row = await cursor.fetchone()
    return event_from_row(cast(EventRow, row)) if row is not None else None


@dataclass(frozen=True)
class PrefixFilter:
    """Events whose stream name starts with ``prefix``, of ``event_type`` (if set), carrying every
    tag of ``tags``; looked for among a window of positions (see ``read_by_prefix``)."""

    prefix: str
    event_type: str | None
    tags: tuple[tuple[str, str], ...]


def _prefix_where(f: PrefixFilter, params: dict[str, object]) -> sql.Composable:
    conditions = [sql.SQL("e.position >= %(low)s AND e.position <= %(high)s"),
                  sql.SQL("starts_with(e.stream_name, %(prefix)s)")]
    params["prefix"] = f.prefix
    if f.event_type is not None:
        conditions.append(sql.SQL("e.event_type = %(type)s"))
        params["type"] = f.event_type
    if f.tags:
        # events.tags holds [key, value] pairs: containment checks them on the rows of the window.
        conditions.append(sql.SQL("e.tags @> %(tags)s::jsonb"))
        params["tags"] = json.dumps([list(tag) for tag in f.tags])
    return sql.SQL(" AND ").join(conditions)


async def read_by_prefix(db: Database, schema: str, f: PrefixFilter, *, low: int, high: int, count: int,
                         asc: bool) -> list[Event]:
    """At most ``count`` events matching ``f`` with positions from ``low`` to ``high``, in order.

    No index leads by a stream name prefix across streams, so the window bounds the rows read:
    the caller picks it (at most a fixed number of positions) and continues from its end."""
    params: dict[str, object] = {"low": Int8(low), "high": Int8(high), "limit": Int8(count)}
    where = _prefix_where(f, params)
    query = sql.SQL("SELECT {cols} FROM {events} e WHERE {where} ORDER BY e.position {order} LIMIT %(limit)s").format(
        cols=_COLUMNS, events=sql.Identifier(schema, "events"), where=where, order=sql.SQL("ASC" if asc else "DESC"))
    with translate_errors(f"reading boundary schema {schema}"):
        async with db.pool.connection() as conn:
            cursor = await conn.execute(query, params)
            rows = await cursor.fetchall()
    return [event_from_row(cast(EventRow, row)) for row in rows]


async def count_by_prefix(db: Database, schema: str, f: PrefixFilter, *, low: int, high: int, cap: int) -> int:
    """The events matching ``f`` with positions from ``low`` to ``high``, counted up to ``cap + 1``."""
    params: dict[str, object] = {"low": Int8(low), "high": Int8(high), "limit": Int8(cap + 1)}
    where = _prefix_where(f, params)
    query = sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {events} e WHERE {where} LIMIT %(limit)s) matching").format(
        events=sql.Identifier(schema, "events"), where=where)
    with translate_errors(f"counting events of boundary schema {schema}"):
        async with db.pool.connection() as conn:
            cursor = await conn.execute(query, params)
            row = await cursor.fetchone()
    return int(row[0]) if row is not None else 0


@dataclass(frozen=True)
class WrittenStream:
    """A stream and the position of its last event (for the streams ordered by last write)."""

    name: str
    version: int
    updated_at: datetime
    position: int


async def streams_by_last_write(db: Database, schema: str, *, below: int, window: int, prefix: str,
                                limit: int) -> list[WrittenStream]:
    """Streams whose last event lies in positions ``[below - window, below)``, the most recently
    written first (at most ``limit``).

    A stream's last event is the one whose version is the stream's version. Read through the
    events' primary key over a window of positions and one streams lookup per event, rather than
    an index on streams.updated_at, which every append would have to maintain (issue #13 tuned
    the appends)."""
    query = sql.SQL(
        "SELECT s.name, s.version, s.updated_at, e.position FROM {events} e "
        "JOIN {streams} s ON s.name = e.stream_name AND s.version = e.stream_version "
        "WHERE e.position < %(below)s AND e.position >= %(low)s AND starts_with(e.stream_name, %(prefix)s) "
        "ORDER BY e.position DESC LIMIT %(limit)s"
    ).format(events=sql.Identifier(schema, "events"), streams=sql.Identifier(schema, "streams"))
    params = {"below": Int8(below), "low": Int8(max(below - window, 0)), "prefix": prefix, "limit": Int8(limit)}
    with translate_errors(f"listing the streams of boundary schema {schema}"):
        async with db.pool.connection() as conn:
            cursor = await conn.execute(query, params)
            rows = await cursor.fetchall()
    return [WrittenStream(name=row[0], version=row[1], updated_at=row[2], position=row[3]) for row in rows]

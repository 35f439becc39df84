"""Read-only figures for the admin dashboard: a boundary's size, its streams, the server's health."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from psycopg import sql

from orisun.storage._errors import translate_errors
from orisun.storage.database import Database


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

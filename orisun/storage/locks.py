"""Cluster-wide locks: PostgreSQL session advisory locks held on one dedicated connection.

A node holds every lock it takes (the live feed of a boundary it publishes, the
``subscriber_name`` of each named subscription it serves) on this one connection. When the node
dies or loses PostgreSQL, the connection ends and PostgreSQL frees its locks, so nothing stays
locked forever; the server-side TCP keepalives below bound how long that takes when the node
vanishes without closing its socket.

Session advisory locks are re-entrant within a session, so one node can never refuse itself:
callers keep their own record of what this node holds (see ``Claims``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import psycopg
from loguru import logger

from orisun.errors import Unavailable

_OP_TIMEOUT = 5.0  # a lock operation that takes longer means the connection is gone
# Server-side keepalives: PostgreSQL drops the session of a silent node within about
# idle + interval * count seconds, and with it the node's locks.
_KEEPALIVES = "SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 2; SET tcp_keepalives_count = 3"


class SessionLocks:
    """Named locks shared by every node on the database. ``generation`` counts connections:
    a lock taken in an earlier generation is gone."""

    def __init__(self, conninfo: str, *, on_lost: Callable[[], None] = lambda: None) -> None:
        self._conninfo = conninfo
        self._conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        self._on_lost = on_lost
        self._lock = asyncio.Lock()
        self.generation = 0

    async def try_lock(self, name: str) -> bool:
        """Take the lock ``name`` unless another node holds it. Raises Unavailable."""
        row = await self._fetch("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", name)
        return row is True

    async def unlock(self, name: str, generation: int) -> None:
        """Release ``name`` if it was taken in ``generation`` (a later connection holds nothing)."""
        if generation != self.generation or self._conn is None:
            return
        with contextlib.suppress(Unavailable):
            await self._fetch("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", name)

    async def check(self) -> bool:
        """True when the connection (and so every lock of this generation) is still there."""
        if self._conn is None:
            return False
        try:
            await self._fetch("SELECT true", None, connect=False)
        except Unavailable:
            return False
        return True

    async def close(self) -> None:
        async with self._lock:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    await self._conn.close()
                self._conn = None

    async def _connect(self) -> psycopg.AsyncConnection[tuple[object, ...]]:
        async with asyncio.timeout(_OP_TIMEOUT):  # not wait_for: see service/feed.py _wait
            conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True,
                                                         application_name="orisun-locks")
        await conn.execute(_KEEPALIVES)
        self.generation += 1
        return conn

    async def _fetch(self, query: str, name: str | None, *, connect: bool = True) -> object:
        async with self._lock:
            try:
                if self._conn is None:
                    if not connect:
                        raise Unavailable("the lock connection is closed")
                    self._conn = await self._connect()
                conn = self._conn
                async with asyncio.timeout(_OP_TIMEOUT):
                    cursor = await conn.execute(query, (name,) if name is not None else None)
                    row = await cursor.fetchone()
                return row[0] if row else None
            except (psycopg.OperationalError, TimeoutError, OSError) as exc:
                lost = self._conn is not None
                if self._conn is not None:
                    with contextlib.suppress(Exception):
                        await self._conn.close()
                    self._conn = None
                if lost:
                    logger.warning("Lost the PostgreSQL connection holding this node's locks: {}", exc)
                    self._on_lost()
                raise Unavailable(f"PostgreSQL is unavailable (locks): {exc}") from exc

"""The PostgreSQL connection pool and the boundary → schema map."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping

import psycopg
from loguru import logger
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from orisun.errors import NotFound, StartupError, quoted

POOL_WAIT = 3.0
POOL_RECONNECT = 10.0


def describe(conninfo: str) -> str:
    """host:port/dbname of a conninfo, without the password, for logs and messages."""
    params = conninfo_to_dict(conninfo)
    return f"{params.get('host', 'localhost')}:{params.get('port', 5432)}/{params.get('dbname', '')}"


async def _configure(conn: psycopg.AsyncConnection[TupleRow]) -> None:
    """Session settings of every pool connection, once when it is made.

    jit = off: where PostgreSQL has JIT (Debian's packages do, and turn it on), a statement whose
    *estimated* cost passes jit_above_cost is compiled at every execution, milliseconds each time;
    the row estimates of set-returning functions make small statements look that costly. The
    write functions also say ``SET jit = off``; this covers reads and whatever the operator's
    server setting. A SET, not the ``options`` connection parameter, so that an operator's own
    PGOPTIONS still applies.
    """
    await conn.execute("SET jit = off")


# Finds a boundary this process does not know yet (in the catalog): its schema, or None.
Lookup = Callable[[str], Awaitable[str | None]]


class Database:
    """An async connection pool plus the boundaries this process serves (boundary → schema).

    The boundaries start as the configured ones; ``add`` adds those of the catalog, also while
    serving (``orisun.service.boundaries``). ``boundaries`` is replaced, never changed in place, so
    a loop over it that awaits meanwhile is not disturbed by an addition.

    Connections are in autocommit mode: every multi-statement change opens an explicit
    ``conn.transaction()``, so no connection ever sits idle in a transaction.
    """

    def __init__(self, conninfo: str, boundaries: Mapping[str, str], *, pool_size: int) -> None:
        self.conninfo = conninfo
        self.boundaries: Mapping[str, str] = dict(boundaries)
        self._lookup: Lookup | None = None
        self._on_added: list[Callable[[str, str], None]] = []
        self.pool = AsyncConnectionPool(
            conninfo,
            min_size=1,
            max_size=pool_size,
            open=False,
            kwargs={"autocommit": True, "application_name": "orisun"},
            name="orisun",
            # A call waiting longer than this for a connection answers UNAVAILABLE (PostgreSQL
            # down, or the pool exhausted) instead of hanging for psycopg_pool's default 30 s.
            timeout=POOL_WAIT,
            # Bounds the reconnect backoff: after an outage the next attempt is never minutes
            # away (a failed reconnect run ends, and the next request starts a fresh one).
            reconnect_timeout=POOL_RECONNECT,
            configure=_configure,
        )

    async def open(self, within: float) -> None:
        """Wait up to ``within`` seconds for PostgreSQL, then open the pool; else StartupError."""
        deadline = time.monotonic() + within
        delay = 0.1
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.conninfo, connect_timeout=max(1, int(deadline - time.monotonic()))
                )
                await conn.close()
                break
            except psycopg.OperationalError as exc:
                if time.monotonic() + delay >= deadline:
                    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    raise StartupError(
                        f"PostgreSQL at {describe(self.conninfo)} is unreachable after {within:g}s: {reason} "
                        "(check ORISUN_PG_HOST, ORISUN_PG_PORT, ORISUN_PG_USER, ORISUN_PG_PASSWORD, ORISUN_PG_NAME)"
                    ) from None
                logger.info("Waiting for PostgreSQL at {}: {}", describe(self.conninfo), exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        await self.pool.open(wait=True, timeout=max(1.0, deadline - time.monotonic()))

    async def connect(self) -> psycopg.AsyncConnection[TupleRow]:
        """A connection of its own, set up like the pool's, for a task that keeps one (a writer).

        Raises psycopg.OperationalError when PostgreSQL cannot be reached within POOL_WAIT.
        """
        conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True, application_name="orisun",
                                                     connect_timeout=max(2, int(POOL_WAIT)))
        try:
            await _configure(conn)
        except BaseException:
            await conn.close()
            raise
        return conn

    async def close(self) -> None:
        await self.pool.close()

    async def resolve(self, boundary: str) -> str:
        """The schema of ``boundary``, also of one another node created a moment ago (asked of the
        catalog, and added); NotFound if there is no such boundary."""
        schema = self.boundaries.get(boundary)
        if schema is not None:
            return schema
        schema = await self._lookup(boundary) if self._lookup is not None else None
        if schema is None:
            raise NotFound(f"boundary {quoted(boundary)} is not configured (see ORISUN_PG_SCHEMAS) "
                           "and was not created (CreateBoundary)")
        self.add(boundary, schema)
        return schema

    def find_with(self, lookup: Lookup) -> None:
        """Have ``resolve`` ask ``lookup`` for boundaries this process does not know."""
        self._lookup = lookup

    def on_added(self, callback: Callable[[str, str], None]) -> None:
        """Call ``callback(boundary, schema)`` for each boundary ``add`` adds from now on."""
        self._on_added.append(callback)

    def add(self, boundary: str, schema: str) -> bool:
        """Serve ``boundary`` (in ``schema``, created and migrated) from now on; whether it is new."""
        if boundary in self.boundaries:
            return False
        self.boundaries = {**self.boundaries, boundary: schema}
        for callback in self._on_added:
            callback(boundary, schema)
        return True

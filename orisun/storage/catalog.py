"""The boundary catalog: the ``boundaries`` table of the admin boundary's schema.

Every node and worker serves the boundaries this table lists. Adding one (``create``) inserts its
row and creates and migrates its schema in one transaction, under a lock shared by every node, so
two nodes creating the same boundary at once leave one schema, migrated once, and one of them is
told it exists already. The insert's trigger notifies ``CATALOG_CHANNEL`` at commit; ``listen``
hands those notifications to each process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from orisun.errors import AlreadyExists, FailedPrecondition, StartupError, quoted
from orisun.model import Boundary
from orisun.storage._errors import translate_errors
from orisun.storage.database import Database
from orisun.storage.migrations import migrate_schema
from orisun.storage.notifications import listen

# PostgreSQL's channel for "a boundary was added" (admin migration 0005).
CATALOG_CHANNEL = "orisun_boundaries"
# The transaction-scoped advisory lock every change of the catalog holds, on every node.
_LOCK = "orisun.catalog"


def _table(admin_schema: str) -> sql.Composed:
    return sql.SQL("{}").format(sql.Identifier(admin_schema, "boundaries"))


def _boundary(row: tuple[Any, ...]) -> Boundary:
    name, schema, description, existed, created_at = row
    assert isinstance(created_at, datetime)
    return Boundary(name, schema, description, existed, created_at)


_COLUMNS = sql.SQL("name, schema_name, description, existed_before_catalog, created_at")


async def load(db: Database, admin_schema: str) -> list[Boundary]:
    """Every boundary of the catalog, by name."""
    query = sql.SQL("SELECT {} FROM {} ORDER BY name").format(_COLUMNS, _table(admin_schema))
    with translate_errors("reading the boundary catalog"):
        async with db.pool.connection() as conn:
            cursor = await conn.execute(query)
            return [_boundary(row) for row in await cursor.fetchall()]


async def lookup(db: Database, admin_schema: str, name: str) -> Boundary | None:
    """The boundary ``name`` of the catalog, or None."""
    query = sql.SQL("SELECT {} FROM {} WHERE name = %s").format(_COLUMNS, _table(admin_schema))
    with translate_errors("reading the boundary catalog"):
        async with db.pool.connection() as conn:
            cursor = await conn.execute(query, (name,))
            row = await cursor.fetchone()
            return _boundary(row) if row is not None else None


async def record_configured(db: Database, admin_schema: str, boundaries: Mapping[str, str]) -> None:
    """Record the boundaries of ORISUN_PG_SCHEMAS (their schemas migrated already) in the catalog.

    A configured boundary that the catalog has with another schema, or whose schema the catalog
    gives another boundary, is a StartupError: serving it from a second schema would split its
    events, and other nodes keep serving the catalog's.
    """
    table = _table(admin_schema)
    try:
        async with db.pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (_LOCK,))
            cursor = await conn.execute(sql.SQL("SELECT name, schema_name FROM {}").format(table))
            recorded = {name: schema for name, schema in await cursor.fetchall()}
            owners = {schema: name for name, schema in recorded.items()}
            for name, schema in boundaries.items():
                if name in recorded and recorded[name] != schema:
                    raise StartupError(
                        f"ORISUN_PG_SCHEMAS: boundary {name!r} has schema {recorded[name]!r} in the boundary "
                        f"catalog, not {schema!r}; a boundary keeps its schema"
                    )
                if name not in recorded and schema in owners:
                    raise StartupError(
                        f"ORISUN_PG_SCHEMAS: schema {schema!r} of boundary {name!r} belongs to boundary "
                        f"{owners[schema]!r} in the boundary catalog"
                    )
                if name not in recorded:
                    await conn.execute(
                        sql.SQL("INSERT INTO {} (name, schema_name, existed_before_catalog) VALUES (%s, %s, true)")
                        .format(table), (name, schema),
                    )
    except psycopg.Error as exc:
        raise StartupError(f"cannot record the configured boundaries in the boundary catalog: {exc}") from exc


async def create(db: Database, admin_schema: str, name: str, schema: str, description: str, *,
                 adopt: bool) -> Boundary:
    """Add the boundary ``name`` in ``schema``: create and migrate the schema and record it, in one
    transaction (a failure leaves nothing behind).

    AlreadyExists when the catalog has ``name`` or another boundary uses ``schema``;
    FailedPrecondition when ``schema`` exists already and ``adopt`` is not set.
    """
    table = _table(admin_schema)
    with translate_errors("creating a boundary"):
        async with db.pool.connection() as conn, conn.transaction():
            # Serialises every change of the catalog, on every node: a second creation of the same
            # boundary waits here, then finds the first one's row.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (_LOCK,))
            cursor = await conn.execute(
                sql.SQL("SELECT name, schema_name FROM {} WHERE name = %s OR schema_name = %s").format(table),
                (name, schema),
            )
            for owner, owned in await cursor.fetchall():
                if owner == name:
                    raise AlreadyExists(f"boundary {quoted(name)} exists already (schema {owned!r})")
                raise AlreadyExists(f"schema {quoted(schema)} is the schema of boundary {owner!r}")
            cursor = await conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
            if await cursor.fetchone() is not None and not adopt:
                raise FailedPrecondition(
                    f"schema {quoted(schema)} exists already in PostgreSQL; to use it for the boundary, "
                    "ask to adopt it (CreateBoundary's existed_before_catalog)"
                )
            await migrate_schema(conn, schema)
            cursor = await conn.execute(
                sql.SQL("INSERT INTO {} (name, schema_name, description, existed_before_catalog) "
                        "VALUES (%s, %s, %s, %s) RETURNING {}").format(table, _COLUMNS),
                (name, schema, description, adopt),
            )
            row = await cursor.fetchone()
            assert row is not None
            return _boundary(row)


async def listen_for_added_boundaries(
    conninfo: str, on_added: Callable[[str | None, str | None], None], *, ready: asyncio.Event | None = None
) -> None:
    """Call ``on_added(name, schema)`` for each boundary added to the catalog by any node, forever;
    ``on_added(None, None)`` when some may have been missed (the connection was re-made)."""

    def on_payload(payload: dict[str, Any] | None) -> None:
        name = payload.get("name") if payload is not None else None
        schema = payload.get("schema") if payload is not None else None
        if isinstance(name, str) and isinstance(schema, str):
            on_added(name, schema)
        else:
            on_added(None, None)

    await listen(conninfo, CATALOG_CHANNEL, on_payload, ready=ready)

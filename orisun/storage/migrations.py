"""Versioned schema migrations, then the SQL functions, from ``.sql`` files under ``orisun/storage/sql``.

``sql/boundary/`` is applied to every boundary's schema, ``sql/admin/`` to the admin boundary's
schema as well. Files are named ``NNNN_what.sql`` and applied in order; each schema records what
it has in its own ``orisun_migrations`` table. Tables, indexes and triggers live there, as history.
The files name no schema: they run with ``search_path`` set to the target schema, so one file
serves every boundary.

Functions are code, not history: ``sql/functions/boundary/NAME.sql`` (and ``.../admin/``) holds
the current ``CREATE OR REPLACE FUNCTION NAME`` and is applied at every start, after the
migrations, in the same transaction, so a change to a function is a diff of its file (as
message-db installs its functions). Older migrations that created a function stay as they were
(a fresh database replays them, and a trigger's migration needs its function to exist); the file
then replaces it. ``CREATE OR REPLACE`` cannot change a function's arguments or return type: such
a change needs a numbered migration that drops the old function (``DROP FUNCTION IF EXISTS
name(old argument types)``, and any trigger on it), which runs before the file creates the new
one. Without it, other arguments would add an overload beside the old function (a test checks
every function in a schema comes from a file), and another return type fails the start.

Safe when several Orisun nodes start at once against one database: each schema is migrated in
one transaction holding a transaction-scoped advisory lock for that schema, so a second node
waits, then finds the work done. A failed migration rolls back whole.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

import psycopg
from loguru import logger
from psycopg import sql
from psycopg.rows import TupleRow

from orisun.errors import StartupError
from orisun.storage.database import Database

_FILE_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
_FUNCTION_FILE_NAME = re.compile(r"([a-z0-9_]+)\.sql")
BOUNDARY = "boundary"
ADMIN = "admin"


@dataclass(frozen=True)
class Migration:
    """One numbered schema migration file (``sql/<kind>/NNNN_name.sql``)."""

    kind: str  # "boundary" or "admin"
    version: int
    name: str
    sql: str


def load_migrations(kind: str) -> list[Migration]:
    """The migrations of one kind, in order; versions must be 1, 2, 3, ... without holes."""
    folder = resources.files("orisun.storage").joinpath("sql", kind)
    migrations = []
    for entry in folder.iterdir():
        match = _FILE_NAME.fullmatch(entry.name)
        if match is None:
            continue
        migrations.append(Migration(kind, int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    migrations.sort(key=lambda m: m.version)
    if [m.version for m in migrations] != list(range(1, len(migrations) + 1)):
        raise RuntimeError(f"migrations of {kind!r} are not numbered 1..N: {[m.version for m in migrations]}")
    return migrations


@dataclass(frozen=True)
class Function:
    """One SQL function file (``sql/functions/<kind>/name.sql``), applied at every start."""

    kind: str  # "boundary" or "admin"
    name: str  # the function's name, which is the file's name
    sql: str


def load_functions(kind: str) -> list[Function]:
    """The function files of one kind, by name (the order does not matter: PL/pgSQL bodies are
    checked when first run, and a SQL-language body only names tables, which migrations made)."""
    folder = resources.files("orisun.storage").joinpath("sql", "functions", kind)
    functions = []
    for entry in folder.iterdir():
        match = _FUNCTION_FILE_NAME.fullmatch(entry.name)
        if match is not None:
            functions.append(Function(kind, match[1], entry.read_text(encoding="utf-8")))
    return sorted(functions, key=lambda f: f.name)


async def migrate(
    db: Database, admin_boundary: str, boundaries: Mapping[str, str] | None = None
) -> dict[str, list[str]]:
    """Create every boundary's schema if missing and bring it up to date (``boundaries``, or
    every boundary ``db`` knows).

    Returns, per schema, the names of the migrations this call applied (empty when up to date).
    """
    applied: dict[str, list[str]] = {}
    for boundary, schema in (db.boundaries if boundaries is None else boundaries).items():
        try:
            async with db.pool.connection() as conn, conn.transaction():
                applied[schema] = await migrate_schema(conn, schema, admin=boundary == admin_boundary)
        except psycopg.Error as exc:
            raise StartupError(f"cannot migrate schema {schema!r} of boundary {boundary!r}: {exc}") from exc
    return applied


async def migrate_schema(conn: psycopg.AsyncConnection[TupleRow], schema: str, *, admin: bool = False) -> list[str]:
    """Create ``schema`` if missing and bring it up to date as a boundary's (and, if ``admin``, as
    the admin boundary's), in the transaction open on ``conn``. Returns the migrations applied.

    Raises StartupError for a schema newer than this Orisun or a function that cannot be applied
    (nothing is applied then: the caller's transaction rolls back), psycopg.Error otherwise.
    """
    wanted = [BOUNDARY, ADMIN] if admin else [BOUNDARY]
    kinds = {kind: load_migrations(kind) for kind in wanted}
    functions = [f for kind in wanted for f in load_functions(kind)]
    applied: list[str] = []
    # One lock per schema, released at commit; hashtextextended gives a stable bigint key.
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", ("orisun.migrate." + schema,)
    )
    await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    await conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
    await conn.execute(
        """
        CREATE TABLE IF NOT EXISTS orisun_migrations (
            kind       text NOT NULL,
            version    integer NOT NULL,
            name       text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (kind, version)
        )
        """
    )
    cursor = await conn.execute("SELECT kind, max(version) FROM orisun_migrations GROUP BY kind")
    done = {kind: version for kind, version in await cursor.fetchall()}
    for kind, migrations in kinds.items():
        current = done.get(kind, 0)
        if current > len(migrations):
            raise StartupError(
                f"schema {schema!r} has {kind} migration {current}, newer than this Orisun knows "
                f"({len(migrations)}); run a newer Orisun"
            )
        for migration in migrations[current:]:
            await conn.execute(migration.sql.encode())
            await conn.execute(
                "INSERT INTO orisun_migrations (kind, version, name) VALUES (%s, %s, %s)",
                (kind, migration.version, migration.name),
            )
            applied.append(f"{kind}/{migration.version:04d}_{migration.name}")
    # Every start, also when no migration was due: an upgraded Orisun brings new function
    # bodies without a new migration. Under the same lock, so racing nodes replace them one
    # after the other (concurrent CREATE OR REPLACE of one function can fail with "tuple
    # concurrently updated"); sessions running the old body replan at their next call.
    for function in functions:
        try:
            await conn.execute(function.sql.encode())
        except psycopg.Error as exc:
            raise StartupError(
                f"cannot apply sql/functions/{function.kind}/{function.name}.sql to schema {schema!r}: {exc} "
                "(a changed signature needs a migration that drops the old function)"
            ) from exc
    # Back to the connection's own search path for the rest of the caller's transaction.
    await conn.execute("RESET search_path")
    if applied:
        logger.info("Schema {} migrated: {}", schema, ", ".join(applied))
    return applied

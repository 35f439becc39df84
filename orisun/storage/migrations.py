"""Versioned schema migrations, one object per ``.sql`` file under ``orisun/storage/sql``.

``sql/boundary/`` is applied to every boundary's schema, ``sql/admin/`` to the admin boundary's
schema as well. Files are named ``NNNN_what.sql`` and applied in order; each schema records what
it has in its own ``orisun_migrations`` table. The files name no schema: they run with
``search_path`` set to the target schema, so one file serves every boundary.

Safe when several Orisun nodes start at once against one database: each schema is migrated in
one transaction holding a transaction-scoped advisory lock for that schema, so a second node
waits, then finds the work done. A failed migration rolls back whole.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import psycopg
from loguru import logger
from psycopg import sql

from orisun.errors import StartupError
from orisun.storage.database import Database

_FILE_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
BOUNDARY = "boundary"
ADMIN = "admin"


@dataclass(frozen=True)
class Migration:
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


async def migrate(db: Database, admin_boundary: str) -> dict[str, list[str]]:
    """Create every boundary's schema if missing and bring it up to date.

    Returns, per schema, the names of the migrations this call applied (empty when up to date).
    """
    kinds = {BOUNDARY: load_migrations(BOUNDARY), ADMIN: load_migrations(ADMIN)}
    applied: dict[str, list[str]] = {}
    for boundary, schema in db.boundaries.items():
        wanted = [BOUNDARY, ADMIN] if boundary == admin_boundary else [BOUNDARY]
        try:
            applied[schema] = await _migrate_schema(db, schema, {k: kinds[k] for k in wanted})
        except psycopg.Error as exc:
            raise StartupError(f"cannot migrate schema {schema!r} of boundary {boundary!r}: {exc}") from exc
    return applied


async def _migrate_schema(db: Database, schema: str, kinds: dict[str, list[Migration]]) -> list[str]:
    applied: list[str] = []
    async with db.pool.connection() as conn, conn.transaction():
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
    if applied:
        logger.info("Schema {} migrated: {}", schema, ", ".join(applied))
    return applied

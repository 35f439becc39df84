"""Migrations: every boundary gets its schema and tables; re-running and racing nodes are safe."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from orisun.errors import NotFound, StartupError
from orisun.storage.database import Database
from orisun.storage.migrations import ADMIN, BOUNDARY, load_migrations, migrate

pytestmark = pytest.mark.timeout(60)

BOUNDARIES = {"users": "test2", "orders": "orders", "orisun_admin": "admin"}


async def _migrate_once(conninfo: str) -> dict[str, list[str]]:
    db = Database(conninfo, BOUNDARIES, pool_size=2)
    await db.open(10)
    try:
        return await migrate(db, "orisun_admin")
    finally:
        await db.close()


def _tables(conninfo: str) -> dict[str, set[str]]:
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema = ANY(%s)",
            (list(BOUNDARIES.values()),),
        ).fetchall()
    tables: dict[str, set[str]] = {}
    for schema, table in rows:
        tables.setdefault(schema, set()).add(table)
    return tables


def test_every_boundary_gets_its_schema_and_the_admin_boundary_gets_users(database: str) -> None:
    applied = asyncio.run(_migrate_once(database))
    boundary_count = len(load_migrations(BOUNDARY))
    assert len(applied["test2"]) == boundary_count
    assert len(applied["admin"]) == boundary_count + len(load_migrations(ADMIN))
    tables = _tables(database)
    for schema in ("test2", "orders", "admin"):
        assert {"events", "event_tags", "head", "orisun_migrations"} <= tables[schema]
    assert "users" in tables["admin"]
    assert "users" not in tables["test2"]


def test_applying_twice_changes_nothing(database: str) -> None:
    asyncio.run(_migrate_once(database))
    with psycopg.connect(database) as conn:
        before = conn.execute("SELECT kind, version, applied_at FROM admin.orisun_migrations ORDER BY 1, 2").fetchall()
    again = asyncio.run(_migrate_once(database))
    assert again == {"test2": [], "orders": [], "admin": []}
    with psycopg.connect(database) as conn:
        after = conn.execute("SELECT kind, version, applied_at FROM admin.orisun_migrations ORDER BY 1, 2").fetchall()
    assert before == after


def test_concurrent_nodes_migrate_once(database: str) -> None:
    async def race() -> list[dict[str, list[str]]]:
        return await asyncio.gather(*(_migrate_once(database) for _ in range(4)))

    results = asyncio.run(race())
    # Exactly one racer applied each schema's migrations; the others found them done.
    for schema in BOUNDARIES.values():
        appliers = [r[schema] for r in results if r[schema]]
        assert len(appliers) == 1, (schema, results)
    with psycopg.connect(database) as conn:
        count = conn.execute("SELECT count(*) FROM orders.orisun_migrations").fetchone()
    assert count is not None and count[0] == len(load_migrations(BOUNDARY))


def test_a_schema_from_a_newer_orisun_is_refused(database: str) -> None:
    asyncio.run(_migrate_once(database))
    with psycopg.connect(database) as conn:
        conn.execute("INSERT INTO orders.orisun_migrations (kind, version, name) VALUES ('boundary', 999, 'future')")
    with pytest.raises(StartupError, match="newer"):
        asyncio.run(_migrate_once(database))


def test_an_unknown_boundary_is_not_found() -> None:
    db = Database("host=127.0.0.1", BOUNDARIES)
    assert db.schema("users") == "test2"
    with pytest.raises(NotFound, match="payments"):
        db.schema("payments")

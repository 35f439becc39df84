"""Migrations: every boundary gets its schema and tables; re-running and racing nodes are safe."""

from __future__ import annotations

import asyncio
import fnmatch
import tomllib
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from orisun.errors import NotFound, StartupError
from orisun.storage.database import Database
from orisun.storage.migrations import ADMIN, BOUNDARY, load_functions, load_migrations, migrate

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
    """Without a catalog to ask (no lookup set), only the configured boundaries resolve; with the
    catalog, tests/test_boundaries.py."""
    db = Database("host=127.0.0.1", BOUNDARIES, pool_size=1)
    assert asyncio.run(db.resolve("users")) == "test2"
    with pytest.raises(NotFound, match="payments"):
        asyncio.run(db.resolve("payments"))


Functions = dict[str, tuple[str, str, list[str] | None]]


def _functions(conninfo: str, schema: str) -> Functions:
    """signature -> (name, body, per-function settings) of every function in ``schema``."""
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(
            "SELECT p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')', p.proname, p.prosrc,"
            " p.proconfig FROM pg_proc p WHERE p.pronamespace = %s::regnamespace",
            (schema,),
        ).fetchall()
    return {signature: (name, body, config) for signature, name, body, config in rows}


def _assert_functions_are_the_files(conninfo: str) -> None:
    boundary = {f.name: f.sql for f in load_functions(BOUNDARY)}
    admin = {f.name: f.sql for f in load_functions(ADMIN)}
    for schema, files in (("test2", boundary), ("orders", boundary), ("admin", boundary | admin)):
        functions = _functions(conninfo, schema)
        # One function per file, named after it, and none without a file (a changed signature
        # without a migration dropping the old one would leave an overload here).
        assert sorted(name for name, _, _ in functions.values()) == sorted(files), (schema, functions.keys())
        for signature, (name, body, config) in functions.items():
            assert body in files[name], (schema, signature)
            assert "application_name=stale" not in (config or []), (schema, signature)


def test_every_function_file_is_applied_to_a_fresh_database(database: str) -> None:
    assert {f.name for f in load_functions(BOUNDARY)} >= {
        "append_events", "last_matching_version"}
    assert {f.name for f in load_functions(ADMIN)} == {"notify_users_changed", "notify_boundary_added"}
    asyncio.run(_migrate_once(database))
    _assert_functions_are_the_files(database)
    # The write function runs without JIT whatever the server's setting.
    for name in ("append_events",):
        config = next(c for n, _, c in _functions(database, "orders").values() if n == name)
        assert config is not None and "jit=off" in config, (name, config)


def test_an_already_migrated_database_gets_the_functions_of_the_files(database: str) -> None:
    """A database migrated by an earlier Orisun (its functions as the numbered migrations left
    them) is brought to the files' functions at the next start, with no new migration."""
    asyncio.run(_migrate_once(database))
    old = {m.name: m.sql for m in load_migrations(BOUNDARY)}
    with psycopg.connect(database, autocommit=True) as conn:
        for schema in BOUNDARIES.values():
            with conn.transaction():
                conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
                conn.execute(old["store_events"].replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION").encode())
                conn.execute(old["append_events"].replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION").encode())
                # As the last release left it: at boundary migration 0009, with store_events,
                # notify_appended and its trigger on the head.
                conn.execute(old["notify_appended"].replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION").encode())
                conn.execute(old["head_appended_trigger"].encode())
                conn.execute("DELETE FROM orisun_migrations WHERE kind = 'boundary' AND version > 9")
            # And mark every function, to see each one replaced (CREATE OR REPLACE resets settings).
            for signature in _functions(database, schema):
                conn.execute(sql.SQL("ALTER FUNCTION {}.{} SET application_name = 'stale'").format(
                    sql.Identifier(schema), sql.SQL(signature)))
    stale = _functions(database, "orders")
    assert any("application_name=stale" in (config or []) for _, _, config in stale.values())
    store_events = next(body for name, body, _ in stale.values() if name == "store_events")
    assert "p_data[w.off + k]" in store_events  # the old, quadratic body is back
    dropped = ["boundary/0010_append_events_alone"]
    assert asyncio.run(_migrate_once(database)) == {"test2": dropped, "orders": dropped, "admin": dropped}
    _assert_functions_are_the_files(database)
    with psycopg.connect(database) as conn:
        triggers = conn.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = 'orders.head'::regclass").fetchall()
    assert triggers == []  # append_events notifies itself


def test_restarts_leave_the_functions_as_they_are(database: str) -> None:
    asyncio.run(_migrate_once(database))
    before = {schema: _functions(database, schema) for schema in BOUNDARIES.values()}
    for _ in range(2):
        asyncio.run(_migrate_once(database))
        assert {schema: _functions(database, schema) for schema in BOUNDARIES.values()} == before


def test_a_function_whose_return_type_changed_without_a_migration_fails_the_start(database: str) -> None:
    """CREATE OR REPLACE cannot change a return type: the start fails naming the file, and the
    schema's migration transaction leaves nothing half done."""
    asyncio.run(_migrate_once(database))
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("DROP FUNCTION orders.last_matching_version(text, jsonb)")
        conn.execute("CREATE FUNCTION orders.last_matching_version(p_stream text, p_criteria jsonb) RETURNS bigint"
                     " LANGUAGE sql AS 'SELECT 0::bigint'")
    with pytest.raises(StartupError, match=r"last_matching_version\.sql.*orders"):
        asyncio.run(_migrate_once(database))
    functions = _functions(database, "orders")
    assert functions["last_matching_version(p_stream text, p_criteria jsonb)"][1] == "SELECT 0::bigint"


def test_the_package_data_covers_every_sql_file() -> None:
    """The wheel ships what pyproject's package-data patterns match (the executable's spec takes
    every .sql under orisun/storage/sql): a new folder of SQL files must be listed."""
    root = Path(__file__).resolve().parent.parent
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["orisun"]
    package = root / "orisun"
    files = sorted(p.relative_to(package).as_posix() for p in (package / "storage" / "sql").rglob("*.sql"))
    assert any("functions/" in f for f in files)
    # fnmatch's * also matches "/": compare the depth too, as setuptools' glob does.
    missing = [f for f in files
               if not any(fnmatch.fnmatchcase(f, p) and f.count("/") == p.count("/") for p in patterns)]
    assert missing == []

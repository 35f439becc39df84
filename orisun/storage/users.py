"""The users table of the admin boundary, and the notifications of its changes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import sql
from psycopg.rows import class_row

from orisun.storage._errors import translate_errors
from orisun.storage.database import Database
from orisun.storage.notifications import listen

USERS_CHANGED_CHANNEL = "orisun_users_changed"


@dataclass(frozen=True)
class UserRecord:
    """A row of the admin boundary's ``users`` table, password hash included."""

    id: str
    name: str
    username: str
    password_hash: str
    roles: list[str]
    created_at: datetime
    updated_at: datetime  # the creation time until the password changes


class UserStore:
    """CRUD on ``<admin schema>.users``. Knows nothing of hashing: it stores what it is given."""

    def __init__(self, db: Database, schema: str) -> None:
        self._db = db
        self.schema = schema
        self._table = sql.Identifier(schema, "users")
        # The columns of a UserRecord, in its field order, for every read.
        self._select = sql.SQL(
            "SELECT id::text, name, username, password_hash, roles, created_at, updated_at FROM {}"
        ).format(self._table)

    async def get(self, username: str) -> UserRecord | None:
        query = self._select + sql.SQL(" WHERE username = %s")
        with translate_errors("reading a user"):
            async with self._db.pool.connection() as conn:
                cur = conn.cursor(row_factory=class_row(UserRecord))
                await cur.execute(query, (username,))
                return await cur.fetchone()

    async def get_by_id(self, user_id: str) -> UserRecord | None:
        """The user with this id; ``user_id`` must be a UUID (the caller checks)."""
        query = self._select + sql.SQL(" WHERE id = %s::uuid")
        with translate_errors("reading a user"):
            async with self._db.pool.connection() as conn:
                cur = conn.cursor(row_factory=class_row(UserRecord))
                await cur.execute(query, (user_id,))
                return await cur.fetchone()

    async def list(self) -> list[UserRecord]:
        query = self._select + sql.SQL(" ORDER BY username")
        with translate_errors("listing users"):
            async with self._db.pool.connection() as conn:
                cur = conn.cursor(row_factory=class_row(UserRecord))
                await cur.execute(query)
                return await cur.fetchall()

    async def count(self) -> int:
        query = sql.SQL("SELECT count(*) FROM {}").format(self._table)
        with translate_errors("counting users"):
            async with self._db.pool.connection() as conn:
                cur = await conn.execute(query)
                row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    async def create(self, name: str, username: str, password_hash: str, roles: Sequence[str]) -> bool:
        """Insert a user; False when the username is taken (nothing changes then)."""
        query = sql.SQL(
            "INSERT INTO {} (name, username, password_hash, roles) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (username) DO NOTHING"
        ).format(self._table)
        with translate_errors("creating a user"):
            async with self._db.pool.connection() as conn:
                cur = await conn.execute(query, (name, username, password_hash, list(roles)))
                return cur.rowcount == 1

    async def set_password(self, username: str, password_hash: str) -> bool:
        query = sql.SQL(
            "UPDATE {} SET password_hash = %s, updated_at = now() WHERE username = %s"
        ).format(self._table)
        with translate_errors("changing a password"):
            async with self._db.pool.connection() as conn:
                cur = await conn.execute(query, (password_hash, username))
                return cur.rowcount == 1

    async def delete(self, username: str) -> bool:
        query = sql.SQL("DELETE FROM {} WHERE username = %s").format(self._table)
        with translate_errors("deleting a user"):
            async with self._db.pool.connection() as conn:
                cur = await conn.execute(query, (username,))
                return cur.rowcount == 1


async def listen_for_user_changes(
    conninfo: str, schema: str, changed: Callable[[str | None], None], *, ready: asyncio.Event | None = None
) -> None:
    """Call ``changed(username)`` for every update or delete of a user in ``schema``, forever.

    ``changed(None)`` means every cached credential must go: the listening connection was
    (re)made, and a change may have been missed while it was down; or the change was to a user
    whose name is too long for a notification (admin/0004). Cancel the task to stop.
    """

    def on_payload(payload: dict[str, Any] | None) -> None:
        if payload is None:
            changed(None)
        elif payload.get("schema") == schema:
            username = payload.get("username")
            changed(username if isinstance(username, str) else None)

    await listen(conninfo, USERS_CHANGED_CHANNEL, on_payload, ready=ready)

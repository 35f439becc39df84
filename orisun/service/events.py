"""The event store's core: SaveEvents and GetEvents in terms of ``orisun.model``."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

from orisun.errors import PermissionDenied
from orisun.model import Event, ReadRequest, SaveRequest, User, WriteResult
from orisun.service import validation
from orisun.storage.database import Database
from orisun.storage.events import read_events
from orisun.storage.writer import BoundaryWriter


class EventStore:
    def __init__(
        self, db: Database, *, max_event_bytes: int, on_commit: Callable[[str, list[Event]], None] | None = None
    ) -> None:
        self._db = db
        self._max_event_bytes = max_event_bytes
        self._on_commit = on_commit  # (schema, events stored): see BoundaryWriter
        self._writers: dict[str, BoundaryWriter] = {}

    def _writer(self, schema: str) -> BoundaryWriter:
        writer = self._writers.get(schema)
        if writer is None:
            writer = self._writers[schema] = BoundaryWriter(self._db, schema, on_commit=self._on_commit)
        return writer

    async def save(self, user: User, request: SaveRequest) -> WriteResult:
        if not user.can_write:
            raise PermissionDenied(f"user {user.username!r} may not write events (needs role ADMIN or OPERATIONS)")
        validation.check_boundary(request.boundary)
        schema = self._db.schema(request.boundary)
        validation.check_save(request, max_event_bytes=self._max_event_bytes)
        return await self._writer(schema).append(request)

    async def read(self, user: User, request: ReadRequest) -> list[Event]:
        validation.check_boundary(request.boundary)
        schema = self._db.schema(request.boundary)
        validation.check_read(request)
        if request.count == 0:
            request = dataclasses.replace(request, count=validation.DEFAULT_COUNT)
        return await read_events(self._db, schema, request)

    async def close(self) -> None:
        await asyncio.gather(*(writer.close() for writer in self._writers.values()))

"""The event store's core: SaveEvents and GetEvents in terms of ``orisun.model``."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Protocol

from orisun.errors import PermissionDenied, quoted
from orisun.model import Event, EventRow, ReadRequest, SaveRequest, User, WriteResult
from orisun.service import validation
from orisun.storage.database import Database
from orisun.storage.events import read_events, read_page_rows
from orisun.storage.writer import BoundaryWriter


@dataclasses.dataclass(frozen=True)
class Page:
    """What a page holds: ``count`` events; ``truncated``: the next event existed but did not fit."""

    count: int
    truncated: bool


class PageSink(Protocol):
    """Where read_page encodes a page (transport's PageBuilder)."""

    def add(self, rows: list[EventRow]) -> int:
        """Encode ``rows`` after the events already added; the page's size in bytes so far."""

    def cut(self, max_bytes: int) -> int:
        """Keep the longest prefix of the page of at most ``max_bytes``, but at least one event
        (only the last ``add`` may have passed the limit); the number of events kept."""


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
            raise PermissionDenied(f"user {quoted(user.username)} may not write events "
                                   "(needs role ADMIN or OPERATIONS)")
        validation.check_boundary(request.boundary)
        schema = self._db.schema(request.boundary)
        validation.check_save(request, max_event_bytes=self._max_event_bytes)
        return await self._writer(schema).append(request)

    def _read_schema(self, request: ReadRequest) -> str:
        """The schema a read goes to, once the request is valid (every read checks the same)."""
        validation.check_boundary(request.boundary)
        schema = self._db.schema(request.boundary)
        validation.check_read(request)
        return schema

    async def read(self, user: User, request: ReadRequest) -> list[Event]:
        schema = self._read_schema(request)
        if request.count == 0:
            request = dataclasses.replace(request, count=validation.DEFAULT_COUNT)
        return await read_events(self._db, schema, request)

    async def read_page(self, user: User, request: ReadRequest, *, sink: PageSink, max_bytes: int) -> Page:
        """At most ``request.count`` events, encoded into ``sink``, of at most ``max_bytes``
        together (by the sizes ``sink`` reports), except that a page always holds its first event.
        ``sink`` gets the events as rows (EventRow): a page is converted without an Event per row.

        One statement: PostgreSQL returns the rows while a lower bound of their encoded size stays
        within ``max_bytes`` (storage's page_statement), so a page cut by its size never loads
        ``count`` large events; the sink measures the real size and cuts exactly.
        """
        schema = self._read_schema(request)
        if request.count == 0:
            request = dataclasses.replace(request, count=validation.DEFAULT_COUNT)
        rows, cut = await read_page_rows(self._db, schema, request, max_bytes)
        used = sink.add(rows)
        if used > max_bytes:
            kept = sink.cut(max_bytes)
            if kept < len(rows):
                return Page(kept, truncated=True)
            # A lone first event larger than max_bytes: kept; whether another follows decides
            # `truncated`.
        return Page(len(rows), truncated=cut)

    async def close(self) -> None:
        await asyncio.gather(*(writer.close() for writer in self._writers.values()))

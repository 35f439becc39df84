"""The event store's core: SaveEvents and GetEvents in terms of ``orisun.model``."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Protocol

from orisun.errors import PermissionDenied, quoted
from orisun.model import Event, EventRow, ReadRequest, SaveRequest, User, WriteResult, row_position
from orisun.service import validation
from orisun.storage.database import Database
from orisun.storage.events import read_events, read_rows
from orisun.storage.writer import BoundaryWriter

# A page of GetEvents is read from PostgreSQL in chunks, so that a page cut by its size does not
# first load all `count` events (10,000 events of 1 MB would be 10 GB): the first chunk is a whole
# default page (one statement, as before, for the usual reads), the next ones are sized from the
# events seen so far to fill what is left, and hold at most MAX_CHUNK events, which bounds the
# excess when large events follow small ones.
FIRST_CHUNK = validation.DEFAULT_COUNT
MAX_CHUNK = 1_000


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

    def writing(self, schema: str) -> bool:
        """Whether this node's writer of ``schema`` has a group on its way to PostgreSQL."""
        writer = self._writers.get(schema)
        return writer is not None and writer.busy

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

        The page is read in chunks, each continuing after the last event read. That is the same
        page one statement would read: positions are assigned in commit order, so whatever was
        committed in between comes after every event already read (ASC) or above the cursor (DESC).
        """
        schema = self._read_schema(request)
        count = request.count or validation.DEFAULT_COUNT
        read = 0  # events in the sink
        part = dataclasses.replace(request, count=min(count, FIRST_CHUNK))
        while True:
            rows = await read_rows(self._db, schema, part)
            used = sink.add(rows)
            read += len(rows)
            if used > max_bytes:
                kept = sink.cut(max_bytes)
                if kept < read:
                    return Page(kept, truncated=True)
                # A lone first event larger than max_bytes: kept; whether another follows decides
                # `truncated`.
            if len(rows) < part.count or read == count:
                return Page(read, truncated=False)
            average = used / read
            chunk = min(count - read, MAX_CHUNK, int((max_bytes - used) / average) + 1)
            part = dataclasses.replace(request, after=row_position(rows[-1]), count=max(1, chunk))

    async def close(self) -> None:
        await asyncio.gather(*(writer.close() for writer in self._writers.values()))

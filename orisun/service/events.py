"""The event store's core: SaveEvents and GetEvents in terms of ``orisun.model``."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable
from typing import Protocol, cast

from orisun.errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied, quoted
from orisun.metrics import Counts
from orisun.model import Event, EventRow, ReadRequest, SaveRequest, User, WriteResult, row_position
from orisun.service import validation
from orisun.storage.database import Database
from orisun.storage.events import read_events, read_page_rows, read_rows
from orisun.storage.writer import BoundaryWriter

# A lower bound of what an event's protobuf encoding adds to its data, metadata and tags: the
# entry's field tag and length (2), event_id (2 + 36), event_type and stream_id (3 each at least:
# never empty), the position (2) with both positions (>= 1: 2 each), date_created (2) with its
# seconds (2). Data's and metadata's field tags and lengths, version and nanos may be absent.
EVENT_MIN_BYTES = 56


def _min_bytes(data: str, metadata: str, tags: str) -> int:
    """A lower bound of what data, metadata and tags (JSON text) add to an encoded event: their
    bytes, and per tag its entry's field tag and length and its key's (the value's are absent
    when it is empty). As storage counts a large row."""
    return (len(data.encode()) + len(metadata.encode())
            + sum(4 + len(key.encode()) + len(value.encode()) for key, value in json.loads(tags)))


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
    """SaveEvents and GetEvents: checks the caller, validates, and hands writes to each boundary's
    writer (one group-committing writer per boundary); both are counted in ``counts`` (orisun.metrics)."""

    def __init__(
        self, db: Database, *, max_event_bytes: int, on_commit: Callable[[str, list[Event]], None] | None = None,
        counts: Counts | None = None,
    ) -> None:
        self._db = db
        self._max_event_bytes = max_event_bytes
        self._on_commit = on_commit  # (schema, events stored): see BoundaryWriter
        self._writers: dict[str, BoundaryWriter] = {}
        self.counts = counts if counts is not None else Counts()

    def _writer(self, schema: str, boundary: str) -> BoundaryWriter:
        writer = self._writers.get(schema)
        if writer is None:
            writer = self._writers[schema] = BoundaryWriter(self._db, schema, on_commit=self._on_commit,
                                                            counts=self.counts, boundary=boundary)
        return writer

    def writing(self, schema: str) -> bool:
        """Whether this node's writer of ``schema`` has a group on its way to PostgreSQL."""
        writer = self._writers.get(schema)
        return writer is not None and writer.busy

    async def save(self, user: User, request: SaveRequest) -> WriteResult:
        if not user.can_write:
            raise PermissionDenied(f"user {quoted(user.username)} may not write events "
                                   "(needs role ADMIN or OPERATIONS)")
        counts = self.counts
        began = time.perf_counter()
        try:
            validation.check_boundary(request.boundary)
            schema = await self._db.resolve(request.boundary)
            validation.check_save(request, max_event_bytes=self._max_event_bytes)
        except (InvalidArgument, NotFound):
            # Labelled by its boundary only when that exists: a label per name a client makes up
            # would grow the scrape without bound.
            counts.outcome(request.boundary if request.boundary in self._db.boundaries else "", "invalid")
            raise
        try:
            return await self._writer(schema, request.boundary).append(request)
        except AlreadyExists:
            raise  # a conflict or a duplicate, counted by the writer
        except Exception:
            counts.outcome(request.boundary, "error")
            raise
        finally:
            counts.append_duration.observe(time.perf_counter() - began)

    async def _read_schema(self, request: ReadRequest) -> str:
        """The schema a read goes to, once the request is valid (every read checks the same)."""
        validation.check_boundary(request.boundary)
        schema = await self._db.resolve(request.boundary)
        validation.check_read(request)
        return schema

    def _counted_read(self, boundary: str, began: float) -> None:
        counts = self.counts
        counts.reads[boundary] = counts.reads.get(boundary, 0) + 1
        counts.read_duration.observe(time.perf_counter() - began)

    async def read(self, user: User, request: ReadRequest) -> list[Event]:
        """The dashboard's read (not counted: orisun_read_requests_total counts GetEvents)."""
        schema = await self._read_schema(request)
        if request.count == 0:
            request = dataclasses.replace(request, count=validation.DEFAULT_COUNT)
        return await read_events(self._db, schema, request)

    async def read_page(self, user: User, request: ReadRequest, *, sink: PageSink, max_bytes: int) -> Page:
        """At most ``request.count`` events, encoded into ``sink``, of at most ``max_bytes``
        together (by the sizes ``sink`` reports), except that a page always holds its first event.
        ``sink`` gets the events as rows (EventRow): a page is converted without an Event per row.

        One statement in the usual case: ``count`` rows, of which PostgreSQL leaves out those
        larger than ``max_bytes / count`` (the rows below it fit together), telling only their size
        (storage's read_page_rows). From the first large row on, a second statement reads exactly
        the events whose sizes, counted low, fit what is left of the page, and the first that does
        not: a page never holds far more than ``max_bytes``, however large and many its events.
        Both read the same page one statement would: positions are assigned in commit order, so
        whatever was committed in between comes after every event already read (ASC) or above
        the cursor (DESC).
        """
        began = time.perf_counter()
        schema = await self._read_schema(request)
        try:
            return await self._read_page(schema, request, sink, max_bytes)
        finally:
            self._counted_read(request.boundary, began)

    async def _read_page(self, schema: str, request: ReadRequest, sink: PageSink, max_bytes: int) -> Page:
        if request.count == 0:
            request = dataclasses.replace(request, count=validation.DEFAULT_COUNT)
        rows = await read_page_rows(self._db, schema, request, max(0, max_bytes) // request.count)
        first_large = next((i for i, row in enumerate(rows) if row[6] is None), len(rows))
        read = first_large
        used = sink.add(cast(list[EventRow], rows[:read]))
        if read < len(rows) and used <= max_bytes:
            # Through the first event that surely does not fit (its size counted low) or the end.
            room = max_bytes - used
            take = 0
            for _, _, _, _, _, _, data, metadata, tags, _ in rows[read:]:
                room -= EVENT_MIN_BYTES + (int(metadata) if data is None else _min_bytes(data, metadata, tags or "[]"))
                take += 1
                if room < 0:
                    break
            after = row_position(cast(EventRow, rows[read - 1])) if read else request.after
            more = await read_rows(self._db, schema, dataclasses.replace(request, after=after, count=take))
            used = sink.add(more)
            read += len(more)
        if used > max_bytes:
            kept = sink.cut(max_bytes)
            if kept < read:
                return Page(kept, truncated=True)
            # A lone first event larger than max_bytes: kept; whether another follows decides
            # `truncated`.
        return Page(read, truncated=read < len(rows))

    async def close(self) -> None:
        await asyncio.gather(*(writer.close() for writer in self._writers.values()))

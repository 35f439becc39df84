"""Group commit: one writer per boundary appends every waiting SaveEvents request in one call.

While one group is being committed, new requests queue up; the next group takes all of them (up
to a size bound), so under load a single transaction and a single round trip carry many requests
(docs/contract.md §2). Each request still gets its own answer: the ``append_events`` function
checks them one after another against the state that includes the requests before it.

Positions are assigned by PostgreSQL under the boundary's head-row lock, not here, so several
Orisun nodes writing one boundary keep one commit-ordered sequence.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from json.encoder import encode_basestring_ascii as _quote

import psycopg
from loguru import logger
from psycopg import sql
from psycopg.rows import TupleRow

from orisun.errors import AlreadyExists, Unavailable, quoted
from orisun.metrics import Counts
from orisun.model import (
    EVENT_TYPE_TAG,
    EVENT_TYPE_TAG_ALIASES,
    Event,
    Position,
    Query,
    SaveRequest,
    Tag,
    WriteResult,
    narrowing,
)
from orisun.storage._errors import translate_errors
from orisun.storage.database import Database

# append_events' outcomes, counted as orisun_append_requests_total's (a bug's unknown one is not).
_COUNTED = frozenset(("ok", "idempotent", "conflict", "duplicate"))
# A group is cut at this many events (a single request may exceed it and goes alone).
MAX_GROUP_EVENTS = 20_000


def criteria_json(query: Query) -> str:
    """A query as the SQL functions take it: [[[key, value], ...], ...], event_type spelled once."""
    return json.dumps(
        [
            [[EVENT_TYPE_TAG if tag.key in EVENT_TYPE_TAG_ALIASES else tag.key, tag.value] for tag in c.tags]
            for c in query.criteria
        ]
    )


@dataclass
class _Pending:
    request: SaveRequest
    future: asyncio.Future[WriteResult]


class BoundaryWriter:
    """Appends to one boundary's schema; call ``append`` from any number of tasks."""

    def __init__(
        self, db: Database, schema: str, *, on_commit: Callable[[str, list[Event]], None] | None = None,
        counts: Counts | None = None, boundary: str = "",
    ) -> None:
        """``counts``: where each group's size and each request's outcome (and events stored) are
        counted, under the label ``boundary``."""
        self._db = db
        self._schema = schema
        self._counts = counts if counts is not None else Counts()
        self._boundary = boundary
        # Handed (schema, the events stored, in position order) right after each commit: the live
        # feed publishes them and local subscribers get them at once, with no poll and no re-read.
        self._on_commit = on_commit
        self._queue: collections.deque[_Pending] = collections.deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        # True from sending a group until its hand-off to ``on_commit`` is done: a NOTIFY of a
        # commit seen meanwhile is most likely this group's, whose events are about to be handed over.
        self.busy = False
        # A connection of the writer's own, not a pool checkout per group: the pool's checks and
        # bookkeeping cost as much as a small group's statement. Made on first use and after a drop.
        self._conn: psycopg.AsyncConnection[TupleRow] | None = None
        # Kept with the connection: one cursor and the statement rendered once, so psycopg reuses
        # its parameter dumpers and its parsed query instead of setting them up for every group.
        self._cursor: psycopg.AsyncCursor[TupleRow] | None = None
        self._query = b""
        self._statement = sql.SQL(
            # now() is the transaction's timestamp: the created_at the function stored for the events.
            "SELECT r_request, r_outcome, r_commit, r_prepare, r_version, r_detail, now() FROM {}.append_events("
            "%b::text[], %b::int4[], %b::text[]::jsonb[], %b::int4[], %b::uuid[], %b::text[], %b::text[], "
            "%b::text[], %b::text[]::jsonb[])"
        ).format(sql.Identifier(schema))

    async def append(self, request: SaveRequest) -> WriteResult:
        """Append one validated request; its result, or AlreadyExists / Unavailable.

        If the caller is cancelled while waiting, the request may still be committed: a client
        that lost its answer retries with the same event ids and gets the original result.
        """
        if self._closed:
            raise Unavailable("the server is shutting down; retry on another node or later")
        future: asyncio.Future[WriteResult] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(request, future))
        self._wakeup.set()
        if self._task is None or self._task.done():  # first use, or a bug ended the loop: go on
            self._task = asyncio.create_task(self._run(), name=f"writer {self._schema}")
        return await future

    async def close(self, grace: float = 10.0) -> None:
        """Commit what is queued (within ``grace`` seconds), then stop; later appends are refused."""
        self._closed = True
        self._wakeup.set()
        if self._task is not None:
            done, _ = await asyncio.wait([self._task], timeout=grace)
            if not done:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        for pending in self._queue:
            _settle(pending, Unavailable("the server is shutting down; retry"))
        self._queue.clear()
        await self._drop_connection()

    async def _drop_connection(self) -> None:
        conn, self._conn, self._cursor = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                group = self._take_group()
                if not group:
                    continue
                self.busy = True
                try:
                    await self._commit_group(group)
                except asyncio.CancelledError:
                    # Outcome unknown (it may have committed): the client may retry safely.
                    for pending in group:
                        _settle(pending, Unavailable("the server stopped during this write; retry"))
                    raise
                except Exception as exc:  # a bug after the commit: answer everyone, keep serving
                    logger.exception("handling a group for {} failed", self._schema)
                    for pending in group:
                        _settle(pending, exc)
                finally:
                    self.busy = False
            if self._closed:
                return

    def _take_group(self) -> list[_Pending]:
        group: list[_Pending] = []
        events = 0
        while self._queue:
            pending = self._queue[0]
            if pending.future.done():  # its caller gave up before it was sent: nothing to do
                self._queue.popleft()
                continue
            size = len(pending.request.events)
            if group and events + size > MAX_GROUP_EVENTS:
                break
            group.append(self._queue.popleft())
            events += size
        return group

    async def _commit_group(self, group: list[_Pending]) -> None:
        self._counts.group_size.observe(len(group))
        try:
            rows = await self._execute([p.request for p in group])
        except Unavailable as exc:
            for pending in group:
                _settle(pending, exc)
            return
        except Exception as exc:  # a bug, or a database error no check anticipated
            if len(group) == 1:
                logger.exception("append to {} failed", self._schema)
                _settle(group[0], exc)
                return
            # Should never happen (every check is in append_events); find the culprit alone
            # rather than fail the neighbours.
            logger.exception("group append to {} failed; retrying its {} requests one by one",
                             self._schema, len(group))
            for pending in group:
                await self._commit_group([pending])
            return
        committed: list[Event] = []
        counts, boundary = self._counts, self._boundary
        for pending, row in zip(group, rows, strict=True):
            outcome = _outcome(pending.request, row)
            if isinstance(row[1], str) and row[1] in _COUNTED:
                counts.outcome(boundary, row[1])
                if row[1] == "ok":
                    counts.appended[boundary] = counts.appended.get(boundary, 0) + len(pending.request.events)
            if isinstance(outcome, WriteResult) and row[1] == "ok" and self._on_commit is not None:
                created_at = row[6]
                assert isinstance(created_at, datetime)
                committed += _stored(pending.request, outcome, created_at)
            _settle(pending, outcome)
        if committed and self._on_commit is not None:
            self._on_commit(self._schema, committed)

    async def _execute(self, requests: Sequence[SaveRequest]) -> list[tuple[object, ...]]:
        streams: list[str] = []
        expected: list[int] = []
        subsets: list[str | None] = []
        counts: list[int] = []
        ids: list[uuid.UUID] = []
        types: list[str] = []
        data: list[str] = []
        metadata: list[str] = []
        tags: list[str] = []
        for request in requests:
            streams.append(request.stream)
            expected.append(request.expected_version)
            subset = narrowing(request.subset)
            subsets.append(criteria_json(subset) if subset is not None else None)
            events = request.events
            counts.append(len(events))
            ids += [uuid.UUID(e.event_id) for e in events]
            types += [e.event_type for e in events]
            data += [e.data for e in events]
            metadata += [e.metadata for e in events]
            tags += [_tags_json(e.tags) for e in events]
        params = (streams, expected, subsets, counts, ids, types, data, metadata, tags)
        reused = self._conn is not None
        try:
            return await self._call(params)
        except Unavailable:
            # A connection that died with a PostgreSQL restart fails on first use. Sending the
            # group again on a fresh one is safe even if the first attempt committed:
            # append_events recognises stored event ids and returns the original results. A
            # fresh connection that failed already says PostgreSQL is away: no second try.
            if not reused:
                raise
            logger.info("retrying a group for {} on a fresh connection", self._schema)
            return await self._call(params)

    async def _call(self, params: tuple[object, ...]) -> list[tuple[object, ...]]:
        with translate_errors(f"appending to boundary schema {self._schema}"):
            try:
                cursor = self._cursor
                if cursor is None or cursor.closed or self._conn is None or self._conn.closed:
                    await self._drop_connection()
                    self._conn = await self._db.connect()
                    self._query = self._statement.as_bytes(self._conn)
                    cursor = self._cursor = self._conn.cursor()
                await cursor.execute(self._query, params)
                return await cursor.fetchall()
            except psycopg.OperationalError:
                await self._drop_connection()  # broken, or in an unknown state: the next call makes another
                raise
            except asyncio.CancelledError:
                await asyncio.shield(self._drop_connection())  # stopped mid-statement: its state is unknown
                raise


# Why a reuse of stored event ids is not a retry (append_events' r_detail is "<id> <why>"). The
# id is a canonical UUID read from the database, so the message stays short.
_REUSE = {
    "stream": "in another stream (event ids are unique per boundary)",
    "content": (
        "with other content: a retry must resend the write unchanged (same event_type, data, metadata "
        "and tags); a new event needs a new event_id"
    ),
    "write": (
        "(event ids are unique per boundary): a retry must resend exactly the events of one earlier "
        "write, in the same order, no more and no fewer"
    ),
}


def conflict_message(stream: str, expected: int, actual: int) -> str:
    """A failed expected-version check, as clients read it (issue #15): first upstream's servers'
    exact wording, which upstream's Java client parses with the case-sensitive pattern
    ``Expected\\s+(\\d+),\\s+Actual\\s+(\\d+)``, then the lowercase (docs/contract.md §3) ``expected N,
    actual M`` with the stream's name. Both carry the same numbers, so either reading is right."""
    return (f"OptimisticConcurrencyException:StreamVersionConflict: Expected {expected}, Actual {actual} "
            f"(stream {quoted(stream)}: expected {expected}, actual {actual})")


def _outcome(request: SaveRequest, row: tuple[object, ...]) -> WriteResult | Exception:
    _, outcome, commit, prepare, version, detail = row[:6]
    if outcome in ("ok", "idempotent"):
        assert isinstance(commit, int) and isinstance(prepare, int) and isinstance(version, int)
        return WriteResult(Position(commit, prepare), version)
    if outcome == "conflict":
        assert isinstance(version, int)
        return AlreadyExists(conflict_message(request.stream, request.expected_version, version))
    if outcome == "duplicate":
        event_id, _, why = (detail if isinstance(detail, str) else "").partition(" ")
        return AlreadyExists(f"event_id {event_id} already exists {_REUSE.get(why, _REUSE['write'])}")
    return RuntimeError(f"append_events returned unknown outcome {outcome!r}")


def _tags_json(tags: Sequence[Tag]) -> str:
    """``json.dumps([[key, value], ...])``, at a fraction of its cost per event: the same C quoting
    (ASCII-only, as json.dumps), without the encoder's set-up for each call."""
    if not tags:
        return "[]"
    return "[" + ",".join(["[" + _quote(tag.key) + "," + _quote(tag.value) + "]" for tag in tags]) + "]"


# The form PostgreSQL prints a uuid in: such an id is already what GetEvents returns.
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _canonical(event_id: str) -> str:
    return event_id if _CANONICAL_UUID.fullmatch(event_id) else str(uuid.UUID(event_id))


def _stored(request: SaveRequest, result: WriteResult, created_at: datetime) -> list[Event]:
    """The events of an accepted request exactly as GetEvents will return them."""
    last = result.position.commit
    first = last - len(request.events) + 1
    first_version = result.new_stream_version - len(request.events) + 1
    return [
        Event(
            event_id=_canonical(e.event_id),  # stored as uuid: read back in canonical lowercase
            event_type=e.event_type,
            data=e.data,
            metadata=e.metadata,
            tags=e.tags,
            position=Position(last, first + i),
            created_at=created_at,
            stream=request.stream,
            version=first_version + i,
        )
        for i, e in enumerate(request.events)
    ]


def _settle(pending: _Pending, result: WriteResult | Exception) -> None:
    if pending.future.done():
        return
    if isinstance(result, Exception):
        pending.future.set_exception(result)
    else:
        pending.future.set_result(result)

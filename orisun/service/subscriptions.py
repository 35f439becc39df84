"""Catch-up subscriptions (docs/contract.md §5): history from PostgreSQL, then the live feed.

Every subscription keeps a cursor, the last position it has *examined* (matching or not), and
only ever moves it forward by consecutive positions, so it can neither skip nor repeat an event:

1. **Catch-up**: read matching events in (cursor, tail.newest] from PostgreSQL, a page at a time;
   the cursor ends at ``tail.newest`` even when the last events did not match.
2. **Live**: take the events after the cursor from the boundary's ``Tail``. A subscriber too slow
   for the tail's window goes back to step 1 (this is the back-pressure: a slow client costs a
   page of memory, never an unbounded queue).

The ``Tail`` is this node's window of the most recent events of a boundary, consecutive and in
order. This node's own commits go in at once; other nodes' arrive through the JetStream feed. A
hole in what arrives (the feed was moved forward, an event too large for NATS) is read from
PostgreSQL, and so is anything PostgreSQL reports committed that the feed has not brought within
``grace`` seconds (feed down, publisher dead), so subscribers keep getting every event even while
NATS is away.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from loguru import logger
from nats.aio.client import Client

from orisun.aio import cancel_and_wait
from orisun.errors import AlreadyExists, InvalidArgument, Unavailable, quoted
from orisun.messaging.feed import follow
from orisun.model import EVENT_TYPE_TAG_ALIASES, Event, Position, Query, User, narrowing
from orisun.service import validation
from orisun.storage.database import Database
from orisun.storage.events import read_head, read_range, read_stream_range
from orisun.storage.locks import SessionLocks

SUBSCRIBER_NAME = re.compile(r"[\x21-\x7e]{1,128}")  # printable ASCII, no spaces
PAGE = 500  # events read from PostgreSQL per catch-up round
LIVE_BATCH = 256  # events taken from the tail at once
TAIL_EVENTS = 10_000
TAIL_BYTES = 64 * 1024 * 1024
_RESTART_EVERY = 5.0  # seconds between two re-subscriptions to a quiet feed


def matches(query: Query | None, event: Event) -> bool:
    """The Python twin of the SQL tag match (storage/events.py): criteria OR'd, tags AND'd, the
    event_type pseudo-tag matching the type, stored event_type/eventType tags never matching."""
    query = narrowing(query)
    if query is None:
        return True
    tags = set(event.tags)
    return any(
        all(
            (tag.value == event.event_type) if tag.key in EVENT_TYPE_TAG_ALIASES else (tag in tags)
            for tag in criterion.tags
        )
        for criterion in query.criteria
    )


class FellBehind(Exception):
    """The tail no longer holds the position after the cursor."""


class Tail:
    """The most recent events of one boundary, consecutive, as this node's subscribers read them."""

    def __init__(
        self,
        db: Database,
        client: Client,
        boundary: str,
        schema: str,
        *,
        stall: float,
        grace: float,
        publishing: Callable[[], bool] = lambda: False,
    ) -> None:
        self._publishing = publishing  # whether this node publishes the boundary's feed
        self._db = db
        self._client = client
        self.boundary = boundary
        self._schema = schema
        self._stall = stall
        self._events: dict[int, Event] = {}
        self._bytes = 0
        self.oldest = 0  # the position before the first event held
        self.newest = 0  # the last position known and held
        self.known_head = 0  # the last position known to be committed
        self._advanced = asyncio.Event()
        self._lock = asyncio.Lock()  # one advance at a time: from the feed or from PostgreSQL
        self._grace = grace
        self._behind = asyncio.Event()  # known_head moved past newest, or _check_head
        self._check_head = False  # read the head from PostgreSQL: a notification may be lost
        self._fed = time.monotonic()  # when the feed last delivered a message
        self._following: asyncio.Task[None] | None = None
        self._watching: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.oldest = self.newest = self.known_head = await read_head(self._db, self._schema)
        self._following = asyncio.create_task(self._follow(), name=f"tail feed {self.boundary}")
        self._watching = asyncio.create_task(self._watch(), name=f"tail watch {self.boundary}")

    async def close(self) -> None:
        await cancel_and_wait([self._following, self._watching])

    def committed(self, head: int | None, events: list[Event] | None = None) -> None:
        """Events up to ``head`` are committed (None: maybe, check); ``events``, when this node
        wrote them."""
        if head is None:
            self._check_head = True
        elif head > self.known_head:
            self.known_head = head
        # This node's own commits go straight in when they continue the tail, unless a read from
        # PostgreSQL is under way (it will bring them, and expects the tail not to move meanwhile).
        if events and not self._lock.locked():
            fresh = [e for e in events if e.position.prepare > self.newest]
            if fresh and fresh[0].position.prepare == self.newest + 1:
                self._append(fresh)
        if self.known_head > self.newest or self._check_head:
            self._behind.set()

    def after(self, cursor: int) -> list[Event]:
        """Up to LIVE_BATCH events after ``cursor``; FellBehind if they are no longer held."""
        if cursor < self.oldest:
            raise FellBehind
        last = min(self.newest, cursor + LIVE_BATCH)
        return [self._events[p] for p in range(cursor + 1, last + 1)]

    async def wait_beyond(self, cursor: int, *others: asyncio.Event) -> None:
        """Return once the tail holds a position after ``cursor`` (or one of ``others`` is set)."""
        while self.newest <= cursor and not any(e.is_set() for e in others):
            waiters = [asyncio.ensure_future(self._advanced.wait())]
            waiters += [asyncio.ensure_future(e.wait()) for e in others]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()

    # --- advancing -------------------------------------------------------------------------------

    async def _follow(self) -> None:
        while True:
            if self._publishing():
                # This node publishes the feed: it hands each published batch to committed()
                # itself, so reading the feed back from NATS would only cost time.
                self._fed = time.monotonic()
                await asyncio.sleep(1.0)
                continue
            try:
                async for item in follow(self._client, self.boundary, self.newest):
                    self._fed = time.monotonic()  # the feed is alive
                    if self._publishing():
                        break
                    if item.position <= self.newest:
                        continue  # already here: from this node's writer, or read from PostgreSQL
                    event = item.event()
                    async with self._lock:
                        if item.position > self.newest + 1 or event is None:
                            await self._fill(item.position if event is None else item.position - 1)
                        if event is not None and item.position == self.newest + 1:
                            self._append([event])
            except asyncio.CancelledError:
                raise
            except Unavailable as exc:
                logger.debug("Tail of boundary {!r}: {}; following again", self.boundary, exc)
            except Exception:
                logger.exception("Tail of boundary {!r} failed; following again", self.boundary)
            await asyncio.sleep(1.0)

    async def _watch(self) -> None:
        """Read from PostgreSQL what is committed but has not come through the feed in time.

        Woken when PostgreSQL reports a commit beyond the tail (and every ``stall`` seconds), it
        gives the feed ``grace`` seconds, usually plenty, then reads the rest itself. So events
        keep flowing while NATS is away, a publisher is dead, or the feed of another node's NATS
        does not reach this one.
        """
        restarted = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._stall):  # not wait_for: see service/feed.py _wait
                    await self._behind.wait()
            self._behind.clear()
            try:
                if self._check_head:
                    self._check_head = False
                    self.known_head = max(self.known_head, await read_head(self._db, self._schema))
                if self.known_head <= self.newest:
                    continue
                await asyncio.sleep(self._grace)
                if self.known_head <= self.newest:
                    continue
                async with self._lock:
                    await self._fill(self.known_head)
                if time.monotonic() - self._fed > self._stall and time.monotonic() - restarted > _RESTART_EVERY:
                    # The feed has been quiet while events were committed: follow it afresh rather
                    # than trust a subscription that may have gone silent (NATS restarted).
                    restarted = time.monotonic()
                    await cancel_and_wait([self._following])
                    self._following = asyncio.create_task(self._follow(), name=f"tail feed {self.boundary}")
            except Unavailable as exc:
                logger.debug("Tail of boundary {!r} cannot read PostgreSQL: {}", self.boundary, exc)
            except Exception:
                logger.exception("Tail of boundary {!r} failed to read PostgreSQL", self.boundary)

    async def _fill(self, upto: int) -> None:
        while self.newest < upto:
            events, _ = await read_range(self._db, self._schema, Position(0, self.newest), upto, None, PAGE)
            if not events:
                return
            self._append(events)

    def _append(self, events: list[Event]) -> None:
        for event in events:
            position = event.position.prepare
            assert position == self.newest + 1, f"tail of {self.boundary}: {position} after {self.newest}"
            self._events[position] = event
            self._bytes += _size(event)
            self.newest = position
        self.known_head = max(self.known_head, self.newest)
        while len(self._events) > TAIL_EVENTS or (self._bytes > TAIL_BYTES and len(self._events) > 1):
            self.oldest += 1
            self._bytes -= _size(self._events.pop(self.oldest))
        self._advanced.set()
        self._advanced = asyncio.Event()


def _size(event: Event) -> int:
    return len(event.data) + len(event.metadata) + 200


def _check_name(name: str) -> None:
    if name and not SUBSCRIBER_NAME.fullmatch(name):
        raise InvalidArgument("subscriber_name", f"{quoted(name)} must be 1-128 printable ASCII characters "
                              "without spaces")


class _Selection(Protocol):
    """What one subscription delivers. Its cursor walks the boundary's positions from ``start``:
    ``read`` gives the wanted events of a range from PostgreSQL, ``wants`` decides on each event
    of the tail (every position after the cursor, in order, is passed to it exactly once)."""

    start: int

    async def read(self, cursor: int, upto: int) -> tuple[list[Event], int]:
        """(wanted events in (cursor, upto], in order, at most a page; the position read through)."""

    def wants(self, event: Event) -> bool: ...


class _BoundarySelection:
    """SubscribeToEvents: the boundary's events after a position, matching a query."""

    def __init__(self, db: Database, schema: str, after: Position, query: Query | None) -> None:
        self._db = db
        self._schema = schema
        self._after = after
        self._query = query
        self.start = after.prepare

    async def read(self, cursor: int, upto: int) -> tuple[list[Event], int]:
        return await read_range(self._db, self._schema, Position(self._after.commit, cursor), upto, self._query, PAGE)

    def wants(self, event: Event) -> bool:
        return event.position > self._after and (self._query is None or matches(self._query, event))


class _StreamSelection:
    """CatchUpSubscribeToStream: one stream's events above a version, matching a query.

    The catch-up reads the stream's index from the version examined last (a page of 500 after
    another, never the boundary's other events); live, every event of the tail is looked at and
    those of other streams are skipped. A hole in the tail, or a subscriber left behind it, sends
    the subscription back to the catch-up, which reads exactly the stream's missing events."""

    def __init__(self, db: Database, schema: str, stream: str, after_version: int, query: Query | None) -> None:
        self._db = db
        self._schema = schema
        self._stream = stream
        self._after_version = after_version
        # The stream's last version examined (delivered or not), so that a catch-up after falling
        # behind starts its index scan there; every event of the stream at or below it lies at or
        # below the cursor, which the read's position bound excludes anyway.
        self._examined = after_version
        self._query = query
        self.start = 0

    async def read(self, cursor: int, upto: int) -> tuple[list[Event], int]:
        events, through = await read_stream_range(self._db, self._schema, self._stream, self._examined, cursor, upto,
                                                  self._query, PAGE)
        if events:
            self._examined = max(self._examined, events[-1].version)
        return events, through

    def wants(self, event: Event) -> bool:
        if event.stream != self._stream:
            return False
        self._examined = max(self._examined, event.version)
        return event.version > self._after_version and (self._query is None or matches(self._query, event))


@dataclass
class _Claim:
    generation: int
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    position: Position | None = None  # of the last event handed to the subscriber


@dataclass(frozen=True)
class NamedSubscription:
    """A named subscription this node serves, for the dashboard."""

    boundary: str
    subscriber_name: str
    position: Position | None  # of the last event handed over; None before the first


@dataclass(eq=False)  # hashed by identity: one per open call
class _Progress:
    """How far one open subscription call got (what ``served`` reports); updated as it delivers."""

    boundary: str
    subscriber_name: str  # "" for an unnamed subscription
    stream: str | None  # CatchUpSubscribeToStream's stream; None for a whole boundary
    since: float  # time.time() when the call opened
    cursor: int = 0  # the last position examined, delivered or not (0 until the catch-up starts)
    position: Position | None = None  # of the last event handed over; None before the first
    delivered: int = 0  # events handed over since the call opened


@dataclass(frozen=True)
class ServedSubscription:
    """One open subscription call (named or not), for the dashboard and the metrics.

    Its lag is ``head - examined``: events committed after the last position it looked at, so a
    subscription whose query skips most events is not reported behind once it has passed them."""

    boundary: str
    subscriber_name: str  # "" for an unnamed subscription
    stream: str | None  # CatchUpSubscribeToStream's stream; None for SubscribeToEvents
    since: float  # Unix time the call opened
    examined: int  # the last position examined, delivered or not (0 before the catch-up starts)
    position: Position | None  # of the last event handed over; None before the first
    delivered: int  # events handed over since the call opened

    def lag(self, head: int) -> int:
        return max(head - self.examined, 0)


class Subscriptions:
    """Serves SubscribeToEvents and CatchUpSubscribeToStream for every boundary of this node."""

    def __init__(
        self,
        db: Database,
        client: Client,
        locks: SessionLocks,
        *,
        stall: float = 1.0,
        grace: float = 0.05,
        publishing: Callable[[str], bool] = lambda boundary: False,
    ) -> None:
        self._publishing = publishing  # whether this node publishes a boundary's feed
        self._db = db
        self._client = client
        self._locks = locks
        self._stall = stall
        self._grace = grace
        self._tails: dict[str, Tail] = {}
        self._starting: dict[str, asyncio.Task[Tail]] = {}
        self._claims: dict[tuple[str, str], _Claim] = {}
        self._live: collections.Counter[str] = collections.Counter()  # open subscriptions per boundary
        self._served: set[_Progress] = set()  # one per open call
        self._schemas: Mapping[str, str] = {schema: boundary for boundary, schema in db.boundaries.items()}

    def add(self, boundary: str, schema: str) -> None:
        """Serve subscriptions to ``boundary`` (created at runtime) too."""
        self._schemas = {**self._schemas, schema: boundary}

    def committed(self, schema: str, head: int | None, events: list[Event] | None = None) -> None:
        """Events up to ``head`` were committed in ``schema``; ``events`` if this node wrote them."""
        boundary = self._schemas.get(schema)
        tail = self._tails.get(boundary) if boundary is not None else None
        if tail is not None:
            tail.committed(head, events)

    def locks_lost(self) -> None:
        """The lock connection went: no subscriber_name is exclusive any more; end those subscriptions."""
        for claim in self._claims.values():
            claim.lost.set()

    def active(self) -> list[NamedSubscription]:
        """The named subscriptions this node serves, by boundary and name."""
        return sorted(
            (NamedSubscription(self._schemas[schema], name, claim.position)
             for (schema, name), claim in self._claims.items()),
            key=lambda each: (each.boundary, each.subscriber_name),
        )

    def served(self) -> list[ServedSubscription]:
        """Every open subscription call of this process, named or not, by boundary and name."""
        return sorted(
            (ServedSubscription(each.boundary, each.subscriber_name, each.stream, each.since,
                                max(each.cursor, each.position.prepare if each.position else 0),
                                each.position, each.delivered)
             for each in self._served),
            key=lambda each: (each.boundary, each.subscriber_name, each.since),
        )

    def live(self) -> dict[str, int]:
        """How many subscriptions (named or not) this node serves, per boundary."""
        return {boundary: self._live[boundary] for boundary in self._db.boundaries}

    async def close(self) -> None:
        await cancel_and_wait(list(self._starting.values()))
        await asyncio.gather(*(tail.close() for tail in self._tails.values()))

    def subscribe(
        self, user: User, boundary: str, after: Position | None, query: Query | None, name: str
    ) -> AsyncGenerator[Event, None]:
        """Every event of ``boundary`` after ``after`` matching ``query``, in order, once each.
        A request's errors are raised by the first iteration, as every other error."""

        async def prepare() -> tuple[str, _Selection]:
            validation.check_boundary(boundary)
            schema = await self._db.resolve(boundary)
            validation.check_query("query", query)
            _check_name(name)
            return schema, _BoundarySelection(self._db, schema, after or Position(0, 0), narrowing(query))

        return self._deliver(boundary, name, None, prepare)

    def subscribe_stream(
        self, user: User, boundary: str, stream: str, after_version: int, query: Query | None, name: str
    ) -> AsyncGenerator[Event, None]:
        """Every event of ``stream`` in ``boundary`` with a version above ``after_version`` (-1:
        from the start) matching ``query``, in order, once each (CatchUpSubscribeToStream).

        The same delivery as ``subscribe``, whose cursor still walks the boundary's positions
        (that is how the tail and its hole detection work); only the catch-up reads go through
        the stream's index, and the live events of other streams are skipped."""

        async def prepare() -> tuple[str, _Selection]:
            validation.check_boundary(boundary)
            schema = await self._db.resolve(boundary)
            validation.check_stream_subscription(stream, after_version)
            validation.check_query("query", query)
            _check_name(name)
            return schema, _StreamSelection(self._db, schema, stream, after_version, narrowing(query))

        return self._deliver(boundary, name, stream, prepare)

    async def _deliver(
        self, boundary: str, name: str, stream: str | None,
        prepare: Callable[[], Awaitable[tuple[str, _Selection]]],
    ) -> AsyncGenerator[Event, None]:
        """The events a selection wants, in order, once each: catch-up, then live (see the module).
        ``prepare`` checks the request and gives its schema and selection."""
        schema, selection = await prepare()
        claim = await self._claim(schema, boundary, name) if name else None
        self._live[boundary] += 1
        progress = _Progress(boundary, name, stream, time.time())
        self._served.add(progress)
        try:
            tail = await self._tail(boundary, schema)
            lost = [claim.lost] if claim else []
            cursor = progress.cursor = selection.start
            while True:
                # 1. Catch-up from PostgreSQL, up to what the tail holds.
                upto = tail.newest
                while cursor < upto:
                    page, through = await selection.read(cursor, upto)
                    for event in page:
                        if claim is not None:
                            claim.position = event.position
                        progress.position = event.position
                        progress.delivered += 1
                        yield event
                    cursor = progress.cursor = through
                # 2. Live from the tail, until this subscriber falls behind it.
                try:
                    while True:
                        if claim is not None and claim.lost.is_set():
                            raise Unavailable(f"subscriber_name {quoted(name)}: this node lost its lock on the name "
                                              "(PostgreSQL connection); subscribe again")
                        events = tail.after(cursor)
                        if not events:
                            await tail.wait_beyond(cursor, *lost)
                            continue
                        for event in events:
                            if selection.wants(event):
                                if claim is not None:
                                    claim.position = event.position
                                progress.position = event.position
                                progress.delivered += 1
                                yield event
                            cursor = progress.cursor = event.position.prepare
                except FellBehind:
                    continue
        finally:
            self._served.discard(progress)
            self._live[boundary] -= 1
            if claim is not None:
                await self._release(schema, name, claim)

    async def _claim(self, schema: str, boundary: str, name: str) -> _Claim:
        key = (schema, name)
        taken = AlreadyExists(f"subscriber_name {quoted(name)} is already subscribed to boundary {quoted(boundary)}")
        if key in self._claims:
            raise taken
        claim = self._claims[key] = _Claim(self._locks.generation)  # reserved while we ask PostgreSQL
        try:
            if not await self._locks.try_lock(_subscriber_lock(schema, name)):
                raise taken
        except BaseException:
            del self._claims[key]
            raise
        claim.generation = self._locks.generation
        return claim

    async def _release(self, schema: str, name: str, claim: _Claim) -> None:
        if self._claims.get((schema, name)) is claim:
            del self._claims[(schema, name)]
        await self._locks.unlock(_subscriber_lock(schema, name), claim.generation)

    async def _tail(self, boundary: str, schema: str) -> Tail:
        tail = self._tails.get(boundary)
        if tail is not None:
            return tail
        starting = self._starting.get(boundary)
        if starting is None:
            starting = self._starting[boundary] = asyncio.create_task(self._start_tail(boundary, schema))
        try:
            return await asyncio.shield(starting)
        finally:
            if starting.done():
                self._starting.pop(boundary, None)

    async def _start_tail(self, boundary: str, schema: str) -> Tail:
        tail = Tail(self._db, self._client, boundary, schema, stall=self._stall, grace=self._grace,
                    publishing=lambda: self._publishing(boundary))
        await tail.start()
        self._tails[boundary] = tail
        return tail


def _subscriber_lock(schema: str, name: str) -> str:
    return f"orisun.subscriber.{schema}.{name}"

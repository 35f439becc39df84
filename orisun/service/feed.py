"""The live feed's publishing side: committed events of each boundary go to JetStream, in order.

One node at a time publishes a boundary: the one holding the cluster-wide lock
``orisun.feed.<schema>`` (a PostgreSQL session lock, freed when that node dies). The publisher
continues from its checkpoint, the feed stream's last sequence (the last published position):

- this node's writer hands over what it committed at once (``committed`` with the events), and
  the publisher sends those from memory when they continue the feed;
- otherwise (commits made through other nodes, reported by PostgreSQL's NOTIFY; a gap; after
  gaining ownership, which is the recovery after a crash between commit and publish; every
  ``interval`` seconds as a safety net) it reads what follows the checkpoint from PostgreSQL.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Mapping

from loguru import logger

from orisun.aio import cancel_and_wait
from orisun.errors import Unavailable
from orisun.messaging.feed import FeedOutOfStep, FeedPublisher
from orisun.model import Event, Position
from orisun.storage.database import Database
from orisun.storage.events import read_head, read_range
from orisun.storage.locks import SessionLocks

_BATCH = 1000  # events read and published per round
_NEWEST = 2**62  # "up to whatever is committed"
_MEMORY = 50_000  # events handed over and not yet published; beyond, PostgreSQL is read instead
# How long the publisher waits for this node's writer to hand over a commit PostgreSQL already
# reported, before reading it from PostgreSQL (the writer failed after its commit, or the commit
# was another node's while this node's writer was busy).
_HANDOFF_WAIT = 0.1
# A publish asks JetStream to confirm where the stream ends once this many messages or seconds
# have gone unconfirmed; a quiet feed confirms what it sent after ``interval``.
_CONFIRM_EVERY = 1000
_CONFIRM_AFTER = 0.25


def feed_lock(schema: str) -> str:
    return "orisun.feed." + schema


class LiveFeed:
    """Publishes the boundaries this node owns. ``committed`` wakes the right publisher."""

    def __init__(
        self,
        db: Database,
        publisher: FeedPublisher,
        locks: SessionLocks,
        *,
        interval: float = 1.0,
        on_published: Callable[[str, list[Event]], None] = lambda schema, events: None,
        writing: Callable[[str], bool] = lambda schema: False,
        stand_by: bool = False,
    ) -> None:
        """``stand_by``: this process leaves publishing to another one of its node if it can (a
        worker, whose supervisor publishes): for a boundary added while serving, it waits
        ``interval`` before it first tries to take the feed's lock. The supervisor hears of the
        boundary within milliseconds; the worker that created it would otherwise take the lock
        first, since it knows of it first."""
        self._db = db
        # Whether this node's writer of a schema has a commit on its way: a NOTIFY seen meanwhile
        # is most likely of that commit, whose events the writer hands over a moment later.
        self._writing = writing
        # Told (schema, events) after each publish: this node's subscribers take the events from
        # here, so the publishing node does not also read its own feed back from NATS.
        self._on_published = on_published
        self._publisher = publisher
        self._locks = locks
        self._interval = interval
        self._boundaries: Mapping[str, str] = dict(db.boundaries)  # boundary -> schema
        self._wakeups = {schema: asyncio.Event() for schema in self._boundaries.values()}
        self._boundary_of = {schema: boundary for boundary, schema in self._boundaries.items()}
        self._unread: set[str] = set()  # schemas with commits to read from PostgreSQL to publish
        # The highest head PostgreSQL's NOTIFY reported per schema: what is beyond the published
        # position and was not handed over by this node's writer is read from PostgreSQL.
        self._noticed: dict[str, int] = {}
        self._owned: dict[str, int] = {}  # boundary -> lock generation it was taken in
        self._published: dict[str, int] = {}  # boundary -> last position published (while owned)
        self._handed: dict[str, collections.deque[Event]] = {schema: collections.deque() for schema in self._wakeups}
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._stand_by = stand_by
        self.reads = 0  # reads of PostgreSQL to publish (what was not handed over), for tests and diagnosis

    def owns(self, boundary: str) -> bool:
        return self._owned.get(boundary) == self._locks.generation

    def published(self, boundary: str) -> int | None:
        """The last position this node published for ``boundary``, if it owns it."""
        return self._published.get(boundary) if self.owns(boundary) else None

    def committed(self, schema: str, events: list[Event] | None = None, head: int | None = None) -> None:
        """Something was committed in ``schema``: ``events`` if this node wrote them; else events
        up to ``head`` (None: maybe; check), written by any node."""
        wakeup = self._wakeups.get(schema)
        boundary = self._boundary_of.get(schema)
        if wakeup is None or boundary is None or not self.owns(boundary):
            return  # the owner learns of it from PostgreSQL's NOTIFY
        handed = self._handed[schema]
        if events:
            if len(handed) + len(events) > _MEMORY:
                handed.clear()  # NATS is slow or away: publishing will read PostgreSQL instead
                self._unread.add(schema)
            else:
                handed.extend(events)
        elif head is None:
            self._unread.add(schema)  # anything may have happened: PostgreSQL has it
        elif head > self._noticed.get(schema, 0):
            # Whether it was handed over is decided when publishing: the NOTIFY of this node's
            # own commit often arrives before the writer's hand-off of the same events.
            self._noticed[schema] = head
            if head <= max(self._published.get(boundary, 0), handed[-1].position.prepare if handed else 0):
                return  # published or handed over already (the hand-off woke the publisher)
        else:
            return  # no news
        wakeup.set()

    def start(self) -> None:
        self._started = True
        for boundary, schema in self._boundaries.items():
            self._tasks.append(asyncio.create_task(self._run(boundary, schema), name=f"live feed {boundary}"))

    def add(self, boundary: str, schema: str) -> None:
        """Publish the feed of ``boundary`` (created at runtime) too, or stand by for it."""
        if boundary in self._boundaries:
            return
        self._boundaries = {**self._boundaries, boundary: schema}
        self._wakeups[schema] = asyncio.Event()
        self._boundary_of[schema] = boundary
        self._handed[schema] = collections.deque()
        if self._started:
            delay = self._interval if self._stand_by else 0.0
            self._tasks.append(asyncio.create_task(self._run(boundary, schema, delay), name=f"live feed {boundary}"))

    async def close(self) -> None:
        self._started = False  # a boundary added from now on gets no publisher
        await cancel_and_wait(self._tasks)
        self._tasks.clear()
        for boundary, schema in self._boundaries.items():
            generation = self._owned.pop(boundary, None)
            if generation is not None:
                await self._locks.unlock(feed_lock(schema), generation)

    async def _run(self, boundary: str, schema: str, delay: float = 0.0) -> None:
        wakeup = self._wakeups[schema]
        if delay:
            await asyncio.sleep(delay)  # see stand_by
        while True:
            try:
                if not self.owns(boundary):
                    self._published.pop(boundary, None)
                    if await self._locks.try_lock(feed_lock(schema)):
                        self._owned[boundary] = self._locks.generation
                        self._handed[schema].clear()  # the checkpoint decides where to go on
                        logger.info("This node now publishes the live feed of boundary {!r}", boundary)
                    else:
                        await asyncio.sleep(self._interval)  # another node publishes it
                        continue
                await self._publish(boundary, schema, wakeup)
            except asyncio.CancelledError:
                raise
            except Unavailable as exc:
                logger.warning("Live feed of boundary {!r} paused: {}", boundary, exc)
                await asyncio.sleep(self._interval)
            except Exception:
                logger.exception("Live feed of boundary {!r} failed; starting over", boundary)
                self._published.pop(boundary, None)
                await asyncio.sleep(self._interval)

    async def _publish(self, boundary: str, schema: str, wakeup: asyncio.Event) -> None:
        """Publish until ownership is lost; returns then. Raises Unavailable."""
        published = self._published.get(boundary)
        resumed = published is not None  # after a pause (NATS away): what was sent is unconfirmed
        if published is None:
            published = await self._publisher.checkpoint(boundary, await read_head(self._db, schema))
            self._published[boundary] = published
        unread = True  # after (re)gaining ownership: recover whatever was not published
        awaited = 0.0  # when the publisher began waiting for a hand-off the writer has on its way
        # Messages sent since JetStream last confirmed where the stream ends, and when it did.
        # Awaiting an acknowledgement for each commit cost more than the rest of its publishing (and
        # several times NATS's own work); expected-sequence headers keep the stream in order
        # whatever is confirmed, so confirmation only has to come soon enough to notice that
        # messages were refused (another owner, a reset stream) and go on from the checkpoint.
        unconfirmed = 1 if resumed else 0
        confirmed = 0.0 if resumed else time.monotonic()
        while self.owns(boundary):
            wakeup.clear()
            events = self._take_handed(schema, published)
            if not events and not unread and schema not in self._unread:
                if self._handed[schema]:
                    unread = True  # a gap before what was handed over: other nodes' commits
                elif self._noticed.get(schema, 0) <= published:
                    awaited = 0.0
                elif self._writing(schema) and (not awaited or time.monotonic() - awaited < _HANDOFF_WAIT):
                    # Most likely the NOTIFY of this node's own commit, ahead of its hand-off:
                    # wait for the hand-off (it wakes us) rather than read those events back.
                    awaited = awaited or time.monotonic()
                    await _wait(wakeup, _HANDOFF_WAIT)
                    continue
                else:
                    unread = True  # other nodes' commits: PostgreSQL has them
            if not events and (unread or schema in self._unread):
                self._unread.discard(schema)
                awaited = 0.0
                self.reads += 1
                events, _ = await read_range(self._db, schema, Position(0, published), _NEWEST, None, _BATCH)
                unread = len(events) == _BATCH  # a full batch: there may be more
            if events:
                confirm = unconfirmed + len(events) >= _CONFIRM_EVERY or time.monotonic() - confirmed >= _CONFIRM_AFTER
                try:
                    await self._publisher.publish(boundary, events, confirm=confirm)
                except FeedOutOfStep as exc:
                    # Another node published meanwhile (it held the lock before us), or the
                    # stream was reset: the stream itself says where publishing goes on.
                    logger.info("Live feed of boundary {!r} out of step ({}); re-reading its checkpoint", boundary, exc)
                    self._published.pop(boundary, None)
                    return
                published = self._published[boundary] = events[-1].position.prepare
                awaited = 0.0
                if confirm:
                    unconfirmed, confirmed = 0, time.monotonic()
                else:
                    unconfirmed += len(events)
                self._on_published(schema, events)
                continue
            if not await _wait(wakeup, self._interval):
                # Quiet for a while: make sure the lock is still held, and look at PostgreSQL in
                # case a notification was lost (the safety net).
                if not await self._locks.check():
                    return
                if unconfirmed:
                    last = await self._publisher.last(boundary)
                    if last != published:
                        logger.info("Live feed of boundary {!r} ends at position {}, not {} as published; "
                                    "re-reading its checkpoint", boundary, last, published)
                        self._published.pop(boundary, None)
                        return
                    unconfirmed, confirmed = 0, time.monotonic()
                unread = True

    def _take_handed(self, schema: str, published: int) -> list[Event]:
        """The handed-over events that continue the feed after ``published`` (at most _BATCH)."""
        handed = self._handed[schema]
        while handed and handed[0].position.prepare <= published:
            handed.popleft()  # published already (read from PostgreSQL, or by another owner)
        if not handed or handed[0].position.prepare != published + 1:
            return []  # nothing, or a gap (another node's writes): PostgreSQL has it
        taken: list[Event] = []
        while handed and len(taken) < _BATCH and handed[0].position.prepare == published + len(taken) + 1:
            taken.append(handed.popleft())
        return taken


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    """Wait for ``event`` up to ``seconds``; whether it was set."""
    # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation that
    # arrives as the wait ends, and a swallowed cancel leaves this loop running after close().
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True

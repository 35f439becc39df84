"""What the admin dashboard shows about a node and its boundaries, in terms of the core.

Knows nothing of HTTP. The write rate comes from sampling each boundary's head once a second
(positions are dense, so the head's rise is the number of events committed by every node).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from loguru import logger
from nats.aio.client import Client

from orisun.aio import cancel_and_wait
from orisun.errors import InvalidArgument, OrisunError
from orisun.messaging.pubsub import ConsumerStatus
from orisun.model import Event, Position, ReadRequest
from orisun.service import validation
from orisun.service.node import NodeSubscriptions
from orisun.service.subscriptions import NamedSubscription
from orisun.storage.database import Database
from orisun.storage.events import read_head
from orisun.storage.stats import (
    PrefixFilter,
    StreamInfo,
    WrittenStream,
    boundary_stats,
    count_by_prefix,
    count_matching,
    list_streams,
    ping,
    read_by_prefix,
    read_event_by_id,
    recent_event_types,
    storage_bytes,
    stream_version,
    streams_by_last_write,
)

SAMPLE_INTERVAL = 1.0  # seconds between head samples
SAMPLES = 120  # kept per boundary: two minutes of write rate
MAX_STREAMS_PAGE = 500
# PrefixFilter is re-exported: the dashboard builds one from a request.
__all__ = ["Activity", "BoundaryDetails", "BoundaryOverview", "ConsumerView", "Health", "Monitor", "Overview",
           "PrefixFilter", "RatePoint", "SubscriptionProgress", "SubscriptionView", "Total"]
# Bounds of what a page view may cost (issue #16): no figure counts a growing table in full.
DETAILS_TTL = 10.0  # seconds a boundary's storage size and event-type breakdown are reused
TYPE_SAMPLE = 1000  # the event-type breakdown covers this many of the most recent events
COUNT_CAP = 10_000  # filtered totals are counted this far, then shown as "10,000+"
WINDOW = 100_000  # positions a stream-prefix read or count, or a streams-by-last-write page, looks at
WINDOWS_PER_PAGE = 3  # windows one streams-by-last-write page may look through to fill itself
RATE_WINDOW = 10.0  # seconds of delivery counts a subscription's rate is taken over
GONE_KEEP = 3600.0  # seconds a named subscription that went away is still listed (as disconnected)
GONE_MAX = 100  # at most this many of those
_UUID = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}")


@dataclass(frozen=True)
class Health:
    """Whether a dependency (PostgreSQL, NATS) answers now, and how fast."""

    ok: bool
    latency: float | None  # seconds
    error: str | None
    url: str | None = None


@dataclass(frozen=True)
class RatePoint:
    """Events written per second around one moment, for the dashboard's rate chart."""

    at: datetime
    events_per_second: float


@dataclass(frozen=True)
class BoundaryDetails:
    """A boundary's storage size and the types of its most recent events (cached DETAILS_TTL)."""

    storage_bytes: int  # tables, indexes and TOAST of its schema
    event_types: list[tuple[str, int]]  # (type, events) among the ``sampled`` most recent
    sampled: int


@dataclass(frozen=True)
class BoundaryOverview:
    """A boundary's figures on the dashboard's overview."""

    boundary: str
    schema: str
    head: int
    streams: int
    subscribers: int  # open SubscribeToEvents calls on this node (all its processes)
    write_rate: list[RatePoint]
    details: BoundaryDetails | None = None  # None while PostgreSQL is away


@dataclass(frozen=True)
class Overview:
    """What the dashboard's overview shows: uptime, dependencies' health, each boundary's figures."""

    started_at: datetime
    uptime: float  # seconds
    postgres: Health
    nats: Health
    boundaries: list[BoundaryOverview]


@dataclass(frozen=True)
class SubscriptionProgress:
    """A named subscription with its boundary's head, to tell how far behind it is."""

    subscription: NamedSubscription
    head: int

    @property
    def lag(self) -> int:
        """Events committed after the last one handed to the subscriber (it may not match them all)."""
        done = self.subscription.position.prepare if self.subscription.position else 0
        return max(self.head - done, 0)


@dataclass(frozen=True)
class Total:
    """How many events a filter matches: exactly ``count``, or at least ``count`` (``exact`` False,
    the count stopped at its cap); ``window``: counted among that many most recent positions only."""

    count: int
    exact: bool
    window: int | None = None


@dataclass(frozen=True)
class SubscriptionView:
    """An event subscription as the dashboard lists it: an open call (connected), or a named one
    that went away less than GONE_KEEP ago (``until`` says when)."""

    boundary: str
    subscriber_name: str  # "" for an unnamed one
    stream: str | None
    connected: bool
    since: float  # Unix time the call opened
    until: float | None  # Unix time it was last seen open, when disconnected
    examined: int
    position: Position | None
    delivered: int
    rate: float | None  # events per second handed over lately; None while unknown
    head: int

    @property
    def lag(self) -> int:
        """Events committed after the last position it examined (``ServedSubscription.lag``)."""
        return max(self.head - self.examined, 0)


@dataclass(frozen=True)
class ConsumerView:
    """A pub/sub consumer: JetStream's figures for it (None for a call without a durable
    consumer), and the open calls consuming it on this node."""

    subject: str
    consumer_name: str
    connected: bool
    since: float | None  # Unix time its oldest open call opened
    calls: int
    delivered: int  # by its open calls
    rate: float | None
    status: ConsumerStatus | None

    @property
    def lag(self) -> int | None:
        """Messages waiting for it: not yet delivered, or delivered and not acknowledged."""
        return self.status.pending + self.status.ack_pending if self.status is not None else None


@dataclass(frozen=True)
class Activity:
    """What the subscriptions page shows, from one round of the node's answers."""

    subscriptions: list[SubscriptionView]
    consumers: list[ConsumerView]
    live: dict[str, int]


class _Rates:
    """Delivery rates from the delivered counts seen at each look (kept RATE_WINDOW seconds)."""

    def __init__(self) -> None:
        self._samples: dict[Any, collections.deque[tuple[float, int]]] = {}

    def rate(self, key: Any, delivered: int, since: float) -> float | None:
        now = time.monotonic()
        samples = self._samples.setdefault(key, collections.deque(maxlen=64))
        samples.append((now, delivered))
        while len(samples) > 2 and now - samples[0][0] > RATE_WINDOW:
            samples.popleft()
        first, counted = samples[0]
        if now - first < 0.5:  # the first look: the average since the call opened
            elapsed = time.time() - since
            return delivered / elapsed if elapsed >= 1.0 else None
        return max(delivered - counted, 0) / (now - first)

    def keep(self, keys: set[Any]) -> None:
        for key in self._samples.keys() - keys:
            del self._samples[key]


class Monitor:
    """The node's figures for the dashboard: health, heads and write rates, subscriptions, and the
    bounded-cost reads of the events and streams pages."""

    def __init__(self, db: Database, nats_client: Client, subscriptions: NodeSubscriptions) -> None:
        self._db = db
        self._nats = nats_client
        self._subscriptions = subscriptions
        self._started = time.monotonic()
        self.started_at = datetime.now(UTC)
        self._heads: dict[str, collections.deque[tuple[float, datetime, int]]] = {
            boundary: collections.deque(maxlen=SAMPLES + 1) for boundary in db.boundaries
        }
        self._sampler: asyncio.Task[None] | None = None
        self._details: dict[str, tuple[float, BoundaryDetails]] = {}
        self._rates = _Rates()
        self._seen: dict[tuple[str, str, str | None], SubscriptionView] = {}  # named ones seen open last time
        self._gone: dict[tuple[str, str, str | None], SubscriptionView] = {}

    def start(self) -> None:
        self._sampler = asyncio.create_task(self._sample(), name="orisun-monitor")

    async def close(self) -> None:
        await cancel_and_wait([self._sampler])

    async def _sample(self) -> None:
        while True:
            # A copy: boundaries created at runtime may join the map while this loop awaits.
            for boundary, schema in list(self._db.boundaries.items()):
                try:
                    head = await read_head(self._db, schema)
                except OrisunError:
                    continue  # PostgreSQL away: a gap in the chart, and the overview says why
                samples = self._heads.setdefault(boundary, collections.deque(maxlen=SAMPLES + 1))  # also a new one
                samples.append((time.monotonic(), datetime.now(UTC), head))
            await asyncio.sleep(SAMPLE_INTERVAL)

    def write_rate(self, boundary: str) -> list[RatePoint]:
        samples = list(self._heads.get(boundary, ()))
        return [
            RatePoint(at=at, events_per_second=max(head - previous, 0) / max(t - t0, 1e-3))
            for (t0, _, previous), (t, at, head) in itertools.pairwise(samples)
        ]

    async def overview(self, boundaries: Sequence[tuple[str, str]] | None = None) -> Overview:
        """The node's figures for ``boundaries`` ((name, schema) pairs: the catalog's, which the
        caller reads; by default the boundaries this process knows)."""
        postgres, nats = await asyncio.gather(self._postgres_health(), self._nats_health())
        live = (await self._subscriptions.snapshot()).live
        if boundaries is None:
            boundaries = list(self._db.boundaries.items())
        figures = []
        for boundary, schema in boundaries:
            if postgres.ok:
                stats = await boundary_stats(self._db, schema)
                head, streams = stats.head, stats.streams
            else:
                head = streams = 0
            details = await self._boundary_details(schema, head) if postgres.ok else None
            figures.append(BoundaryOverview(boundary, schema, head, streams, live.get(boundary, 0),
                                            self.write_rate(boundary), details))
        return Overview(self.started_at, time.monotonic() - self._started, postgres, nats, figures)

    async def _boundary_details(self, schema: str, head: int) -> BoundaryDetails | None:
        cached = self._details.get(schema)
        if cached is not None and time.monotonic() - cached[0] < DETAILS_TTL:
            return cached[1]
        try:
            details = BoundaryDetails(await storage_bytes(self._db, schema),
                                      await recent_event_types(self._db, schema, head, TYPE_SAMPLE),
                                      min(head, TYPE_SAMPLE))
        except OrisunError:
            return cached[1] if cached is not None else None
        self._details[schema] = (time.monotonic(), details)
        return details

    async def _postgres_health(self) -> Health:
        try:
            return Health(ok=True, latency=await ping(self._db), error=None)
        except OrisunError as exc:
            return Health(ok=False, latency=None, error=str(exc))

    async def _nats_health(self) -> Health:
        url = str(self._nats.connected_url.geturl()) if self._nats.connected_url else None
        if not self._nats.is_connected:
            return Health(ok=False, latency=None, error="not connected", url=url)
        began = time.perf_counter()
        try:
            await self._nats.flush(timeout=2)
        except Exception as exc:  # nats-py raises its own and asyncio's timeouts; all mean "unhealthy"
            logger.debug("NATS health check failed: {!r}", exc)
            return Health(ok=False, latency=None, error=f"no answer to a ping ({type(exc).__name__})", url=url)
        return Health(ok=True, latency=time.perf_counter() - began, error=None, url=url)

    async def streams(self, boundary: str, *, after: str, prefix: str, limit: int) -> list[StreamInfo]:
        validation.check_boundary(boundary)
        schema = await self._db.resolve(boundary)
        validation.check_storable("after", after)
        validation.check_storable("prefix", prefix)
        if not 1 <= limit <= MAX_STREAMS_PAGE:
            raise InvalidArgument("count", f"must be 1 to {MAX_STREAMS_PAGE}")
        return await list_streams(self._db, schema, after=after, prefix=prefix, limit=limit)

    async def head(self, boundary: str) -> int:
        validation.check_boundary(boundary)
        return await read_head(self._db, await self._db.resolve(boundary))

    async def subscriptions(self) -> tuple[list[SubscriptionProgress], dict[str, int]]:
        """The named subscriptions with their progress, and the live subscriber counts per boundary
        (both from one round of the workers' answers)."""
        snapshot = await self._subscriptions.snapshot()
        heads: dict[str, int] = {}
        for each in snapshot.active:
            if each.boundary not in heads:
                heads[each.boundary] = await self.head(each.boundary)
        return [SubscriptionProgress(each, heads[each.boundary]) for each in snapshot.active], snapshot.live

    # --- The events and streams pages (bounded reads) -------------------------------------------

    async def events_total(self, read: ReadRequest, prefix: PrefixFilter | None = None) -> Total:
        """How many events the filters of ``read`` (or ``prefix``) match, at a bounded cost: the
        head without filters (positions are dense), a stream's version + 1 for a stream alone,
        otherwise counted up to COUNT_CAP (a prefix: among the WINDOW most recent positions)."""
        validation.check_boundary(read.boundary)
        schema = await self._db.resolve(read.boundary)
        if prefix is not None:
            head = await read_head(self._db, schema)
            low = max(head - WINDOW + 1, 1)
            found = await count_by_prefix(self._db, schema, prefix, low=low, high=head, cap=COUNT_CAP)
            return Total(min(found, COUNT_CAP), found <= COUNT_CAP, WINDOW if low > 1 else None)
        if read.stream is None and read.query is None:
            return Total(await read_head(self._db, schema), True)
        if read.stream is not None and read.query is None:
            version = await stream_version(self._db, schema, read.stream)
            return Total(version + 1 if version is not None else 0, True)
        found = await count_matching(self._db, schema, read, COUNT_CAP)
        return Total(min(found, COUNT_CAP), found <= COUNT_CAP)

    async def stream_version(self, boundary: str, stream: str) -> int | None:
        validation.check_boundary(boundary)
        return await stream_version(self._db, await self._db.resolve(boundary), stream)

    async def event_by_id(self, boundary: str, event_id: str, field: str = "event_id") -> Event | None:
        """The boundary's event with this id; InvalidArgument naming ``field`` unless it is a UUID."""
        validation.check_boundary(boundary)
        schema = await self._db.resolve(boundary)
        if not _UUID.fullmatch(event_id):
            raise InvalidArgument(field, f"{event_id[:64]!r} is not an event id (a UUID)")
        return await read_event_by_id(self._db, schema, event_id)

    async def read_by_prefix(self, boundary: str, prefix: PrefixFilter, *, after: Position | None, count: int,
                             asc: bool) -> tuple[list[Event], int | None]:
        """At most ``count`` events of streams starting with the prefix, after ``after`` (by its
        position), looked for in at most WINDOW positions; and where the next page starts (the
        position of the last event, or the end of the window when it ran out first), None at the
        end of the boundary."""
        validation.check_boundary(boundary)
        schema = await self._db.resolve(boundary)
        head = await read_head(self._db, schema)
        if asc:
            low = after.prepare + 1 if after is not None else 1
            high = min(low + WINDOW - 1, head)
        else:
            high = min(after.prepare - 1, head) if after is not None and after.prepare else head
            low = max(high - WINDOW + 1, 1)
        if low > high:
            return [], None
        events = await read_by_prefix(self._db, schema, prefix, low=low, high=high, count=count, asc=asc)
        if len(events) == count:
            return events, events[-1].position.prepare
        more = high < head if asc else low > 1
        return events, (high if asc else low) if more else None

    async def streams_by_last_write(self, boundary: str, *, before: int | None, prefix: str,
                                    limit: int) -> tuple[list[WrittenStream], int | None]:
        """Streams by their last write, newest first, whose last event is below position ``before``
        (None: from the head); and the ``before`` of the next page (None: no more). Looks through
        at most WINDOWS_PER_PAGE windows of WINDOW positions."""
        validation.check_boundary(boundary)
        schema = await self._db.resolve(boundary)
        validation.check_storable("prefix", prefix)
        if not 1 <= limit <= MAX_STREAMS_PAGE:
            raise InvalidArgument("count", f"must be 1 to {MAX_STREAMS_PAGE}")
        below = before if before is not None else await read_head(self._db, schema) + 1
        found: list[WrittenStream] = []
        for _ in range(WINDOWS_PER_PAGE):
            if below <= 1:
                return found, None
            found += await streams_by_last_write(self._db, schema, below=below, window=WINDOW, prefix=prefix,
                                                 limit=limit - len(found))
            if len(found) == limit:
                return found, found[-1].position
            below = max(below - WINDOW, 1)
        return found, below if below > 1 else None

    # --- The subscriptions page ---------------------------------------------------------------

    async def activity(self, consumers: Sequence[ConsumerStatus]) -> Activity:
        """Every event subscription (open calls, and named ones that went away lately) with its
        rate and lag, and every pub/sub consumer (``consumers``: JetStream's) with its open calls."""
        snapshot = await self._subscriptions.snapshot()
        heads: dict[str, int] = {}
        for each in snapshot.served:
            if each.boundary not in heads:
                try:
                    heads[each.boundary] = await self.head(each.boundary)
                except OrisunError:
                    heads[each.boundary] = each.examined
        keys = set()
        views = []
        for each in snapshot.served:
            key = ("events", each.boundary, each.subscriber_name, each.stream, each.since)
            keys.add(key)
            views.append(SubscriptionView(
                each.boundary, each.subscriber_name, each.stream, True, each.since, None, each.examined,
                each.position, each.delivered, self._rates.rate(key, each.delivered, each.since), heads[each.boundary]))
        now = time.time()
        named = {(v.boundary, v.subscriber_name, v.stream): v for v in views if v.subscriber_name}
        for name_key, view in self._seen.items():
            if name_key not in named:
                self._gone[name_key] = SubscriptionView(
                    view.boundary, view.subscriber_name, view.stream, False, view.since, now, view.examined,
                    view.position, view.delivered, None, view.head)
        self._seen = named
        for name_key in list(self._gone):
            until = self._gone[name_key].until
            if name_key in named or until is None or now - until > GONE_KEEP:
                del self._gone[name_key]
        while len(self._gone) > GONE_MAX:
            del self._gone[min(self._gone, key=lambda k: self._gone[k].until or 0.0)]
        views += self._gone.values()
        views.sort(key=lambda v: (not v.connected, v.boundary, v.subscriber_name == "", v.subscriber_name, v.since))

        calls: dict[tuple[str, str], list[tuple[float, int, float | None]]] = collections.defaultdict(list)
        for call in snapshot.pubsub:
            key = ("pubsub", call.subject, call.consumer_name, call.call, call.since)
            keys.add(key)
            calls[(call.subject, call.consumer_name)].append(
                (call.since, call.delivered, self._rates.rate(key, call.delivered, call.since)))
        self._rates.keep(keys)
        statuses = {(c.subject, c.consumer_name): c for c in consumers}
        found = []
        for subject, name in sorted(statuses.keys() | calls.keys()):
            open_calls = calls.get((subject, name), [])
            rates = [rate for _, _, rate in open_calls if rate is not None]
            found.append(ConsumerView(
                subject, name, bool(open_calls), min((since for since, _, _ in open_calls), default=None),
                len(open_calls), sum(delivered for _, delivered, _ in open_calls),
                sum(rates) if rates else None, statuses.get((subject, name))))
        return Activity(views, found, snapshot.live)

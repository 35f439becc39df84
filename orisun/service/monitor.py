"""What the admin dashboard shows about a node and its boundaries, in terms of the core.

Knows nothing of HTTP. The write rate comes from sampling each boundary's head once a second
(positions are dense, so the head's rise is the number of events committed by every node).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from loguru import logger
from nats.aio.client import Client

from orisun.aio import cancel_and_wait
from orisun.errors import InvalidArgument, OrisunError
from orisun.service import validation
from orisun.service.node import NodeSubscriptions
from orisun.service.subscriptions import NamedSubscription
from orisun.storage.database import Database
from orisun.storage.events import read_head
from orisun.storage.stats import StreamInfo, boundary_stats, list_streams, ping

SAMPLE_INTERVAL = 1.0  # seconds between head samples
SAMPLES = 120  # kept per boundary: two minutes of write rate
MAX_STREAMS_PAGE = 500


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
class BoundaryOverview:
    """A boundary's figures on the dashboard's overview."""

    boundary: str
    schema: str
    head: int
    streams: int
    subscribers: int  # open SubscribeToEvents calls on this node (all its processes)
    write_rate: list[RatePoint]


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


class Monitor:
    """The figures the dashboard shows: health checks, write rates sampled from heads, subscriptions."""

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
            figures.append(BoundaryOverview(boundary, schema, head, streams, live.get(boundary, 0),
                                            self.write_rate(boundary)))
        return Overview(self.started_at, time.monotonic() - self._started, postgres, nats, figures)

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

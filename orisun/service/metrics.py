"""``GET /metrics`` of a whole node: what its processes counted, plus figures read at scrape time.

Counting (orisun.metrics.Counts) happens in every process that serves calls. With
``ORISUN_WORKERS`` above 1 the supervisor serves the dashboard and the workers serve gRPC, so at
each scrape the supervisor asks its workers for their counts over NATS (``messaging.gather``, as
for the dashboard's subscriptions) and sums them with its own. Counters must never go down:

- a worker that misses the gather deadline is counted with its last answer;
- a worker that restarted (another pid at the same index) starts from zero, so the last answer
  of its previous process is folded into a retired total first.

The gauges are read by the supervisor when scraped, each with a short deadline, so that a scrape
answers even while PostgreSQL or NATS is down (``orisun_up`` then says 0, and what needs it is
left out): the head of each boundary (one row each, never a count), subscription lag (head minus
the last position each open subscription examined), live subscribers, the live feed's lag (head
minus the feed stream's last published position), pub/sub pending messages (one JetStream
request for every consumer), the PostgreSQL pools (psycopg_pool's ``get_stats``) and the
processes' CPU and memory (prometheus_client's ProcessCollector, read from /proc by pid).

None of it reads more when more events are stored: a scrape costs one head row per boundary, one
request per feed stream and one for the pub/sub consumers, and answers whose size depends on open
calls, boundaries and consumers only.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from loguru import logger
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from orisun.messaging import gather
from orisun.messaging.feed import FeedPublisher
from orisun.metrics import Counts
from orisun.service.feed import LiveFeed
from orisun.service.node import GATHER_TIMEOUT, NodeSnapshot, NodeSubscriptions
from orisun.service.pubsub import PubSubService
from orisun.storage.database import Database
from orisun.storage.events import read_head
from orisun.storage.stats import ping

# Seconds each scrape-time check may take: a scrape answers within a few of them, whatever is down.
CHECK_TIMEOUT = 1.0
# psycopg_pool's get_stats() leaves out the counters still at 0: these are always written. The
# figures of the moment (gauges); every other one only grows while the process lives (counters).
POOL_GAUGES = frozenset({"pool_min", "pool_max", "pool_size", "pool_available", "requests_waiting"})
POOL_FIGURES = ("pool_min", "pool_max", "pool_size", "pool_available", "requests_waiting", "requests_num",
                "requests_queued", "requests_wait_ms", "requests_errors", "returns_bad", "usage_ms",
                "connections_num", "connections_ms", "connections_errors", "connections_lost")

T = TypeVar("T")


def metrics_subject(node: str) -> str:
    """The NATS subject a node's workers answer the supervisor's metrics requests on."""
    return f"_orisun.node.{node}.metrics"


def _pool_stats(db: Database) -> dict[str, int]:
    return {key: int(value) for key, value in db.pool.get_stats().items()}


async def answer_metrics(client: Client, node: str, index: int, counts: Counts, db: Database) -> Subscription:
    """Answer the supervisor's requests for this worker's counts and pool figures."""
    return await gather.answer(client, metrics_subject(node), lambda: {
        "index": index, "pid": os.getpid(), "counts": counts.to_json(), "pool": _pool_stats(db),
    })


@dataclass
class _Worker:
    pid: int
    counts: Counts
    pool: dict[str, int]


class _Families(Collector):
    """The families of one scrape, handed to prometheus_client to write out."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> Iterable[Metric]:
        return self.families


class NodeMetrics:
    """The Prometheus figures of one node (this process and, for a supervisor, its workers)."""

    def __init__(
        self,
        counts: Counts,
        db: Database,
        subscriptions: NodeSubscriptions,
        pubsub: PubSubService,
        nats_client: Client,
        *,
        feed: LiveFeed | None = None,
        publisher: FeedPublisher | None = None,
        node: str = "",
        workers: Callable[[], list[int | None]] = list,
    ) -> None:
        """``workers()``: the pids of the node's worker processes (None for one not running); none
        for a node of one process."""
        self._counts = counts
        self._db = db
        self._subscriptions = subscriptions
        self._pubsub = pubsub
        self._nats = nats_client
        self._feed = feed
        self._publisher = publisher
        self._node = node
        self._workers = workers
        self._last: dict[int, _Worker] = {}  # by worker index: its last answer
        self._retired = Counts()  # the last counts of worker processes that have since been replaced
        self._scraped = _Families()
        self._registry = CollectorRegistry()
        self._registry.register(self._scraped)

    async def scrape(self) -> bytes:
        """The node's figures in Prometheus' text format."""
        families = await self.families()
        # Set and written out with no await in between: concurrent scrapes do not mix.
        self._scraped.families = families
        try:
            return generate_latest(self._registry)
        finally:
            self._scraped.families = []

    async def families(self) -> list[Metric]:
        postgres_up, nats_up = await asyncio.gather(self._postgres_up(), self._nats_up())
        pids = self._workers()
        running = sum(pid is not None for pid in pids)  # one being restarted cannot answer: not waited for
        worker_answers, snapshot, heads, consumers = await asyncio.gather(
            self._gather_workers(running) if nats_up else _nothing(list[Any]()),
            # Without NATS a node of one process still knows its subscriptions (a supervisor, its own).
            _within(self._subscriptions.snapshot(), "the subscriptions"),
            self._heads() if postgres_up else _nothing(dict[str, int]()),
            _within(self._pubsub.consumers(), "the pub/sub consumers") if nats_up else _nothing(None),
        )
        self._remember(worker_answers)
        families: list[Metric] = []
        up = GaugeMetricFamily("orisun_up", "1 when the component answers a quick check, 0 when it does not.",
                               labels=["component"])
        up.add_metric(["postgres"], 1 if postgres_up else 0)
        up.add_metric(["nats"], 1 if nats_up else 0)
        families.append(up)
        total = self._counts.copy()
        total.add(self._retired)
        for worker in self._last.values():
            total.add(worker.counts)
        families += total.families()
        families += self._boundary_families(heads, snapshot)
        if nats_up:
            families += await self._feed_families(heads)
        if consumers is not None:
            pending = GaugeMetricFamily("orisun_pubsub_pending_messages", "Pub/sub messages not yet delivered "
                                        "to the consumer (JetStream's num_pending).", labels=["subject", "consumer"])
            unacked = GaugeMetricFamily("orisun_pubsub_unacknowledged_messages", "Pub/sub messages delivered "
                                        "to the consumer and not yet acknowledged.", labels=["subject", "consumer"])
            for consumer in consumers:
                pending.add_metric([consumer.subject, consumer.consumer_name], consumer.pending)
                unacked.add_metric([consumer.subject, consumer.consumer_name], consumer.ack_pending)
            families += [pending, unacked]
        families += self._pool_families(pids)
        families += _process_families(self._processes(pids))
        return families

    # --- The workers' counts -------------------------------------------------------------------

    async def _gather_workers(self, expected: int) -> list[Any]:
        if expected == 0:
            return []
        try:
            return await gather.gather(self._nats, metrics_subject(self._node), expected, GATHER_TIMEOUT)
        except Exception as exc:  # NATS went away meanwhile: the workers' last answers stand
            logger.debug("metrics: cannot ask the workers: {!r}", exc)
            return []

    def _remember(self, answers: list[Any]) -> None:
        for answer in answers:
            if not isinstance(answer, dict):
                continue
            index, pid = answer.get("index"), answer.get("pid")
            if not isinstance(index, int) or not isinstance(pid, int):
                continue
            pool = answer.get("pool")
            worker = _Worker(pid, Counts.from_json(answer.get("counts")),
                             {str(k): int(v) for k, v in pool.items()} if isinstance(pool, dict) else {})
            previous = self._last.get(index)
            if previous is not None and previous.pid != pid:
                # A restarted worker counts from zero: what its previous process counted stays.
                self._retired.add(previous.counts)
            self._last[index] = worker

    # --- Gauges read at scrape time ------------------------------------------------------------

    async def _postgres_up(self) -> bool:
        return await _within(ping(self._db), "PostgreSQL") is not None

    async def _nats_up(self) -> bool:
        if not self._nats.is_connected:
            return False
        return await _within(self._ping_nats(), "NATS") is not None

    async def _ping_nats(self) -> bool:
        await self._nats.flush(timeout=int(CHECK_TIMEOUT))
        return True

    async def _heads(self) -> dict[str, int]:
        """Each boundary's head: one row of its ``head`` table (never a count of events)."""
        heads: dict[str, int] = {}
        for boundary, schema in list(self._db.boundaries.items()):
            head = await _within(read_head(self._db, schema), f"the head of {boundary!r}")
            if head is None:
                break  # PostgreSQL went away meanwhile: the others would wait as long
            heads[boundary] = head
        return heads

    def _boundary_families(self, heads: dict[str, int], snapshot: NodeSnapshot | None) -> list[Metric]:
        head = GaugeMetricFamily("orisun_head_position", "The boundary's last committed position "
                                 "(positions are dense: also the number of events).", labels=["boundary"])
        for boundary, position in sorted(heads.items()):
            head.add_metric([boundary], position)
        lag = GaugeMetricFamily(
            "orisun_subscription_lag_events", "Events committed after the last position an open subscription "
            "examined (head minus examined). Named subscriptions by name; the unnamed ones of a boundary as "
            'one series, subscriber="", with the largest lag among them.', labels=["boundary", "subscriber"])
        live = GaugeMetricFamily("orisun_live_subscribers", "Open subscription calls (named or not) on this node.",
                                 labels=["boundary"])
        if snapshot is not None:
            lags: dict[tuple[str, str], int] = {}
            for each in snapshot.served:
                if each.boundary in heads:
                    key = (each.boundary, each.subscriber_name)
                    lags[key] = max(lags.get(key, 0), each.lag(heads[each.boundary]))
            for (boundary, name), events in sorted(lags.items()):
                lag.add_metric([boundary, name], events)
            for boundary in sorted({*self._db.boundaries, *snapshot.live}):
                live.add_metric([boundary], snapshot.live.get(boundary, 0))
        return [head, lag, live]

    async def _feed_families(self, heads: dict[str, int]) -> list[Metric]:
        lag = GaugeMetricFamily("orisun_feed_lag_events", "Events committed but not yet published to the "
                                "boundary's live feed (database head minus the feed's last position).",
                                labels=["boundary"])
        for boundary, head in sorted(heads.items()):
            published = self._feed.published(boundary) if self._feed is not None else None
            if published is None and self._publisher is not None:
                # Published by another node (or not owned right now): the feed stream says how far.
                published = await _within(self._publisher.last(boundary), f"the live feed of {boundary!r}")
            if published is not None:
                lag.add_metric([boundary], max(head - published, 0))
        return [lag]

    def _pool_families(self, pids: list[int | None]) -> list[Metric]:
        pools = [(self._process_name(pids), _pool_stats(self._db))]
        pools += [(f"worker-{index}", worker.pool) for index, worker in sorted(self._last.items())]
        families: list[Metric] = []
        for key in sorted({*POOL_FIGURES, *(key for _, stats in pools for key in stats)}):
            # psycopg_pool's names, without its own "pool_" prefix (orisun_pg_pool_size, not
            # orisun_pg_pool_pool_size); what it only ever adds to is a counter (..._total).
            name = f"orisun_pg_pool_{key.removeprefix('pool_')}"
            documentation = f"The PostgreSQL pool's {key} (psycopg_pool get_stats()), per process."
            kind = GaugeMetricFamily if key in POOL_GAUGES else CounterMetricFamily
            family = kind(name, documentation, labels=["process"])
            for process, stats in pools:
                family.add_metric([process], stats.get(key, 0))
            families.append(family)
        return families

    def _process_name(self, pids: list[int | None]) -> str:
        return "supervisor" if pids else "node"

    def _processes(self, pids: list[int | None]) -> list[tuple[str, int]]:
        processes = [(self._process_name(pids), os.getpid())]
        processes += [(f"worker-{index}", pid) for index, pid in enumerate(pids, start=1) if pid is not None]
        return processes


def _process_families(processes: list[tuple[str, int]]) -> Iterator[Metric]:
    """prometheus_client's process figures (CPU, memory, file descriptors, start time) of each
    process of the node, labelled ``process``; none where /proc is missing (macOS)."""
    merged: dict[str, Metric] = {}
    for process, pid in processes:
        collector = ProcessCollector(pid=lambda pid=pid: pid, registry=None)  # type: ignore[misc]
        for family in collector.collect():
            into = merged.get(family.name)
            if into is None:
                into = merged[family.name] = Metric(family.name, family.documentation, family.type)
            for sample in family.samples:
                into.add_sample(sample.name, {**sample.labels, "process": process}, sample.value)
    return iter(merged.values())


async def _within(work: Awaitable[T], what: str) -> T | None:
    """``work``'s result, or None when it fails or takes longer than CHECK_TIMEOUT: a scrape
    leaves out what it cannot read rather than fail or hang."""
    try:
        return await asyncio.wait_for(work, CHECK_TIMEOUT)
    except Exception as exc:
        logger.debug("metrics: cannot read {}: {!r}", what, exc)
        return None


async def _nothing(value: T) -> T:
    return value


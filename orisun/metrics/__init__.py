"""What one Orisun process counts for Prometheus (``GET /metrics``), as plain Python numbers.

The bottom layer: it imports nothing of Orisun, so storage, messaging, service and transport all
count into the ``Counts`` they are handed. Each Orisun instance makes its own (tests run several
in one process: no module-level registry).

Why not prometheus_client's Counter and Histogram objects in the hot paths: each of their
increments takes a lock and a label lookup (a tuple, a dict), and a node's figures must be summed
over its worker processes anyway. Here an increment is one dict or list update on the event loop's
thread (no lock: only that thread counts), the figures cross to the supervisor as JSON
(``to_json`` / ``from_json``), are summed there (``add``), and become Prometheus families only at
scrape time (``families``), written out by prometheus_client.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric

# Seconds: from a group-committed write (~1 ms) to a stalled one.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Requests committed together by one writer (storage.writer's group commit).
GROUP_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0)

# orisun_append_requests_total's outcomes: the writer's four, the service's "invalid" (refused
# before the writer: a bad field, an unknown boundary) and "error" (PostgreSQL away, a bug).
OUTCOMES = ("ok", "idempotent", "conflict", "duplicate", "invalid", "error")


class Histogram:
    """Observations in fixed buckets: ``counts[i]`` holds those <= ``bounds[i]`` and above the
    bound before (the last, those above every bound); cumulated only when written out."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def add(self, other: Histogram) -> None:
        if other.bounds != self.bounds:
            return  # another version's buckets (a worker of an older release): not comparable
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.total += other.total

    def to_json(self) -> list[Any]:
        return [list(self.bounds), self.counts, self.total]

    @classmethod
    def from_json(cls, data: Any, bounds: Sequence[float]) -> Histogram:
        histogram = cls(bounds)
        try:
            found, counts, total = data
            if [float(b) for b in found] == list(histogram.bounds) and len(counts) == len(histogram.counts):
                histogram.counts = [int(c) for c in counts]
                histogram.total = float(total)
        except (TypeError, ValueError):
            pass  # not figures of this version: left empty
        return histogram

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative (le, count) pairs, as Prometheus wants them, ending with +Inf."""
        running = 0
        out = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return out


Nested = dict[str, dict[str, int]]


def _add_nested(into: Nested, other: Nested) -> None:
    for outer, inner in other.items():
        mine = into.setdefault(outer, {})
        for key, value in inner.items():
            mine[key] = mine.get(key, 0) + value


def _nested(data: Any) -> Nested:
    if not isinstance(data, dict):
        return {}
    return {str(outer): {str(key): int(value) for key, value in inner.items() if isinstance(value, int)}
            for outer, inner in data.items() if isinstance(inner, dict)}


class Counts:
    """The counters and histograms of one process (or, summed, of a node).

    Every field is a plain number, dict or Histogram, updated in place by the code it counts;
    only the event loop's thread updates them.
    """

    def __init__(self) -> None:
        self.appended: dict[str, int] = {}  # boundary -> events stored
        self.append_requests: Nested = {}  # boundary -> outcome -> SaveEvents calls
        self.append_duration = Histogram(DURATION_BUCKETS)
        self.group_size = Histogram(GROUP_BUCKETS)
        self.reads: dict[str, int] = {}  # boundary -> GetEvents calls
        self.read_duration = Histogram(DURATION_BUCKETS)
        self.auth_failures = 0
        self.grpc: Nested = {}  # full method name -> status code name -> calls
        self.redelivered: Nested = {}  # pub/sub subject -> consumer name -> deliveries after the first

    def outcome(self, boundary: str, outcome: str) -> None:
        """One SaveEvents call of ``boundary`` answered with ``outcome`` (see OUTCOMES)."""
        outcomes = self.append_requests.get(boundary)
        if outcomes is None:
            outcomes = self.append_requests[boundary] = {}
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    def grpc_codes(self, method: str) -> dict[str, int]:
        """The status code counts of ``method``, to be kept by its handler (one lookup per method)."""
        codes = self.grpc.get(method)
        if codes is None:
            codes = self.grpc[method] = {}
        return codes

    def add(self, other: Counts) -> None:
        """Add ``other``'s figures to these (a node's sum over its processes)."""
        for boundary, events in other.appended.items():
            self.appended[boundary] = self.appended.get(boundary, 0) + events
        _add_nested(self.append_requests, other.append_requests)
        self.append_duration.add(other.append_duration)
        self.group_size.add(other.group_size)
        for boundary, reads in other.reads.items():
            self.reads[boundary] = self.reads.get(boundary, 0) + reads
        self.read_duration.add(other.read_duration)
        self.auth_failures += other.auth_failures
        _add_nested(self.grpc, other.grpc)
        _add_nested(self.redelivered, other.redelivered)

    def to_json(self) -> dict[str, Any]:
        return {
            "appended": self.appended,
            "append_requests": self.append_requests,
            "append_duration": self.append_duration.to_json(),
            "group_size": self.group_size.to_json(),
            "reads": self.reads,
            "read_duration": self.read_duration.to_json(),
            "auth_failures": self.auth_failures,
            "grpc": self.grpc,
            "redelivered": self.redelivered,
        }

    @classmethod
    def from_json(cls, data: Any) -> Counts:
        """Figures another process sent (``to_json``); what does not parse is left out."""
        counts = cls()
        if not isinstance(data, dict):
            return counts
        try:
            counts.appended = {str(k): int(v) for k, v in dict(data.get("appended", {})).items()}
            counts.append_requests = _nested(data.get("append_requests"))
            counts.append_duration = Histogram.from_json(data.get("append_duration"), DURATION_BUCKETS)
            counts.group_size = Histogram.from_json(data.get("group_size"), GROUP_BUCKETS)
            counts.reads = {str(k): int(v) for k, v in dict(data.get("reads", {})).items()}
            counts.read_duration = Histogram.from_json(data.get("read_duration"), DURATION_BUCKETS)
            counts.auth_failures = int(data.get("auth_failures", 0))
            counts.grpc = _nested(data.get("grpc"))
            counts.redelivered = _nested(data.get("redelivered"))
        except (TypeError, ValueError):
            return cls()
        return counts

    def copy(self) -> Counts:
        copied = Counts()
        copied.add(self)
        return copied

    def families(self) -> Iterator[Metric]:
        """These figures as Prometheus metric families (the counting half of ``GET /metrics``)."""
        appended = CounterMetricFamily("orisun_events_appended", "Events stored by SaveEvents.",
                                       labels=["boundary"])
        for boundary, events in sorted(self.appended.items()):
            appended.add_metric([boundary], events)
        yield appended
        requests = CounterMetricFamily(
            "orisun_append_requests", "SaveEvents calls by outcome (ok, idempotent: a retry answered with "
            "the original result, conflict: expected version, duplicate: event id reused, invalid, error).",
            labels=["boundary", "outcome"])
        for boundary, outcomes in sorted(self.append_requests.items()):
            for outcome, calls in sorted(outcomes.items()):
                requests.add_metric([boundary, outcome], calls)
        yield requests
        yield _histogram("orisun_append_duration_seconds", "Time SaveEvents takes in the server, "
                         "from a valid request to its answer.", self.append_duration)
        yield _histogram("orisun_append_group_size", "SaveEvents requests a boundary's writer commits "
                         "together, in one transaction (group commit).", self.group_size)
        reads = CounterMetricFamily("orisun_read_requests", "GetEvents calls (with a valid request).",
                                    labels=["boundary"])
        for boundary, calls in sorted(self.reads.items()):
            reads.add_metric([boundary], calls)
        yield reads
        yield _histogram("orisun_read_duration_seconds", "Time GetEvents takes in the server.", self.read_duration)
        yield CounterMetricFamily("orisun_auth_failures", "Failed logins (gRPC Basic auth, dashboard, "
                                  "/metrics): wrong or malformed credentials, throttled attempts.",
                                  value=self.auth_failures)
        grpc = CounterMetricFamily("orisun_grpc_requests", "gRPC calls by method and final status code.",
                                   labels=["method", "code"])
        for method, codes in sorted(self.grpc.items()):
            for code, calls in sorted(codes.items()):
                grpc.add_metric([method, code], calls)
        yield grpc
        redelivered = CounterMetricFamily("orisun_pubsub_redelivered", "Pub/sub messages delivered again "
                                          "(JetStream delivery count above 1).", labels=["subject", "consumer"])
        for subject, consumers in sorted(self.redelivered.items()):
            for consumer, deliveries in sorted(consumers.items()):
                redelivered.add_metric([subject, consumer], deliveries)
        yield redelivered


def _histogram(name: str, documentation: str, histogram: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, documentation, buckets=histogram.buckets(), sum_value=histogram.total)

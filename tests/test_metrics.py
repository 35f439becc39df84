"""GET /metrics (issue #16): Prometheus text, parsed with prometheus_client's own parser, checked
against what the test did.

- appends move orisun_events_appended_total and the outcome counters (ok, idempotent, conflict,
  duplicate, invalid), the duration and group-size histograms, and the gRPC status counters;
  reads move orisun_read_requests_total; a wrong password moves orisun_auth_failures_total;
- a named subscription held back (its client stops reading while large events are written) shows
  a positive lag that returns to 0 once it has read everything; unnamed ones are one series;
- orisun_head_position, orisun_live_subscribers, orisun_feed_lag_events, pub/sub pending and
  redelivered, PostgreSQL pool and process figures, orisun_up;
- ORISUN_METRICS_AUTH: 401 without credentials, 401 with wrong ones (counted), 200 with any user;
- a scrape costs the same whatever the number of events stored.
"""

from __future__ import annotations

import ast
import base64
import json
import queue
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from orisun.metrics import Counts
from orisun.runtime.postgres import EmbeddedPostgres
from tests.support import (
    ADMIN,
    CHANNEL_OPTIONS,
    ServerThread,
    StreamReader,
    auth_metadata,
    running_server,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)

BOUNDARY = "metered"
OTHER = "metered_lag"
BOUNDARIES = {"orisun_admin": "orisun_admin", BOUNDARY: BOUNDARY, OTHER: OTHER}
AUTH = auth_metadata()
SAVE = "eventstore.EventStore/SaveEvents"
GET = "eventstore.EventStore/GetEvents"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


# --- Scraping --------------------------------------------------------------------------------------


def fetch(server: ServerThread, auth: tuple[str, str] | None = None, header: str | None = None,
          timeout: float = 30) -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(server.dashboard_url + "/metrics")
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    if header is not None:
        request.add_header("Authorization", header)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def parse(text: str) -> Samples:
    """Every sample of the exposition, by (sample name, sorted labels)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"sample {key} twice"
            samples[key] = sample.value
    return samples


def scrape(server: ServerThread, auth: tuple[str, str] | None = None) -> Samples:
    status, headers, text = fetch(server, auth)
    assert status == 200, text
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4"), headers
    return parse(text)


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 when absent (a counter not yet incremented)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def series(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (sample, labels), v in samples.items() if sample == name}


# --- Calls -------------------------------------------------------------------------------------------


def event(event_id: str | None = None, data: str = '{"n": 1}') -> pb.EventToSave:
    return pb.EventToSave(event_id=event_id or str(uuid.uuid4()), event_type="Metered", data=data,
                          tags=[pb.Tag(key="kind", value="metered")])


def save_request(boundary: str, stream: str, events: Sequence[pb.EventToSave], expected: int = -2
                 ) -> pb.SaveEventsRequest:
    return pb.SaveEventsRequest(boundary=boundary, stream=pb.SaveStreamQuery(name=stream, expected_version=expected),
                                events=events)


def refused(call: Any, request: Any, metadata: Any = AUTH) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, metadata=metadata, timeout=30)
    code: grpc.StatusCode = caught.value.code()
    return code


def head_of(stub: pb_grpc.EventStoreStub, boundary: str) -> int:
    page = stub.GetEvents(pb.GetEventsRequest(boundary=boundary, count=1, direction=pb.DESC), metadata=AUTH,
                          timeout=30).events
    return page[0].position.prepare_position if page else 0


@pytest.fixture(scope="module")
def server(postgres: EmbeddedPostgres) -> Iterator[ServerThread]:
    with running_server(postgres.conninfo, "test_metrics", boundaries=BOUNDARIES) as started:
        yield started


@pytest.fixture
def stub(server: ServerThread) -> Iterator[pb_grpc.EventStoreStub]:
    with server.stub() as client:
        yield client


# --- Tests -------------------------------------------------------------------------------------------


def test_appends_reads_and_refusals_move_the_counters(server: ServerThread, stub: pb_grpc.EventStoreStub) -> None:
    before = scrape(server)
    stream = f"s-{uuid.uuid4().hex[:8]}"

    # ok: 3 events, then 2 more
    first = save_request(BOUNDARY, stream, [event(), event(), event()], expected=-1)
    stub.SaveEvents(first, metadata=AUTH, timeout=30)
    stub.SaveEvents(save_request(BOUNDARY, stream, [event(), event()], expected=2), metadata=AUTH, timeout=30)
    # idempotent: the first write again, unchanged
    stub.SaveEvents(first, metadata=AUTH, timeout=30)
    # conflict: a wrong expected version
    assert refused(stub.SaveEvents, save_request(BOUNDARY, stream, [event()], expected=0)) \
        == grpc.StatusCode.ALREADY_EXISTS
    # duplicate: an event id of the first write, in another stream
    assert refused(stub.SaveEvents, save_request(BOUNDARY, stream + "-other", [event(first.events[0].event_id)])) \
        == grpc.StatusCode.ALREADY_EXISTS
    # invalid: no events; and an unknown boundary (labelled "", not by the made-up name)
    assert refused(stub.SaveEvents, save_request(BOUNDARY, stream, [])) == grpc.StatusCode.INVALID_ARGUMENT
    unknown = refused(stub.SaveEvents, save_request("no_such_boundary", stream, [event()]))
    # reads: two GetEvents
    for _ in range(2):
        stub.GetEvents(pb.GetEventsRequest(boundary=BOUNDARY, count=10, direction=pb.ASC), metadata=AUTH, timeout=30)
    # a wrong password
    assert refused(stub.GetEvents, pb.GetEventsRequest(boundary=BOUNDARY, count=1),
                   auth_metadata(ADMIN[0], "not-the-password")) == grpc.StatusCode.UNAUTHENTICATED

    after = scrape(server)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("orisun_events_appended_total", boundary=BOUNDARY) == 5
    for outcome, count in (("ok", 2), ("idempotent", 1), ("conflict", 1), ("duplicate", 1), ("invalid", 1)):
        assert moved("orisun_append_requests_total", boundary=BOUNDARY, outcome=outcome) == count, outcome
    assert moved("orisun_append_requests_total", boundary="", outcome="invalid") == 1
    assert not any(("boundary", "no_such_boundary") in labels for (_, labels) in after), "a made-up name as label"
    # Every valid SaveEvents is timed (the 2 invalid ones are not); each one is in a writer's group.
    assert moved("orisun_append_duration_seconds_count") == 5
    assert moved("orisun_append_duration_seconds_bucket", le="+Inf") == 5
    assert moved("orisun_append_duration_seconds_sum") > 0
    assert 1 <= moved("orisun_append_group_size_count") <= 5
    assert moved("orisun_read_requests_total", boundary=BOUNDARY) == 2
    assert moved("orisun_read_duration_seconds_count") == 2
    assert moved("orisun_auth_failures_total") == 1
    assert moved("orisun_grpc_requests_total", method=SAVE, code="OK") == 3
    assert moved("orisun_grpc_requests_total", method=SAVE, code="ALREADY_EXISTS") == 2
    assert moved("orisun_grpc_requests_total", method=SAVE, code=unknown.name) >= 1
    assert moved("orisun_grpc_requests_total", method=SAVE, code="INVALID_ARGUMENT") >= 1
    assert moved("orisun_grpc_requests_total", method=GET, code="OK") == 2
    assert moved("orisun_grpc_requests_total", method=GET, code="UNAUTHENTICATED") == 1

    # Gauges read at scrape time.
    assert value(after, "orisun_head_position", boundary=BOUNDARY) == head_of(stub, BOUNDARY)
    assert value(after, "orisun_up", component="postgres") == 1
    assert value(after, "orisun_up", component="nats") == 1
    wait_for(lambda: value(scrape(server), "orisun_feed_lag_events", boundary=BOUNDARY) == 0, 30,
             "the live feed to publish every event")
    assert ("orisun_pg_pool_size", (("process", "node"),)) in after
    assert value(after, "orisun_pg_pool_max", process="node") == server.settings.pg_pool_size
    if series(after, "process_cpu_seconds_total"):  # /proc exists (Linux)
        assert value(after, "process_resident_memory_bytes", process="node") > 0


class Held(StreamReader[pb.Event]):
    """A subscription whose client stops reading after ``pause_after`` events, until ``resume``."""

    def __init__(self, server: ServerThread, boundary: str, name: str, pause_after: int | None) -> None:
        # No BDP probing: the paused client's HTTP/2 window stays small, so the server cannot push far ahead.
        channel = grpc.insecure_channel(server.address, options=[*CHANNEL_OPTIONS, ("grpc.http2.bdp_probe", 0)])
        request = pb.CatchUpSubscribeToEventStoreRequest(boundary=boundary, subscriber_name=name)
        call = pb_grpc.EventStoreStub(channel).SubscribeToEvents(request, metadata=AUTH, timeout=110)
        super().__init__(call, channel, f"SubscribeToEvents({boundary}, {name!r})", pause_after=pause_after)


def test_a_held_back_subscription_shows_its_lag_until_it_catches_up(
    server: ServerThread, stub: pb_grpc.EventStoreStub
) -> None:
    data = json.dumps({"pad": "x" * 20_000})  # 20 kB each: 300 of them are far more than a flow-control window
    cancelled = value(scrape(server), "orisun_grpc_requests_total", method="eventstore.EventStore/SubscribeToEvents",
                      code="CANCELLED")
    stub.SaveEvents(save_request(OTHER, "warm-up", [event()]), metadata=AUTH, timeout=30)
    held = Held(server, OTHER, "held-back", pause_after=1)
    unnamed = Held(server, OTHER, "", pause_after=None)
    try:
        held.wait_until(lambda events: len(events) >= 1, 30, "the first event")
        for start in range(0, 300, 50):
            stub.SaveEvents(save_request(OTHER, f"big-{start}", [event(data=data) for _ in range(50)]),
                            metadata=AUTH, timeout=30)
        last = head_of(stub, OTHER)
        unnamed.wait_until(lambda events: events and events[-1].position.prepare_position >= last, 60,
                           "every event on the reading subscription")

        samples = wait_for(lambda: (s := scrape(server)) and value(
            s, "orisun_subscription_lag_events", boundary=OTHER, subscriber="held-back") > 0 and s, 30,
            "a positive lag for the held-back subscription")
        lag = value(samples, "orisun_subscription_lag_events", boundary=OTHER, subscriber="held-back")
        assert 0 < lag <= last, (lag, last)
        assert value(samples, "orisun_live_subscribers", boundary=OTHER) == 2
        # The unnamed one reads everything: its series (one for every unnamed one of the boundary) is at 0.
        wait_for(lambda: (("orisun_subscription_lag_events", (("boundary", OTHER), ("subscriber", ""))) in
                          (s := scrape(server)) and value(s, "orisun_subscription_lag_events",
                                                          boundary=OTHER, subscriber="") == 0), 30,
                 "the unnamed subscription's series at 0")

        held.resume()
        held.wait_until(lambda events: events[-1].position.prepare_position >= last, 60, "every event")
        wait_for(lambda: value(scrape(server), "orisun_subscription_lag_events", boundary=OTHER,
                               subscriber="held-back") == 0 and True, 30, "the lag back at 0")
    finally:
        held.close()
        unnamed.close()
    # Closed subscriptions leave the gauges.
    wait_for(lambda: value(scrape(server), "orisun_live_subscribers", boundary=OTHER) == 0, 30,
             "no live subscriber left")
    samples = scrape(server)
    assert not series(samples, "orisun_subscription_lag_events")
    # Both calls ended by their clients: counted when they end, as CANCELLED.
    assert value(samples, "orisun_grpc_requests_total", method="eventstore.EventStore/SubscribeToEvents",
                 code="CANCELLED") == cancelled + 2


def test_a_scrape_does_not_grow_with_the_events_stored(server: ServerThread, stub: pb_grpc.EventStoreStub) -> None:
    """The same series (and so the same statements: one head row per boundary) before and after
    thousands more events: only values change."""
    stub.SaveEvents(save_request(BOUNDARY, "size", [event()]), metadata=AUTH, timeout=30)
    stub.GetEvents(pb.GetEventsRequest(boundary=BOUNDARY, count=1), metadata=AUTH, timeout=30)
    before = scrape(server)
    for start in range(0, 5_000, 1_000):
        stub.SaveEvents(save_request(BOUNDARY, f"size-{start}", [event() for _ in range(1_000)]),
                        metadata=AUTH, timeout=30)
    stub.GetEvents(pb.GetEventsRequest(boundary=BOUNDARY, count=1), metadata=AUTH, timeout=30)
    after = scrape(server)
    volatile = ("process_", "orisun_pg_pool_")  # come and go with the process' own state
    keys = {key for key in after if not key[0].startswith(volatile)}
    assert keys == {key for key in before if not key[0].startswith(volatile)}
    assert value(after, "orisun_head_position", boundary=BOUNDARY) >= value(
        before, "orisun_head_position", boundary=BOUNDARY) + 5_000


def test_pubsub_pending_and_redelivered(server: ServerThread, stub: pb_grpc.EventStoreStub) -> None:
    """A consumer that nobody reads has the messages published since pending; one that gives a message back
    (nack) gets it again, which counts as a redelivery of its subject and consumer."""
    subject, name = f"metered.{uuid.uuid4().hex[:8]}", "metered-consumer"
    requests: queue.Queue[pb.ConsumeRequest | None] = queue.Queue()
    requests.put(pb.ConsumeRequest(subject=subject, consumer_name=name, max_in_flight=10))

    def send() -> Iterator[pb.ConsumeRequest]:
        while (request := requests.get()) is not None:
            yield request

    received: list[pb.ConsumeResponse] = []
    with grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
        call = pb_grpc.EventStoreStub(channel).ConsumePubSub(send(), metadata=AUTH, timeout=110)
        def read() -> None:
            try:
                for each in call:
                    received.append(each)
            except grpc.RpcError:
                pass  # cancelled by the test

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            # The consumer exists once the call is open: wait for it, then publish.
            wait_for(lambda: ("orisun_pubsub_pending_messages", (("consumer", name), ("subject", subject)))
                     in scrape(server), 30, "the consumer in the scrape")
            for n in range(2):
                stub.PublishToPubSub(pb.PublishRequest(id=f"m{n}", subject=subject, data="{}"), metadata=AUTH,
                                     timeout=30)
            wait_for(lambda: len(received) >= 2, 30, "two deliveries")
            requests.put(pb.ConsumeRequest(nack=[received[0].token]))
            wait_for(lambda: len(received) >= 3, 30, "the redelivery")
            assert received[2].delivery_count == 2
            samples = scrape(server)
            assert value(samples, "orisun_pubsub_redelivered_total", subject=subject, consumer=name) == 1
            assert value(samples, "orisun_pubsub_unacknowledged_messages", subject=subject, consumer=name) == 2
        finally:
            requests.put(None)
            call.cancel()
            reader.join(10)

    # Published while nobody of another consumer name reads: pending for it.
    idle = "metered-idle"
    opener: queue.Queue[pb.ConsumeRequest | None] = queue.Queue()
    opener.put(pb.ConsumeRequest(subject=subject, consumer_name=idle))
    with grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
        call = pb_grpc.EventStoreStub(channel).ConsumePubSub(iter(opener.get, None), metadata=AUTH, timeout=110)
        wait_for(lambda: ("orisun_pubsub_pending_messages", (("consumer", idle), ("subject", subject)))
                 in scrape(server), 30, "the idle consumer in the scrape")
        call.cancel()
    for n in range(4):
        stub.PublishToPubSub(pb.PublishRequest(id=f"p{n}", subject=subject, data="{}"), metadata=AUTH, timeout=30)
    def waiting() -> tuple[float, float]:
        samples = scrape(server)
        return (value(samples, "orisun_pubsub_pending_messages", subject=subject, consumer=idle),
                value(samples, "orisun_pubsub_unacknowledged_messages", subject=subject, consumer=idle))

    # The closed call's last pull may still take one message (it comes back after the ack wait).
    pending, unacknowledged = wait_for(lambda: sum(w := waiting()) == 4 and w, 30, "4 messages for the consumer")
    assert pending >= 3, (pending, unacknowledged)


def test_metrics_are_open_by_default(server: ServerThread) -> None:
    status, _, text = fetch(server)
    assert status == 200 and "orisun_up" in text


@pytest.fixture(scope="module")
def guarded(postgres: EmbeddedPostgres) -> Iterator[ServerThread]:
    with running_server(postgres.conninfo, "test_metrics_auth", metrics_auth=True) as started:
        yield started


def test_metrics_auth_asks_for_any_valid_user(guarded: ServerThread) -> None:
    users = guarded.app.users
    assert users is not None
    guarded.call(users.create("Metrics reader", "scraper", "scraper-password-1", []))

    status, headers, _ = fetch(guarded)
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Basic ")
    status, headers, text = fetch(guarded, ("scraper", "wrong-password"))
    assert status == 401 and "orisun_up" not in text
    status, _, _ = fetch(guarded, header="Basic not-base64!")
    assert status == 401

    samples = scrape(guarded, ("scraper", "scraper-password-1"))  # a user without roles
    assert value(samples, "orisun_auth_failures_total") == 2  # the wrong password and the malformed header
    assert value(scrape(guarded, ADMIN), "orisun_up", component="postgres") == 1


def test_orisun_up_says_0_and_the_scrape_still_answers(postgres: EmbeddedPostgres) -> None:
    """NATS, then PostgreSQL stopped under a running node: each scrape answers within seconds."""
    with running_server(postgres.conninfo, "test_metrics_up") as started:
        nats = started.app.nats
        assert nats is not None
        started.call(nats.stop())
        began = time.monotonic()
        samples = scrape(started)
        assert time.monotonic() - began < 10
        assert value(samples, "orisun_up", component="nats") == 0
        assert value(samples, "orisun_up", component="postgres") == 1
        db = started.app.db
        assert db is not None
        started.call(db.pool.close())  # PostgreSQL out of reach for this node
        began = time.monotonic()
        samples = scrape(started)
        assert time.monotonic() - began < 10
        assert value(samples, "orisun_up", component="postgres") == 0
        assert not series(samples, "orisun_head_position")


def test_the_executable_bundles_prometheus_client() -> None:
    """Without building it: the spec collects every orisun module (collect_submodules), PyInstaller
    follows their top-level imports, and these import prometheus_client at the top, which the spec
    does not exclude. No hidden import is needed."""
    root = Path(__file__).resolve().parent.parent
    spec = (root / "packaging" / "orisun.spec").read_text()
    assert 'collect_submodules("orisun")' in spec
    excludes = next(line for line in spec.splitlines() if line.strip().startswith("excludes="))
    assert "prometheus" not in excludes
    for module in ("orisun/metrics/__init__.py", "orisun/service/metrics.py"):
        tree = ast.parse((root / module).read_text())
        top = {node.module for node in tree.body if isinstance(node, ast.ImportFrom) and node.module}
        assert any(name.startswith("prometheus_client") for name in top), module


def test_counts_cross_processes_as_json_and_add_up() -> None:
    """What a worker sends (to_json) is what the supervisor adds (from_json, add); histogram
    buckets come out cumulative, as Prometheus wants them; figures of another shape are left out."""
    one = Counts()
    one.outcome("b", "ok")
    one.appended["b"] = 3
    one.append_duration.observe(0.0005)  # on a bound: counted in its bucket (le is inclusive)
    one.append_duration.observe(0.003)
    one.grpc_codes("eventstore.EventStore/SaveEvents")["OK"] = 1
    two = Counts.from_json(json.loads(json.dumps(one.to_json())))
    two.add(one)
    assert two.appended == {"b": 6}
    assert two.append_requests == {"b": {"ok": 2}}
    assert two.grpc == {"eventstore.EventStore/SaveEvents": {"OK": 2}}
    buckets = dict(two.append_duration.buckets())
    assert buckets["0.0005"] == 2 and buckets["0.001"] == 2 and buckets["0.005"] == 4 and buckets["+Inf"] == 4
    assert abs(two.append_duration.total - 0.007) < 1e-9
    assert Counts.from_json({"appended": "not a map"}).appended == {}
    assert Counts.from_json({"append_duration": [[1, 2], [0, 0, 0], 0]}).append_duration.counts == [0] * 15

"""GET /metrics of a node with ORISUN_WORKERS=2: the supervisor serves the dashboard, the workers
serve gRPC; one scrape of the supervisor counts the calls of every worker, and its counters do
not go down when a worker is killed and restarted."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator

import grpc
import pytest

from orisun._proto import eventstore_pb2_grpc as pb_grpc
from orisun.runtime.postgres import EmbeddedPostgres
from tests.support import CHANNEL_OPTIONS, ServerThread, auth_metadata, connections, running_server, wait_for
from tests.test_metrics import SAVE, event, save_request, scrape, series, value

pytestmark = pytest.mark.timeout(120)

BOUNDARY = "metered_node"
AUTH = auth_metadata()


@pytest.fixture(scope="module")
def node(postgres: EmbeddedPostgres) -> Iterator[ServerThread]:
    with running_server(postgres.conninfo, "test_metrics_node", workers=2,
                        boundaries={"orisun_admin": "orisun_admin", BOUNDARY: BOUNDARY}) as server:
        yield server


def worker_pids(server: ServerThread) -> list[int]:
    assert server.app.workers is not None
    return [pid for pid in server.app.workers.pids if pid is not None]


def on_every_worker(server: ServerThread, tries: int = 40) -> list[grpc.Channel]:
    """Channels (each its own connection), opened until every worker serves at least one."""
    opened: list[grpc.Channel] = []
    pids = worker_pids(server)
    for _ in range(tries):
        channel = grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS)
        grpc.channel_ready_future(channel).result(timeout=10)
        opened.append(channel)
        if all(count > 0 for count in connections(pids, server.app.grpc_port).values()):
            return opened
    raise AssertionError(f"{tries} connections did not reach every worker")


def test_one_scrape_counts_the_appends_of_every_worker(node: ServerThread) -> None:
    before = scrape(node)
    channels = on_every_worker(node)
    try:
        calls = 0
        for _ in range(3):
            for channel in channels:
                stub = pb_grpc.EventStoreStub(channel)
                stub.SaveEvents(save_request(BOUNDARY, f"w-{uuid.uuid4().hex[:8]}", [event(), event()]),
                                metadata=AUTH, timeout=30)
                calls += 1
    finally:
        for channel in channels:
            channel.close()
    after = scrape(node)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("orisun_events_appended_total", boundary=BOUNDARY) == 2 * calls
    assert moved("orisun_append_requests_total", boundary=BOUNDARY, outcome="ok") == calls
    assert moved("orisun_grpc_requests_total", method=SAVE, code="OK") == calls
    assert moved("orisun_append_duration_seconds_count") == calls
    # Each process's own figures, labelled by process.
    for process in ("supervisor", "worker-1", "worker-2"):
        assert ("orisun_pg_pool_size", (("process", process),)) in after, process
    if series(after, "process_cpu_seconds_total"):
        for process in ("supervisor", "worker-1", "worker-2"):
            assert value(after, "process_resident_memory_bytes", process=process) > 0, process


def test_counters_stay_when_a_worker_restarts(node: ServerThread) -> None:
    channels = on_every_worker(node)
    try:
        for channel in channels:
            pb_grpc.EventStoreStub(channel).SaveEvents(
                save_request(BOUNDARY, f"r-{uuid.uuid4().hex[:8]}", [event()]), metadata=AUTH, timeout=30)
    finally:
        for channel in channels:
            channel.close()
    before = scrape(node)  # every worker's answer, with every call above
    appended = value(before, "orisun_events_appended_total", boundary=BOUNDARY)
    assert appended >= len(channels)

    killed = worker_pids(node)[0]
    os.kill(killed, signal.SIGKILL)
    wait_for(lambda: killed not in worker_pids(node) and len(worker_pids(node)) == 2, 60, "the worker restarted")
    # Before and after the new process first answers: never below what was counted.
    wait_for(lambda: value(scrape(node), "orisun_up", component="nats") == 1
             and len(series(scrape(node), "orisun_pg_pool_size")) == 3, 30, "every process answering")
    for _ in range(3):
        assert value(scrape(node), "orisun_events_appended_total", boundary=BOUNDARY) >= appended

    with grpc.insecure_channel(node.address, options=CHANNEL_OPTIONS) as channel:
        pb_grpc.EventStoreStub(channel).SaveEvents(save_request(BOUNDARY, "after-restart", [event()]),
                                                   metadata=AUTH, timeout=30)
    assert value(scrape(node), "orisun_events_appended_total", boundary=BOUNDARY) == appended + 1

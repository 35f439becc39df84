"""Fixtures and helpers shared by the worker-process tests (tests/test_workers*.py) and by other tests
that must reach every worker of a node (``on_every_worker``): a node of several workers, a channel
per worker, writes and reads of its boundary.

The test files bind the fixtures here (`node`) to module names of their own, so that pytest finds
them there (importing a fixture that a test takes as a parameter is a lint error, F811).
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from orisun.runtime.postgres import EmbeddedPostgres
from tests.support import CHANNEL_OPTIONS, ServerThread, auth_metadata, connections, running_server

BOUNDARY = "work"
BOUNDARIES = {"orisun_admin": "orisun_admin", BOUNDARY: "work_store"}
AUTH = auth_metadata()


@pytest.fixture(scope="module")
def node(postgres: EmbeddedPostgres) -> Iterator[ServerThread]:
    """A supervisor with two workers, for the whole module."""
    with running_server(postgres.conninfo, "test_workers", boundaries=BOUNDARIES, workers=2) as server:
        yield server


def worker_pids(server: ServerThread) -> list[int]:
    assert server.app.workers is not None
    return [pid for pid in server.app.workers.pids if pid is not None]


def channel(server: ServerThread) -> grpc.Channel:
    return grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS)


def on_every_worker(server: ServerThread, tries: int = 40) -> list[grpc.Channel]:
    """Channels (each its own connection), opened until every worker serves at least one."""
    opened: list[grpc.Channel] = []
    pids = worker_pids(server)
    for _ in range(tries):
        each = channel(server)
        grpc.channel_ready_future(each).result(timeout=10)
        opened.append(each)
        if all(count > 0 for count in connections(pids, server.app.grpc_port).values()):
            return opened
    raise AssertionError(f"{tries} connections did not reach every worker: {connections(pids, server.app.grpc_port)}")


def save(stub: pb_grpc.EventStoreStub, stream: str, expected: int, *event_ids: str) -> pb.WriteResult:
    request = pb.SaveEventsRequest(
        boundary=BOUNDARY, stream=pb.SaveStreamQuery(name=stream, expected_version=expected),
        events=[pb.EventToSave(event_id=i, event_type="Worked", data='{"n": 1}') for i in event_ids])
    result: pb.WriteResult = stub.SaveEvents(request, metadata=AUTH, timeout=30)
    return result


def read_all(stub: pb_grpc.EventStoreStub) -> list[pb.Event]:
    events: list[pb.Event] = []
    position = pb.Position(commit_position=0, prepare_position=0)
    while True:
        page = stub.GetEvents(pb.GetEventsRequest(boundary=BOUNDARY, from_position=position, count=1000,
                                                  direction=pb.ASC), metadata=AUTH, timeout=30).events
        events += [e for e in page if (e.position.commit_position, e.position.prepare_position) >
                   (position.commit_position, position.prepare_position)]
        if len(page) < 1000:
            return events
        position = page[-1].position


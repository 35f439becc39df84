"""Fixtures and helpers shared by the SaveEvents tests (tests/test_save_events*.py): the module's server
(``store``, ``stub``), event and request builders, writes and reads.

The test files bind the fixtures here (`store`, `stub`) to module names of their own, so that pytest
finds them there (importing a fixture that a test takes as a parameter is a lint error, F811).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
import pytest

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from orisun.runtime.postgres import EmbeddedPostgres
from tests.support import ServerThread, auth_metadata, running_server

B = "shop"  # the boundary most tests write to
BOUNDARIES = {"orisun_admin": "orisun_admin", B: "shop_events", "dense": "dense", "big": "big"}
ADMIN_AUTH = auth_metadata()
MAX_MESSAGE = 64 * 1024 * 1024


@pytest.fixture(scope="module")
def store(postgres: EmbeddedPostgres) -> Iterator[ServerThread]:
    with running_server(postgres.conninfo, "test_save", boundaries=BOUNDARIES) as server:
        yield server


@pytest.fixture(scope="module")
def stub(store: ServerThread) -> Iterator[pb_grpc.EventStoreStub]:
    options = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)]
    with grpc.insecure_channel(store.address, options=options) as channel:
        yield pb_grpc.EventStoreStub(channel)  # type: ignore[no-untyped-call]


# --- Helpers --------------------------------------------------------------------------------------


def new_id() -> str:
    return str(uuid.uuid4())


def stream_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def ev(event_type: str = "Happened", data: str = '{"n": 1}', metadata: str = "",
       tags: Sequence[tuple[str, str]] = (), event_id: str | None = None) -> pb.EventToSave:
    return pb.EventToSave(event_id=event_id or new_id(), event_type=event_type, data=data, metadata=metadata,
                          tags=[pb.Tag(key=k, value=v) for k, v in tags])


def query(*criteria: Sequence[tuple[str, str]]) -> pb.Query:
    return pb.Query(criteria=[pb.Criterion(tags=[pb.Tag(key=k, value=v) for k, v in c]) for c in criteria])


def request(stream: str, events: Sequence[pb.EventToSave], expected: int = -2, subset: pb.Query | None = None,
            boundary: str = B) -> pb.SaveEventsRequest:
    return pb.SaveEventsRequest(boundary=boundary, stream=pb.SaveStreamQuery(
        name=stream, expected_version=expected, subsetQuery=subset), events=events)


def save(stub: Any, stream: str, events: Sequence[pb.EventToSave], expected: int = -2,
         subset: pb.Query | None = None, boundary: str = B, metadata: Any = ADMIN_AUTH) -> tuple[int, int, int]:
    """(commit, prepare, new_stream_version) of a successful write."""
    result = stub.SaveEvents(request(stream, events, expected, subset, boundary), metadata=metadata, timeout=60)
    return result.log_position.commit_position, result.log_position.prepare_position, result.new_stream_version


def refused(stub: Any, req: pb.SaveEventsRequest, metadata: Any = ADMIN_AUTH) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        stub.SaveEvents(req, metadata=metadata, timeout=60)
    return raised.value.code(), raised.value.details()


def read_stream(stub: Any, stream: str, boundary: str = B, count: int = 0) -> list[pb.Event]:
    response = stub.GetEvents(pb.GetEventsRequest(boundary=boundary, stream=pb.GetStreamQuery(name=stream),
                                                  count=count), metadata=ADMIN_AUTH, timeout=60)
    return list(response.events)


def head(stub: Any, boundary: str = B) -> int:
    """The boundary's last position (0 when empty)."""
    response = stub.GetEvents(pb.GetEventsRequest(boundary=boundary, count=1, direction=pb.DESC),
                              metadata=ADMIN_AUTH, timeout=10)
    return response.events[0].position.prepare_position if response.events else 0


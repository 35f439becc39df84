"""Fixtures and helpers shared by the upstream-compatibility tests (tests/test_compat*.py, issue #15):
the server, a channel, stubs of Orisun's own proto and of each upstream proto, and comparisons of
what upstream decodes with what Orisun's own proto reads for the same events.

The protos are fixtures (tests/compat/protos/, see its README); tests/compat/stubs.py compiles
them at test time into private descriptor pools, so every request is encoded exactly as upstream's
generated clients encode it, and every answer decoded as they decode it.

The test files bind the fixtures here (`channel`, `node_stub`, `ours`, `reader`, `server`) to module
names of their own, so that pytest finds them there (importing a fixture that a test takes as a
parameter is a lint error, F811).
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from orisun.runtime.postgres import EmbeddedPostgres
from tests.compat import stubs
from tests.support import ServerThread, StreamReader, auth_metadata, running_server

NODE_B, JAVA_B, ADMIN_B = "compat_node", "compat_java", "compat_admin"
BOUNDARIES = {"orisun_admin": "orisun_admin", NODE_B: NODE_B, JAVA_B: "compat_java_events", ADMIN_B: ADMIN_B}
AUTH = auth_metadata()
READER = ("compat-reader", "reader-password-1")  # no roles: may read, not write, not administer
DELIVERY_TIMEOUT = 30.0


@functools.cache
def node() -> stubs.Protos:
    return stubs.node_client()


@functools.cache
def java() -> stubs.Protos:
    return stubs.java_client()


@functools.cache
def head() -> stubs.Protos:
    return stubs.upstream_head()


def enum(protos: stubs.Protos, full_name: str, value: str) -> int:
    number: int = protos.pool.FindEnumTypeByName(full_name).values_by_name[value].number
    return number


def msg(protos: stubs.Protos, type_name: str, /, **fields: Any) -> Any:
    """A message of ``protos`` by short name (package eventstore, or orisun for upstream's HEAD)."""
    package = "orisun" if protos.folder == "upstream-head" else "eventstore"
    return protos.message(f"{package}.{type_name}")(**fields)


# --- Fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(postgres: EmbeddedPostgres) -> Iterator[ServerThread]:
    with running_server(postgres.conninfo, "test_compat", boundaries=BOUNDARIES) as started:
        users = started.app.users
        assert users is not None
        started.call(users.create("Compat reader", *READER, []))
        # Wrong credentials on purpose, all from 127.0.0.1: not a brute force to slow down.
        users.throttle.threshold = 1_000_000
        yield started


@pytest.fixture(scope="module")
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    with server.channel() as ch:
        yield ch


@pytest.fixture(scope="module")
def ours(channel: grpc.Channel) -> pb_grpc.EventStoreStub:
    return pb_grpc.EventStoreStub(channel)


@pytest.fixture(scope="module")
def node_stub(channel: grpc.Channel) -> stubs.Stub:
    return node().stub(channel, "eventstore.EventStore")


class Reader(StreamReader[Any]):
    """A server-streaming call of an upstream stub on its own channel, read by a thread."""

    def __init__(self, server: ServerThread, protos: stubs.Protos, service: str, rpc: str, request: Message,
                 auth: list[tuple[str, str]] = AUTH) -> None:
        channel = grpc.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)])
        call = getattr(protos.stub(channel, service), rpc)(request, metadata=auth, timeout=110)
        super().__init__(call, channel, f"{protos.folder} {rpc}")

    def wait_for_count(self, count: int) -> list[Any]:
        self.wait_until(lambda items: len(items) >= count, DELIVERY_TIMEOUT, f"{count} items (has {len(self.items)})")
        return self.items


@pytest.fixture
def reader(server: ServerThread) -> Iterator[Any]:
    started: list[Reader] = []

    def start(protos: stubs.Protos, rpc: str, request: Message, service: str = "eventstore.EventStore") -> Reader:
        r = Reader(server, protos, service, rpc, request)
        started.append(r)
        return r

    yield start
    for r in started:
        r.close()


def refused(call: Any, *args: Any, **kwargs: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        call(*args, **{"metadata": AUTH, "timeout": 30, **kwargs})
    return raised.value.code(), raised.value.details() or ""


def new_id() -> str:
    return str(uuid.uuid4())


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def our_stream(ours: pb_grpc.EventStoreStub, boundary: str, stream: str) -> list[pb.Event]:
    request = pb.GetEventsRequest(boundary=boundary, stream=pb.GetStreamQuery(name=stream), count=10_000)
    return list(ours.GetEvents(request, metadata=AUTH, timeout=30).events)


def same_event(theirs: Any, mine: pb.Event) -> None:
    """An event as an upstream client decoded it equals Orisun's own reading, field by field
    (upstream's Event has no tags: those bytes are skipped as an unknown field)."""
    assert (theirs.event_id, theirs.event_type, theirs.data, theirs.metadata, theirs.stream_id, theirs.version) == (
        mine.event_id, mine.event_type, mine.data, mine.metadata, mine.stream_id, mine.version)
    assert (theirs.position.commit_position, theirs.position.prepare_position) == (
        mine.position.commit_position, mine.position.prepare_position)
    assert (theirs.date_created.seconds, theirs.date_created.nanos) == (
        mine.date_created.seconds, mine.date_created.nanos)


def same_events(theirs: Sequence[Any], mine: Sequence[pb.Event]) -> None:
    assert [e.event_id for e in theirs] == [e.event_id for e in mine]
    for t, m in zip(theirs, mine, strict=True):
        same_event(t, m)


# --- The Node client (df80552) ---------------------------------------------------------------------


def node_save(stub: stubs.Stub, stream: str, events: Sequence[Any], expected: int,
              subset: Any = None, boundary: str = NODE_B, auth: list[tuple[str, str]] = AUTH) -> Any:
    request = msg(node(), "SaveEventsRequest", boundary=boundary, events=events,
                  stream=msg(node(), "SaveStreamQuery", name=stream, expected_version=expected, subsetQuery=subset))
    return stub.SaveEvents(request, metadata=auth, timeout=30)


def node_event(event_type: str = "Happened", data: str | None = None) -> Any:
    return msg(node(), "EventToSave", event_id=new_id(), event_type=event_type,
               data=data or json.dumps({"n": uuid.uuid4().hex[:6]}), metadata='{"by": "node"}')


def _tagged_history(ours: pb_grpc.EventStoreStub, boundary: str, stream: str, tag: str) -> list[pb.Event]:
    """Events saved with tags through Orisun's proto (upstream's old EventToSave has none): six
    more with the tag ``compat: tag``; every event with that tag, as Orisun reads them."""
    for n in range(6):
        request = pb.SaveEventsRequest(
            boundary=boundary, stream=pb.SaveStreamQuery(name=stream if n % 2 else f"{stream}-other",
                                                         expected_version=-2),
            events=[pb.EventToSave(event_id=new_id(), event_type=f"T{n % 3}", data=json.dumps({"n": n}),
                                   tags=[pb.Tag(key="compat", value=tag), pb.Tag(key="n", value=str(n))])])
        ours.SaveEvents(request, metadata=AUTH, timeout=30)
    query = pb.Query(criteria=[pb.Criterion(tags=[pb.Tag(key="compat", value=tag)])])
    return list(ours.GetEvents(pb.GetEventsRequest(boundary=boundary, query=query), metadata=AUTH).events)


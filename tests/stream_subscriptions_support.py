"""Fixtures and helpers shared by the CatchUpSubscribeToStream tests (tests/test_stream_subscriptions*.py;
issue #15, point 1; docs/contract.md §5 applied to one stream).

As in tests/test_subscriptions.py: one server per module (1 and 2 worker processes), each test its
own boundary, and a subscription is checked once it has delivered the last event it must deliver
(delivery is in order, so what came before is then final and compared exactly).

The test files bind the fixtures here (`st_server`, `stub`, `subscribe`) to module names of their
own, so that pytest finds them there (importing a fixture that a test takes as a parameter is a lint
error, F811).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
import pytest

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from orisun.runtime.postgres import EmbeddedPostgres
from tests.support import ADMIN, CHANNEL_OPTIONS, ServerThread, StreamReader, auth_metadata, running_server

READER = ("stream-reader", "reader-password-1")  # a user without roles: may read, not write
DELIVERY_TIMEOUT = 30.0

BOUNDARY_NAMES = [
    "orders",  # the README's example
    "st_roundtrip", "st_after", "st_queries", "st_handover", "st_slow", "st_names", "st_names_other",
    "st_errors", "st_reader", "st_unfed",
]
BOUNDARIES = {"orisun_admin": "orisun_admin", **{name: name for name in BOUNDARY_NAMES}}


# --- Fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture(scope="module", params=[1, 2], ids=["1-worker", "2-workers"])
def st_server(postgres: EmbeddedPostgres, request: pytest.FixtureRequest) -> Iterator[ServerThread]:
    with running_server(postgres.conninfo, "test_stream_subs", workers=request.param,
                        boundaries=BOUNDARIES) as server:
        users = server.app.users
        assert users is not None
        server.call(users.create("Stream reader", *READER, []))
        yield server


@pytest.fixture
def stub(st_server: ServerThread) -> Iterator[pb_grpc.EventStoreStub]:
    with st_server.stub() as client:
        yield client


def ev(event_type: str = "Happened", tags: Sequence[tuple[str, str]] = (), data: str | None = None) -> pb.EventToSave:
    return pb.EventToSave(
        event_id=str(uuid.uuid4()),
        event_type=event_type,
        data=data if data is not None else json.dumps({"n": uuid.uuid4().hex[:8]}),
        tags=[pb.Tag(key=k, value=v) for k, v in tags],
    )


def save(stub: pb_grpc.EventStoreStub, boundary: str, stream: str, events: Sequence[pb.EventToSave]) -> pb.WriteResult:
    request = pb.SaveEventsRequest(boundary=boundary, stream=pb.SaveStreamQuery(name=stream, expected_version=-2),
                                   events=events)
    result: pb.WriteResult = stub.SaveEvents(request, metadata=auth_metadata(), timeout=30)
    return result


def query(*criteria: Sequence[tuple[str, str]]) -> pb.Query:
    return pb.Query(criteria=[pb.Criterion(tags=[pb.Tag(key=k, value=v) for k, v in c]) for c in criteria])


def read_stream(stub: pb_grpc.EventStoreStub, boundary: str, stream: str, q: pb.Query | None = None,
                from_version: int = 0) -> list[pb.Event]:
    """GetEvents of one stream (versions >= from_version, matching ``q``), paged in ASC order."""
    events: list[pb.Event] = []
    while True:
        request = pb.GetEventsRequest(boundary=boundary, query=q, count=10_000,
                                      stream=pb.GetStreamQuery(name=stream, from_version=from_version))
        if events:
            request.from_position.CopyFrom(events[-1].position)
        page = list(stub.GetEvents(request, metadata=auth_metadata(), timeout=30).events)
        events += page
        if len(page) < 10_000:
            return events


def versions(events: Sequence[pb.Event]) -> list[int]:
    return [e.version for e in events]


def assert_same_events(got: Sequence[pb.Event], expected: Sequence[pb.Event], what: str) -> None:
    """Stream and version first (a readable diff), then every field of every event."""
    assert [(e.stream_id, e.version) for e in got] == [(e.stream_id, e.version) for e in expected], what
    for g, e in zip(got, expected, strict=True):
        assert g == e, f"{what}: event {e.stream_id}@{e.version} differs from GetEvents'"


class StreamSubscription(StreamReader[pb.Event]):
    """A CatchUpSubscribeToStream call on its own channel, read by a thread."""

    def __init__(
        self,
        server: ServerThread,
        boundary: str,
        stream: str,
        after_version: int | None = -1,
        *,
        q: pb.Query | None = None,
        name: str = "",
        auth: tuple[str, str] = ADMIN,
        pause_after: int | None = None,
        options: list[tuple[str, Any]] | None = None,
    ) -> None:
        channel = grpc.insecure_channel(server.address, options=[*CHANNEL_OPTIONS, *(options or [])])
        request = pb.CatchUpSubscribeToStreamRequest(boundary=boundary, stream=stream, query=q, subscriber_name=name)
        if after_version is not None:
            request.afterVersion = after_version
        call = pb_grpc.EventStoreStub(channel).CatchUpSubscribeToStream(request, metadata=auth_metadata(*auth),
                                                                         timeout=110)
        super().__init__(call, channel, f"CatchUpSubscribeToStream({boundary}/{stream}, after={after_version}, "
                         f"name={name!r})", pause_after=pause_after)

    @property
    def events(self) -> list[pb.Event]:
        return self.items

    def wait_for_event(self, event_id: str, timeout: float = DELIVERY_TIMEOUT) -> None:
        """Until the event ``event_id`` has arrived (it must be one this subscription delivers)."""
        self.wait_until(lambda events: any(e.event_id == event_id for e in events), timeout, f"event {event_id}")

    def wait_for_version(self, version: int, timeout: float = DELIVERY_TIMEOUT) -> None:
        self.wait_until(lambda events: bool(events) and events[-1].version >= version, timeout,
                        f"version {version} (at {versions(self.events)[-1:]})")


@pytest.fixture
def subscribe(st_server: ServerThread) -> Iterator[Callable[..., StreamSubscription]]:
    """Start stream subscriptions; all are cancelled and joined at the end of the test."""
    started: list[StreamSubscription] = []

    def start(boundary: str, stream: str, after_version: int | None = -1, **kwargs: Any) -> StreamSubscription:
        subscription = StreamSubscription(st_server, boundary, stream, after_version, **kwargs)
        started.append(subscription)
        return subscription

    yield start
    for subscription in started:
        subscription.close()


def first_outcome(server: ServerThread, request: Any, rpc: str = "CatchUpSubscribeToStream",
                  metadata: list[tuple[str, str]] | None = None) -> pb.Event | grpc.RpcError:
    """The first thing a new call yields, an event or its error; the call is cancelled after."""
    with server.channel() as channel:
        call = getattr(pb_grpc.EventStoreStub(channel), rpc)(
            request, metadata=auth_metadata() if metadata is None else metadata, timeout=10)
        try:
            event: pb.Event = next(call)
            return event
        except grpc.RpcError as exc:
            return exc
        finally:
            call.cancel()


def refusal(server: ServerThread, request: Any, rpc: str = "CatchUpSubscribeToStream",
            metadata: list[tuple[str, str]] | None = None) -> tuple[grpc.StatusCode, str]:
    outcome = first_outcome(server, request, rpc, metadata)
    assert isinstance(outcome, grpc.RpcError), f"{rpc} was not refused: it delivered {outcome}"
    return outcome.code(), outcome.details() or ""


"""Fixtures and helpers shared by the SubscribeToEvents / CatchUpSubscribeToEvents tests
(tests/test_subscriptions*.py; docs/contract.md §2, §4, §5 and §7).

One server per test module; every test uses its own boundary (positions are per boundary, so exact
position lists are known) and cancels its calls at the end. A subscription's end cannot be seen
from outside, so tests wait until it has delivered the last event it must deliver (a "fence" that
every query of the test matches, written last): since delivery is in position order, the sequence
before it is then final and compared exactly.

The test files bind the fixtures here (`stub`, `sub_server`, `subscribe`) to module names of their
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

RPCS = ("SubscribeToEvents", "CatchUpSubscribeToEvents")
READER = ("subscription-reader", "reader-password-1")  # a user without roles: may read, not write
DELIVERY_TIMEOUT = 30.0

# Each test its own boundary (boundary = schema).
BOUNDARY_NAMES = [
    "payments",  # the brief's example
    "sub_roundtrip", "sub_queries", "sub_cursors", "sub_handover", "sub_slow",
    "sub_names", "sub_names_other", "sub_rpc_names", "sub_nodes", "sub_nodes_other", "sub_release",
    "sub_anonymous", "sub_errors", "sub_reader", "sub_encode_once",
]
BOUNDARIES = {"orisun_admin": "orisun_admin", **{name: name for name in BOUNDARY_NAMES}}


# --- Fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture(scope="module", params=[1, 2], ids=["1-worker", "2-workers"])
def sub_server(postgres: EmbeddedPostgres, request: pytest.FixtureRequest) -> Iterator[ServerThread]:
    with running_server(postgres.conninfo, "test_subs", workers=request.param, boundaries=BOUNDARIES) as server:
        users = server.app.users
        assert users is not None
        server.call(users.create("Subscription reader", *READER, []))
        yield server


@pytest.fixture
def stub(sub_server: ServerThread) -> Iterator[pb_grpc.EventStoreStub]:
    with sub_server.stub() as client:
        yield client


def ev(
    event_type: str = "Happened",
    tags: Sequence[tuple[str, str]] = (),
    data: str | None = None,
    metadata: str = "",
) -> pb.EventToSave:
    return pb.EventToSave(
        event_id=str(uuid.uuid4()),
        event_type=event_type,
        data=data if data is not None else json.dumps({"n": uuid.uuid4().hex[:8]}),
        metadata=metadata,
        tags=[pb.Tag(key=k, value=v) for k, v in tags],
    )


def save(
    stub: pb_grpc.EventStoreStub,
    boundary: str,
    stream: str,
    events: Sequence[pb.EventToSave],
    auth: tuple[str, str] = ADMIN,
) -> pb.WriteResult:
    request = pb.SaveEventsRequest(boundary=boundary, stream=pb.SaveStreamQuery(name=stream, expected_version=-2),
                                   events=events)
    result: pb.WriteResult = stub.SaveEvents(request, metadata=auth_metadata(*auth), timeout=30)
    return result


def query(*criteria: Sequence[tuple[str, str]]) -> pb.Query:
    return pb.Query(criteria=[pb.Criterion(tags=[pb.Tag(key=k, value=v) for k, v in c]) for c in criteria])


def pos(commit: int, prepare: int) -> pb.Position:
    return pb.Position(commit_position=commit, prepare_position=prepare)


def read_all(
    stub: pb_grpc.EventStoreStub, boundary: str, q: pb.Query | None = None, after: pb.Position | None = None
) -> list[pb.Event]:
    """Everything GetEvents returns for (query, cursor), paging in ASC order."""
    events: list[pb.Event] = []
    cursor = after
    while True:
        request = pb.GetEventsRequest(boundary=boundary, query=q, from_position=cursor, count=10_000)
        page = list(stub.GetEvents(request, metadata=auth_metadata(), timeout=30).events)
        events += page
        if len(page) < 10_000:
            return events
        cursor = page[-1].position


def prepares(events: Sequence[pb.Event]) -> list[int]:
    return [e.position.prepare_position for e in events]


def head(stub: pb_grpc.EventStoreStub, boundary: str) -> int:
    request = pb.GetEventsRequest(boundary=boundary, count=1, direction=pb.DESC)
    events = stub.GetEvents(request, metadata=auth_metadata(), timeout=30).events
    return events[0].position.prepare_position if events else 0


def assert_same_events(got: Sequence[pb.Event], expected: Sequence[pb.Event], what: str) -> None:
    """Positions first (a readable diff), then every field of every event."""
    assert prepares(got) == prepares(expected), what
    for g, e in zip(got, expected, strict=True):
        assert g == e, f"{what}: event at {e.position.prepare_position} differs from GetEvents'"


class Subscription(StreamReader[pb.Event]):
    """A SubscribeToEvents (or CatchUpSubscribeToEvents) call on its own channel, read by a thread
    (see StreamReader for ``pause_after``)."""

    def __init__(
        self,
        server: ServerThread,
        boundary: str,
        *,
        q: pb.Query | None = None,
        position: pb.Position | None = None,
        name: str = "",
        rpc: str = "SubscribeToEvents",
        auth: tuple[str, str] = ADMIN,
        pause_after: int | None = None,
        options: list[tuple[str, Any]] | None = None,
    ) -> None:
        channel = grpc.insecure_channel(server.address, options=[*CHANNEL_OPTIONS, *(options or [])])
        request = pb.CatchUpSubscribeToEventStoreRequest(boundary=boundary, query=q, position=position,
                                                         subscriber_name=name)
        method = getattr(pb_grpc.EventStoreStub(channel), rpc)
        call = method(request, metadata=auth_metadata(*auth), timeout=110)
        super().__init__(call, channel, f"{rpc}({boundary}, name={name!r})", pause_after=pause_after)

    @property
    def events(self) -> list[pb.Event]:
        return self.items

    def positions(self) -> list[int]:
        return prepares(self.events)

    def wait_for_count(self, count: int, timeout: float = DELIVERY_TIMEOUT) -> None:
        self.wait_until(lambda events: len(events) >= count, timeout, f"{count} events (has {len(self.events)})")

    def wait_for_position(self, prepare: int, timeout: float = DELIVERY_TIMEOUT) -> None:
        """Until the event at ``prepare`` (or a later one) has arrived."""
        self.wait_until(lambda events: max(prepares(events), default=0) >= prepare, timeout,
                        f"position {prepare} (at {max(self.positions(), default=0)})")


@pytest.fixture
def subscribe(sub_server: ServerThread) -> Iterator[Callable[..., Subscription]]:
    """Start subscriptions; all are cancelled and joined at the end of the test."""
    started: list[Subscription] = []

    def start(boundary: str, **kwargs: Any) -> Subscription:
        subscription = Subscription(sub_server, boundary, **kwargs)
        started.append(subscription)
        return subscription

    yield start
    for subscription in started:
        subscription.close()


def first_outcome(
    server: ServerThread,
    request: pb.CatchUpSubscribeToEventStoreRequest,
    rpc: str = "SubscribeToEvents",
    metadata: list[tuple[str, str]] | None = None,
) -> pb.Event | grpc.RpcError:
    """The first thing a new call yields, an event or its error; the call is cancelled after.

    The deadline is only a bound: a call that neither yields nor fails ends DEADLINE_EXCEEDED,
    which no test expects."""
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


def refusal(
    server: ServerThread,
    request: pb.CatchUpSubscribeToEventStoreRequest,
    rpc: str = "SubscribeToEvents",
    metadata: list[tuple[str, str]] | None = None,
) -> tuple[grpc.StatusCode, str]:
    outcome = first_outcome(server, request, rpc, metadata)
    assert isinstance(outcome, grpc.RpcError), f"{rpc} was not refused: it delivered {outcome}"
    return outcome.code(), outcome.details() or ""


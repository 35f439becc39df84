"""SubscribeToEvents / CatchUpSubscribeToEvents on a real server (docs/contract.md §2, §4, §5 and §7).

Written from the contract (docs/contract.md), not from the implementation. What is checked:

- a subscription delivers every event of its boundary matching its query, after its position
  (exclusive; absent = from the start), history first and then live, in position order, each once,
  carrying exactly what GetEvents returns for the same event (ids, data and metadata byte for byte,
  tags, positions, stream, version, creation time);
- its query means what it means to GetEvents (random events and random queries, compared with
  GetEvents' answer for the same query and cursor);
- the position cursor: from the start, from a saved position, from the middle of a write, from a
  position beyond the head;
- the brief's SubscribeToEvents example, verbatim through the real grpcurl, and the older RPC name
  CatchUpSubscribeToEvents;
- the catch-up → live handover under concurrent writers, with thousands of events of history;
- a slow subscriber (one that stops reading while thousands of events are written, with the
  server's live window shrunk to a few events) still gets everything in order, once each;
- subscriber_name exclusivity per boundary, across both RPC names and across two nodes on one
  database, and its release when the client or the node goes;
- errors on the stream with the codes of docs/contract.md §7, and that reading needs no write role.

One server for the module; every test uses its own boundary (positions are per boundary, so exact
position lists are known) and cancels its calls at the end. A subscription's end cannot be seen
from outside, so tests wait until it has delivered the last event it must deliver (a "fence" that
every query of the test matches, written last): since delivery is in position order, the sequence
before it is then final and compared exactly.
"""

from __future__ import annotations

import json
import random
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from orisun.runtime.postgres import EmbeddedPostgres
from orisun.service import subscriptions as subscriptions_module
from tests.brief import BRIEF_SUBSCRIBE_TO_EVENTS
from tests.support import (
    ADMIN,
    CHANNEL_OPTIONS,
    GrpcurlStream,
    ServerThread,
    StreamReader,
    auth_metadata,
    grpcurl,
    running_server,
    server_settings,
    shared_tmpdir,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)

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


def save_many(stub: pb_grpc.EventStoreStub, boundary: str, count: int, *, batch: int = 500,
              data: str | None = None, event_type: str = "Bulk") -> int:
    """Save ``count`` events in writes of ``batch``; the last position written."""
    last = 0
    for start in range(0, count, batch):
        events = [ev(event_type, [("n", str(start + i))], data=data) for i in range(min(batch, count - start))]
        last = save(stub, boundary, f"bulk-{start % 7}", events).log_position.prepare_position
    return last


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


# --- What a subscription delivers --------------------------------------------------------------


PAYLOADS = [  # (data, metadata): must come back byte for byte, from PostgreSQL and from the live feed
    ('{"a":1}', ""),
    ('  {\n\t"a" :   1 ,\r\n  "b":[ ]  }  \n', '\t{ "m" : [ 1 , 2 ] }\n'),
    ('{"name": "Zoë — 日本語 🎉", "ß": "ü"}', '{"who": "Ωmega"}'),
    ('{"esc": "q\\" b\\\\ n\\n u\\u00e9 s\\ud83d\\ude00"}', '{"x": "\\u0000 is escaped"}'),
    ('{"big": 123456789012345678901234567890, "f": 1.000000000000000000001}', "[]"),
    ('"text"', "null"),
    ("[" + ",".join(['"' + "x" * 1000 + '"'] * 100) + "]", '{"size": "100 kB"}'),
]
TAGS = [(), (("b", "2"), ("a", "1"), ("a", "1")), (("event_type", "Custom"), ("eventType", "x"), ("empty", "")),
        (("ünï", "cødé 🎉"),)]


def _varied(round_: str) -> list[tuple[str, list[pb.EventToSave]]]:
    """Writes (stream, events) with every kind of payload and tag, some with several events (so
    commit and prepare positions differ) and some continuing a stream (versions above 0)."""
    events = [ev(f"Type{i % 3}", TAGS[i % len(TAGS)], data, metadata) for i, (data, metadata) in enumerate(PAYLOADS)]
    events[1].event_id = events[1].event_id.upper()  # comes back in canonical lowercase, like GetEvents'
    return [(f"order-{round_}", events[:3]), (f"other-{round_}", events[3:4]), (f"order-{round_}", events[4:]),
            (f"single-{round_}", [ev("Last", [("round", round_)])])]


@pytest.mark.parametrize("rpc", RPCS)
def test_events_carry_exactly_what_get_events_returns(
    stub: pb_grpc.EventStoreStub, subscribe: Callable[..., Subscription], rpc: str
) -> None:
    boundary = "sub_roundtrip"
    start = head(stub, boundary)  # the test runs once per RPC name on the same boundary
    for stream, events in _varied(f"history-{rpc}"):
        save(stub, boundary, stream, events)
    subscription = subscribe(boundary, rpc=rpc, position=pos(start, start))
    history_end = head(stub, boundary)
    subscription.wait_for_position(history_end)  # catch-up done: what follows comes live
    for stream, events in _varied(f"live-{rpc}"):
        save(stub, boundary, stream, events)
    end = head(stub, boundary)
    subscription.wait_for_position(end)

    expected = read_all(stub, boundary, after=pos(start, start))
    assert prepares(expected) == list(range(start + 1, end + 1))
    assert any(e.position.commit_position != e.position.prepare_position for e in expected)
    assert any(e.version > 0 for e in expected)
    assert_same_events(subscription.events, expected, f"{rpc}: history and live")
    live = [e for e in subscription.events if e.position.prepare_position > history_end]
    assert [(e.data, e.metadata) for e in live if e.event_type != "Last"] == PAYLOADS


def _random_tags(rng: random.Random, types: list[str]) -> list[tuple[str, str]]:
    tags = [(rng.choice("abc"), rng.choice("123")) for _ in range(rng.randint(0, 3))]
    if rng.random() < 0.15:  # a stored tag named like the pseudo-tag: it is just a tag
        tags.append((rng.choice(["event_type", "eventType"]), rng.choice(types)))
    rng.shuffle(tags)
    return tags


def _random_query(rng: random.Random, types: list[str], fence: tuple[str, str]) -> pb.Query:
    criteria: list[list[tuple[str, str]]] = []
    for _ in range(rng.randint(1, 3)):
        criterion = [(rng.choice("abc"), rng.choice("123")) for _ in range(rng.randint(1, 2))]
        if rng.random() < 0.5:
            criterion.append((rng.choice(["event_type", "eventType"]), rng.choice(types)))
        rng.shuffle(criterion)
        criteria.append(criterion)
    criteria.append([fence])  # so that every subscription of the test ends on the fence event
    rng.shuffle(criteria)
    return query(*criteria)


def test_query_semantics_match_get_events(
    stub: pb_grpc.EventStoreStub, subscribe: Callable[..., Subscription]
) -> None:
    boundary = "sub_queries"
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    types = ["Opened", "Paid", "Closed"]
    fence = ("fence", uuid.uuid4().hex)

    def write_random(count: int) -> None:
        written = 0
        while written < count:
            n = rng.randint(1, 5)
            events = [ev(rng.choice(types), _random_tags(rng, types)) for _ in range(n)]
            save(stub, boundary, f"s-{rng.randint(1, 4)}", events)
            written += n

    write_random(150)
    history = read_all(stub, boundary)
    cases: list[tuple[pb.Query | None, pb.Position | None]] = [(None, None)]
    for i in range(10):
        cursor = None
        if i % 3 == 1:
            cursor = rng.choice(history).position
        elif i % 3 == 2:
            cursor = pos(0, 0)
        cases.append((_random_query(rng, types, fence), cursor))
    subscriptions = [subscribe(boundary, q=q, position=cursor, rpc=RPCS[i % 2]) for i, (q, cursor) in enumerate(cases)]
    write_random(150)
    last = save(stub, boundary, "fence", [ev("Fence", [fence])]).log_position.prepare_position

    for (q, cursor), subscription in zip(cases, subscriptions, strict=True):
        subscription.wait_for_position(last)
        expected = read_all(stub, boundary, q, cursor)
        shown = json_format.MessageToDict(q) if q is not None else None
        what = f"seed {seed}, query {shown}, after {cursor}"
        assert expected and expected[-1].position.prepare_position == last
        assert_same_events(subscription.events, expected, what)


def test_position_cursor(stub: pb_grpc.EventStoreStub, subscribe: Callable[..., Subscription]) -> None:
    boundary = "sub_cursors"
    # Writes of 3, 4 and 3 events: positions 1-3 (commit 3), 4-7 (commit 7), 8-10 (commit 10).
    for stream, size in (("a", 3), ("b", 4), ("a", 3)):
        save(stub, boundary, stream, [ev() for _ in range(size)])
    saved = read_all(stub, boundary)
    assert [(e.position.commit_position, e.position.prepare_position) for e in saved][3:7] == [
        (7, 4), (7, 5), (7, 6), (7, 7)]

    cursors: dict[str, tuple[pb.Position | None, list[int]]] = {
        # name: (cursor, expected positions once 10 single-event writes and one 5-event write follow)
        "absent": (None, list(range(1, 26))),
        "zero": (pos(0, 0), list(range(1, 26))),
        "saved-event": (saved[4].position, list(range(6, 26))),  # (7, 5): the rest of its write on
        "end-of-write": (saved[6].position, list(range(8, 26))),  # (7, 7)
        "whole-write": (pos(7, 0), list(range(4, 26))),  # lexicographic: every event of the write ending at 7
        "head": (saved[-1].position, list(range(11, 26))),
        "beyond-head": (pos(15, 15), list(range(16, 26))),
    }
    subscriptions = {name: subscribe(boundary, position=cursor) for name, (cursor, _) in cursors.items()}
    for name, (_, expected) in cursors.items():
        if expected[0] <= 10:  # has history: let it arrive first, so that the rest comes live
            subscriptions[name].wait_for_position(10)
    for _ in range(10):  # 11..20, each its own write: commit == prepare
        save(stub, boundary, "c", [ev()])
    last = save(stub, boundary, "d", [ev() for _ in range(5)]).log_position.prepare_position  # 21..25
    assert last == 25

    for name, (cursor, expected) in cursors.items():
        subscriptions[name].wait_for_position(last)
        got = subscriptions[name].events
        assert prepares(got) == expected, name
        assert_same_events(got, read_all(stub, boundary, after=cursor), f"{name}: same as GetEvents")


# --- The brief's example through grpcurl ---------------------------------------------------------


PAYMENT_TYPES = ("PaymentInitiated", "PaymentAuthorized", "PaymentFailed")


def _payment_writes(stub: pb_grpc.EventStoreStub, label: str) -> list[str]:
    """Writes mixing the three payment types with others; the ids of the payment-typed ones, in order."""
    writes = [
        ("payment-1", ["PaymentInitiated", "OrderCreated", "PaymentAuthorized"]),
        ("payment-2", ["PaymentRefunded", "PaymentInitiated"]),
        ("order-1", ["OrderShipped"]),
        ("payment-2", ["PaymentFailed", "PaymentSettled", "PaymentInitiated", "PaymentAuthorized"]),
    ]
    ids = []
    for stream, types in writes:
        events = [ev(t, [("payment_id", stream), ("label", label)],
                     json.dumps({"amount": 100 + n, "currency": "EUR"}), json.dumps({"source": label}))
                  for n, t in enumerate(types)]
        save(stub, "payments", f"{stream}-{label}", events)
        ids += [e.event_id for e in events if e.event_type in PAYMENT_TYPES]
    return ids


def _grpcurl_events(stream: GrpcurlStream) -> list[pb.Event]:
    """grpcurl's JSON output, parsed back into Events (it prints the proto field names)."""
    return [json_format.ParseDict(o, pb.Event()) for o in stream.objects]


def _wait_grpcurl(stream: GrpcurlStream, count: int) -> list[pb.Event]:
    def arrived() -> list[pb.Event] | None:
        stream.check()
        events = _grpcurl_events(stream)
        return events if len(events) >= count else None

    result: list[pb.Event] = wait_for(arrived, DELIVERY_TIMEOUT, f"{count} events in grpcurl's output")
    return result


def _grpcurl_until_accepted(address: str, method: str, body: str) -> GrpcurlStream:
    """Start grpcurl until the server accepts the call (the subscriber name frees asynchronously
    after its previous holder went away): accepted once it prints an event of the history."""
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while True:
        stream = GrpcurlStream(address, method, body)

        def answered(stream: GrpcurlStream = stream) -> bool:
            return bool(stream.objects) or stream.process.poll() is not None

        try:
            wait_for(answered, DELIVERY_TIMEOUT, f"{method} through grpcurl to print an event or exit")
        except BaseException:
            stream.close()
            raise
        if stream.objects:
            return stream
        stderr = stream.process.stderr.read() if stream.process.stderr else ""
        stream.close()
        assert "AlreadyExists" in stderr, stderr
        assert time.monotonic() < deadline, f"the subscriber name stayed taken: {stderr}"


def test_brief_subscribe_example_through_grpcurl(sub_server: ServerThread, stub: pb_grpc.EventStoreStub) -> None:
    body = json.loads(BRIEF_SUBSCRIBE_TO_EVENTS)
    assert (body["boundary"], body["subscriber_name"]) == ("payments", "payment-processor")
    brief_query = json_format.ParseDict(body["query"], pb.Query())
    expected_ids = _payment_writes(stub, "before")

    first = GrpcurlStream(sub_server.address, "eventstore.EventStore/SubscribeToEvents", BRIEF_SUBSCRIBE_TO_EVENTS)
    try:
        _wait_grpcurl(first, len(expected_ids))
        # The same body under the older RPC name, while the first holds the name: refused at once.
        refused = grpcurl(sub_server.address, "eventstore.EventStore/CatchUpSubscribeToEvents",
                          data=BRIEF_SUBSCRIBE_TO_EVENTS, timeout=20)
        assert refused.returncode != 0, refused.stdout
        assert "AlreadyExists" in refused.stderr, refused.stderr
        assert "payment-processor" in refused.stderr, refused.stderr

        expected_ids += _payment_writes(stub, "after")
        got = _wait_grpcurl(first, len(expected_ids))
        assert [e.event_id for e in got] == expected_ids
        assert all(e.event_type in PAYMENT_TYPES for e in got)
        assert_same_events(got, read_all(stub, "payments", brief_query), "the brief's subscription")
    finally:
        first.close()

    second = _grpcurl_until_accepted(sub_server.address, "eventstore.EventStore/CatchUpSubscribeToEvents",
                                     BRIEF_SUBSCRIBE_TO_EVENTS)
    try:
        expected_ids += _payment_writes(stub, "again")
        got = _wait_grpcurl(second, len(expected_ids))
        assert [e.event_id for e in got] == expected_ids
        assert_same_events(got, read_all(stub, "payments", brief_query), "CatchUpSubscribeToEvents")
    finally:
        second.close()


# --- Handover and back-pressure ------------------------------------------------------------------


class Writer:
    """A thread committing small writes to ``boundary`` on its own channel until stopped."""

    def __init__(self, server: ServerThread, boundary: str, stream: str) -> None:
        self._channel = grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS)
        self._stub = pb_grpc.EventStoreStub(self._channel)
        self._boundary = boundary
        self._stream = stream
        self._stop = threading.Event()
        self.writes = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"writer-{stream}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                save(self._stub, self._boundary, self._stream, [ev("Live", [("w", self._stream)]) for _ in range(3)])
                self.writes += 1
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._channel.close()
        assert not self._thread.is_alive(), "writer did not stop"
        assert self.error is None, f"writer failed: {self.error!r}"


def test_handover_under_concurrent_writes(
    sub_server: ServerThread, stub: pb_grpc.EventStoreStub, subscribe: Callable[..., Subscription]
) -> None:
    boundary = "sub_handover"
    history = save_many(stub, boundary, 3_000)
    writers = [Writer(sub_server, boundary, f"writer-{n}") for n in range(2)]
    try:
        wait_for(lambda: all(w.writes >= 2 or w.error for w in writers), DELIVERY_TIMEOUT, "the writers to run")
        # Started while writers commit: their events land during catch-up and at the handover.
        everything = subscribe(boundary)
        live_only = subscribe(boundary, q=query([("event_type", "Live")]), rpc="CatchUpSubscribeToEvents")
        # Event 1700's own position (its write of 500 ends at 2000): a cursor inside a catch-up page.
        from_middle = subscribe(boundary, position=pos(2_000, 1_700))

        at_start = head(stub, boundary)
        everything.wait_for_position(at_start)
        writes_at_catch_up = sum(w.writes for w in writers)
        # Keep writing well past the handover.
        wait_for(lambda: sum(w.writes for w in writers) >= writes_at_catch_up + 50, DELIVERY_TIMEOUT,
                 "writes after the catch-up")
    finally:
        for writer in writers:
            writer.stop()
    last = save(stub, boundary, "fence", [ev("Live", [("w", "fence")])]).log_position.prepare_position
    assert last > at_start > history

    for subscription in (everything, live_only, from_middle):
        subscription.wait_for_position(last)
    assert everything.positions() == list(range(1, last + 1))
    assert_same_events(everything.events, read_all(stub, boundary), "no query")
    assert_same_events(live_only.events, read_all(stub, boundary, query([("event_type", "Live")])), "Live only")
    assert from_middle.positions() == list(range(1_701, last + 1))
    assert_same_events(from_middle.events, read_all(stub, boundary, after=pos(2_000, 1_700)), "from 1700")


def test_slow_subscriber_falls_behind_and_still_gets_everything(
    sub_server: ServerThread,
    stub: pb_grpc.EventStoreStub,
    subscribe: Callable[..., Subscription],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server's live window of recent events shrunk to 20: writes of up to 100 events and
    subscribers that stop reading leave every subscriber behind it again and again; they must be
    served from PostgreSQL, with nothing lost or repeated."""
    monkeypatch.setattr(subscriptions_module, "TAIL_EVENTS", 20)
    boundary = "sub_slow"
    data = json.dumps({"pad": "s" * 2000})  # ~2 kB: 1,000 of them are far more than a flow-control window
    # No BDP probing: the paused client's HTTP/2 window stays small, so the server cannot push far ahead.
    slow_options = [("grpc.http2.bdp_probe", 0)]

    # Subscribed before anything exists: everything is live to it; it stops reading at 100.
    slow_live = subscribe(boundary, pause_after=100, options=slow_options)
    first = save(stub, boundary, "first", [ev("Bulk", data=data)]).log_position.prepare_position
    slow_live.wait_for_position(first)  # established
    save_many(stub, boundary, 599, batch=100, data=data)  # 2..600

    # Subscribed with 600 events of history: stops reading at 100, inside its catch-up.
    slow_catch_up = subscribe(boundary, pause_after=100, name="slow-catch-up", rpc="CatchUpSubscribeToEvents",
                              options=slow_options)
    fast = subscribe(boundary)
    slow_catch_up.wait_for_count(100)
    slow_live.wait_for_count(100)

    rng = random.Random(7)
    written = 600
    while written < 2_000:
        size = rng.randint(1, 100)
        save(stub, boundary, f"s-{written % 5}", [ev("Bulk", data=data) for _ in range(size)])
        written += size
    last = head(stub, boundary)
    fast.wait_for_position(last)  # the others' pause holds nobody else up

    slow_live.resume()
    slow_catch_up.resume()
    expected = read_all(stub, boundary)
    assert prepares(expected) == list(range(1, last + 1))
    for subscription in (fast, slow_live, slow_catch_up):
        subscription.wait_for_position(last)
        assert_same_events(subscription.events, expected, subscription.label)


# --- subscriber_name -------------------------------------------------------------------------------


def _established(server: ServerThread, boundary: str, name: str, rpc: str) -> Subscription:
    """A named subscription holding its name, retried while the name is still taken (a previous
    holder's release happens on the server after it sees the cancellation). It holds the name once
    it has delivered an event: the boundary has history."""
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while True:
        subscription = Subscription(server, boundary, name=name, rpc=rpc)

        def answered(subscription: Subscription = subscription) -> bool:
            return bool(subscription.events) or subscription.error is not None

        try:
            wait_for(answered, DELIVERY_TIMEOUT, f"{name} to get an answer")
        except BaseException:
            subscription.close()
            raise
        if subscription.events:
            return subscription
        subscription.close()
        error = subscription.error
        assert isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.ALREADY_EXISTS, error
        assert time.monotonic() < deadline, f"the subscriber name {name!r} stayed taken"


def test_second_subscription_with_the_same_name_is_refused(
    sub_server: ServerThread, stub: pb_grpc.EventStoreStub, subscribe: Callable[..., Subscription]
) -> None:
    save(stub, "sub_names", "s", [ev()])
    save(stub, "sub_names_other", "s", [ev()])
    name = "projector-1"
    holder = subscribe("sub_names", name=name)
    holder.wait_for_count(1)

    started = time.monotonic()
    code, details = refusal(sub_server, pb.CatchUpSubscribeToEventStoreRequest(boundary="sub_names",
                                                                               subscriber_name=name))
    assert code == grpc.StatusCode.ALREADY_EXISTS, details
    assert name in details
    assert time.monotonic() - started < 5, "refused at once, not after a wait"
    # A different query or position does not make it another subscriber.
    code, details = refusal(sub_server, pb.CatchUpSubscribeToEventStoreRequest(
        boundary="sub_names", subscriber_name=name, query=query([("x", "y")]), position=pos(1, 1)))
    assert code == grpc.StatusCode.ALREADY_EXISTS, details

    # The same name on another boundary is another subscriber.
    other = subscribe("sub_names_other", name=name)
    other.wait_for_count(1)
    # A different name on the same boundary too.
    different = subscribe("sub_names", name="projector-2")
    different.wait_for_count(1)

    # The holder was not disturbed by the refused attempts.
    last = save(stub, "sub_names", "s", [ev()]).log_position.prepare_position
    for subscription in (holder, different):
        subscription.wait_for_position(last)
        assert subscription.positions() == [1, 2]
    assert other.positions() == [1]


@pytest.mark.parametrize("holder_rpc", RPCS)
def test_the_name_is_shared_by_both_rpc_names(
    sub_server: ServerThread, stub: pb_grpc.EventStoreStub, subscribe: Callable[..., Subscription], holder_rpc: str
) -> None:
    if head(stub, "sub_rpc_names") == 0:
        save(stub, "sub_rpc_names", "s", [ev()])
    name = f"held-by-{holder_rpc}"
    holder = subscribe("sub_rpc_names", name=name, rpc=holder_rpc)
    holder.wait_for_count(1)
    for rpc in RPCS:
        code, details = refusal(sub_server, pb.CatchUpSubscribeToEventStoreRequest(
            boundary="sub_rpc_names", subscriber_name=name), rpc)
        assert code == grpc.StatusCode.ALREADY_EXISTS, (rpc, details)
        assert name in details


def test_the_name_frees_when_its_client_goes(sub_server: ServerThread, stub: pb_grpc.EventStoreStub) -> None:
    boundary = "sub_release"
    save(stub, boundary, "s", [ev(), ev()])
    request = pb.CatchUpSubscribeToEventStoreRequest(boundary=boundary, subscriber_name="released")
    holder = Subscription(sub_server, boundary, name="released")
    try:
        holder.wait_for_count(2)
        for round_ in range(4):
            code, details = refusal(sub_server, request, RPCS[round_ % 2])
            assert code == grpc.StatusCode.ALREADY_EXISTS, details
            holder.close()
            # Free again once the server has seen the client go: _established waits for it.
            holder = _established(sub_server, boundary, "released", RPCS[(round_ + 1) % 2])
            holder.wait_for_count(2)
            assert holder.positions() == [1, 2]
    finally:
        holder.close()


def test_the_name_is_exclusive_across_nodes(sub_server: ServerThread, stub: pb_grpc.EventStoreStub) -> None:
    """A second node on the same database (its own NATS and data dir) refuses a name the first
    node serves, serves the same name on another boundary, and the name frees when its node stops.
    Its subscriber also gets what the first node commits (the database is the source of truth)."""
    save(stub, "sub_nodes", "s", [ev()])
    save(stub, "sub_nodes_other", "s", [ev()])
    data_dir = shared_tmpdir("orisun-test-second-node-")
    second = ServerThread(server_settings(data_dir, sub_server.settings.pg_conninfo, boundaries=BOUNDARIES))
    held: list[Subscription] = []
    try:
        second.start()
        held.append(_established(second, "sub_nodes", "across-nodes", "SubscribeToEvents"))
        request = pb.CatchUpSubscribeToEventStoreRequest(boundary="sub_nodes", subscriber_name="across-nodes")
        for rpc in RPCS:
            code, details = refusal(sub_server, request, rpc)
            assert code == grpc.StatusCode.ALREADY_EXISTS, details
            assert "across-nodes" in details
        # The name is per boundary on every node.
        held.append(_established(sub_server, "sub_nodes_other", "across-nodes", "SubscribeToEvents"))
        last = save(stub, "sub_nodes", "s", [ev(), ev()]).log_position.prepare_position
        held[0].wait_for_position(last)
        assert_same_events(held[0].events, read_all(stub, "sub_nodes"), "written on the other node")
        # The node serving the name goes away: the first node may now serve it.
        for subscription in held:
            subscription.close()
        second.stop()
        held.append(_established(sub_server, "sub_nodes", "across-nodes", "CatchUpSubscribeToEvents"))
    finally:
        for subscription in held:
            subscription.close()
        second.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def test_empty_name_means_no_exclusivity(stub: pb_grpc.EventStoreStub, subscribe: Callable[..., Subscription]) -> None:
    boundary = "sub_anonymous"
    save(stub, boundary, "s", [ev(), ev()])
    anonymous = [subscribe(boundary, rpc=RPCS[n % 2]) for n in range(3)]
    for subscription in anonymous:
        subscription.wait_for_count(2)
    last = save(stub, boundary, "s", [ev()]).log_position.prepare_position
    for subscription in anonymous:
        subscription.wait_for_position(last)
        assert subscription.positions() == [1, 2, 3]


def test_a_live_event_is_encoded_once_for_all_its_subscribers(
    sub_server: ServerThread, stub: pb_grpc.EventStoreStub, subscribe: Callable[..., Subscription],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue #13: an event is serialised once however many subscribers receive it (once per
    worker process with workers, where each serves its own subscribers)."""
    if sub_server.settings.workers > 1:
        pytest.skip("counts the encodings done in this process, which serves no calls with workers")
    from orisun.transport import convert

    encoded: list[str] = []
    original = convert.event_to_proto

    def counting(event: Any) -> pb.Event:
        encoded.append(event.event_id)
        return original(event)

    monkeypatch.setattr(convert, "event_to_proto", counting)
    boundary = "sub_encode_once"
    first = save(stub, boundary, "s", [ev()]).log_position.prepare_position
    subscriptions = [subscribe(boundary, rpc=RPCS[n % 2]) for n in range(4)]
    for subscription in subscriptions:
        subscription.wait_for_position(first)
    live = ev()
    last = save(stub, boundary, "s", [live]).log_position.prepare_position
    for subscription in subscriptions:
        subscription.wait_for_position(last)
        assert subscription.positions() == [first, last]
        assert subscription.events[-1].event_id == live.event_id
    assert encoded.count(live.event_id) == 1, encoded


# --- Errors and auth ----------------------------------------------------------------------------------


@pytest.mark.parametrize("rpc", RPCS)
@pytest.mark.parametrize(
    ("request_fields", "code", "named"),
    [
        ({"boundary": "nowhere"}, grpc.StatusCode.NOT_FOUND, "nowhere"),
        ({"boundary": ""}, grpc.StatusCode.INVALID_ARGUMENT, "boundary"),
        ({"boundary": "sub_errors", "query": query([("a", "1")], [("", "x")])}, grpc.StatusCode.INVALID_ARGUMENT,
         "query.criteria[1].tags[0].key"),
        ({"boundary": "sub_errors", "subscriber_name": "payment processor"}, grpc.StatusCode.INVALID_ARGUMENT,
         "subscriber_name"),
    ],
    ids=["unknown-boundary", "no-boundary", "empty-tag-key", "name-with-space"],
)
def test_invalid_subscriptions_are_refused_on_the_stream(
    sub_server: ServerThread, rpc: str, request_fields: dict[str, Any], code: grpc.StatusCode, named: str
) -> None:
    got, details = refusal(sub_server, pb.CatchUpSubscribeToEventStoreRequest(**request_fields), rpc)
    assert got == code, details
    assert named in details


@pytest.mark.parametrize("rpc", RPCS)
@pytest.mark.parametrize(
    "metadata",
    [[], auth_metadata("admin", "wrong"), auth_metadata("nobody-here", "changeit")],
    ids=["no-credentials", "wrong-password", "unknown-user"],
)
def test_subscribing_needs_credentials(
    sub_server: ServerThread, stub: pb_grpc.EventStoreStub, rpc: str, metadata: list[tuple[str, str]]
) -> None:
    if head(stub, "sub_errors") == 0:
        save(stub, "sub_errors", "s", [ev()])  # an accepted call would deliver it: the refusal is real
    code, details = refusal(sub_server, pb.CatchUpSubscribeToEventStoreRequest(boundary="sub_errors"), rpc, metadata)
    assert code == grpc.StatusCode.UNAUTHENTICATED, details


def test_a_user_without_write_roles_may_subscribe(
    stub: pb_grpc.EventStoreStub, subscribe: Callable[..., Subscription]
) -> None:
    boundary = "sub_reader"
    save(stub, boundary, "s", [ev(), ev()])
    with pytest.raises(grpc.RpcError) as raised:
        save(stub, boundary, "s", [ev()], auth=READER)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED  # the user really is read-only
    reader = subscribe(boundary, auth=READER, name="reader", q=query([("event_type", "Happened")]))
    reader.wait_for_count(2)
    last = save(stub, boundary, "s", [ev()]).log_position.prepare_position
    reader.wait_for_position(last)
    assert_same_events(reader.events, read_all(stub, boundary), "the reader's subscription")

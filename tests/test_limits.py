"""Limits (issue #12, defects 5 and 7): bounded status messages and GetEvents pages that fit.

- Defect 5: a 20,000-byte boundary, stream name, subscriber name, subject or consumer name must
  get its proper status (INVALID_ARGUMENT or NOT_FOUND) with a short message. Echoing it whole
  made the trailer exceed the client's metadata limit: the client saw RESOURCE_EXHAUSTED.
- Defect 7: GetEvents with `count=100` over ~1 MB events must answer a page that fits a default
  client (cut, and marked as cut), so that paging with the cursor reads every event exactly once.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from loguru import logger

from orisun import errors
from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from orisun.runtime.postgres import EmbeddedPostgres
from orisun.transport.status import status_of
from tests.support import ServerThread, auth_metadata, running_server

pytestmark = pytest.mark.timeout(120)

AUTH = auth_metadata()
BOUNDARIES = {"orisun_admin": "orisun_admin", "limits": "limits"}
LONG = "x" * 20_000
# A short message: the bound of the central cap (transport/status.py), documented in the README.
SHORT = 1024
MESSAGE_LIMIT = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def server(postgres: EmbeddedPostgres) -> Iterator[ServerThread]:
    # The message limit of a default gRPC client (4 MiB), so that a default client reads whole pages;
    # the default limit (64 MiB) cuts pages the same way, only later.
    with running_server(postgres.conninfo, "test_limits", boundaries=BOUNDARIES,
                        grpc_max_message_size=MESSAGE_LIMIT) as running:
        yield running


@pytest.fixture(scope="module")
def stub(server: ServerThread) -> Iterator[pb_grpc.EventStoreStub]:
    with server.stub() as client:
        yield client


@pytest.fixture
def logged_errors(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[[], list[str]]]:
    """A function listing the errors logged so far in the test: Orisun's (loguru) and the
    libraries' (logging: gRPC logs a failed send there, with its traceback)."""
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="ERROR")
    caplog.set_level("WARNING")

    def errors() -> list[str]:
        return lines + [f"{r.levelname} {r.name}: {r.getMessage()}" for r in caplog.records
                        if r.levelno >= 40 or r.exc_info]

    yield errors
    logger.remove(sink)


def rpc_error(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if hasattr(result, "__next__"):  # a streaming call fails when it is read
            next(result)
    error = info.value
    return error.code(), error.details() or ""  # type: ignore[attr-defined]


def event(data: Any = None, **fields: Any) -> pb.EventToSave:
    fields.setdefault("event_id", str(uuid.uuid4()))
    fields.setdefault("event_type", "Tested")
    return pb.EventToSave(data=json.dumps(data if data is not None else {}), **fields)


def save(
    boundary: str = "limits", stream: str = "s", events: list[pb.EventToSave] | None = None, expected_version: int = -2
) -> pb.SaveEventsRequest:
    return pb.SaveEventsRequest(boundary=boundary,
                                stream=pb.SaveStreamQuery(name=stream, expected_version=expected_version),
                                events=events if events is not None else [event()])


def subscription(**fields: Any) -> pb.CatchUpSubscribeToEventStoreRequest:
    fields.setdefault("boundary", "limits")
    return pb.CatchUpSubscribeToEventStoreRequest(**fields)


# --- Defect 5: unbounded echoes ------------------------------------------------------------------

# (label, the call on a stub, the acceptable codes, the field the message must name)
CASES: list[tuple[str, Callable[[pb_grpc.EventStoreStub], Any], set[grpc.StatusCode], str]] = [
    ("SaveEvents boundary", lambda s: s.SaveEvents(save(boundary=LONG), metadata=AUTH),
     {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}, "boundary"),
    ("SaveEvents stream.name", lambda s: s.SaveEvents(save(stream=LONG), metadata=AUTH),
     {grpc.StatusCode.INVALID_ARGUMENT}, "stream.name"),
    ("SaveEvents event_id", lambda s: s.SaveEvents(save(events=[event(event_id=LONG)]), metadata=AUTH),
     {grpc.StatusCode.INVALID_ARGUMENT}, "events[0].event_id"),
    ("SaveEvents event_type", lambda s: s.SaveEvents(save(events=[event(event_type=LONG)]), metadata=AUTH),
     {grpc.StatusCode.INVALID_ARGUMENT}, "events[0].event_type"),
    ("SaveEvents tag key", lambda s: s.SaveEvents(save(events=[event(tags=[pb.Tag(key=LONG, value="v")])]),
                                                  metadata=AUTH),
     {grpc.StatusCode.INVALID_ARGUMENT}, "events[0].tags[0].key"),
    ("GetEvents boundary", lambda s: s.GetEvents(pb.GetEventsRequest(boundary=LONG), metadata=AUTH),
     {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}, "boundary"),
    ("GetEvents stream.name", lambda s: s.GetEvents(
        pb.GetEventsRequest(boundary="limits", stream=pb.GetStreamQuery(name=LONG)), metadata=AUTH),
     {grpc.StatusCode.INVALID_ARGUMENT}, "stream.name"),
    ("SubscribeToEvents boundary", lambda s: s.SubscribeToEvents(subscription(boundary=LONG), metadata=AUTH),
     {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}, "boundary"),
    ("SubscribeToEvents subscriber_name", lambda s: s.SubscribeToEvents(
        subscription(subscriber_name=LONG), metadata=AUTH), {grpc.StatusCode.INVALID_ARGUMENT}, "subscriber_name"),
    ("CatchUpSubscribeToEvents boundary", lambda s: s.CatchUpSubscribeToEvents(
        subscription(boundary=LONG), metadata=AUTH),
     {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}, "boundary"),
    ("CatchUpSubscribeToEvents subscriber_name", lambda s: s.CatchUpSubscribeToEvents(
        subscription(subscriber_name=LONG), metadata=AUTH), {grpc.StatusCode.INVALID_ARGUMENT}, "subscriber_name"),
    ("CatchUpSubscribeToStream boundary", lambda s: s.CatchUpSubscribeToStream(
        pb.CatchUpSubscribeToStreamRequest(boundary=LONG, stream="s"), metadata=AUTH),
     {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}, "boundary"),
    ("CatchUpSubscribeToStream stream", lambda s: s.CatchUpSubscribeToStream(
        pb.CatchUpSubscribeToStreamRequest(boundary="limits", stream=LONG), metadata=AUTH),
     {grpc.StatusCode.INVALID_ARGUMENT}, "stream"),
    ("CatchUpSubscribeToStream subscriber_name", lambda s: s.CatchUpSubscribeToStream(
        pb.CatchUpSubscribeToStreamRequest(boundary="limits", stream="s", subscriber_name=LONG), metadata=AUTH),
     {grpc.StatusCode.INVALID_ARGUMENT}, "subscriber_name"),
    ("PublishToPubSub subject", lambda s: s.PublishToPubSub(
        pb.PublishRequest(subject=LONG, data="{}"), metadata=AUTH), {grpc.StatusCode.INVALID_ARGUMENT}, "subject"),
    ("SubscribeToPubSub subject", lambda s: s.SubscribeToPubSub(
        pb.SubscribeRequest(subject=LONG, consumer_name="c"), metadata=AUTH),
     {grpc.StatusCode.INVALID_ARGUMENT}, "subject"),
    ("SubscribeToPubSub consumer_name", lambda s: s.SubscribeToPubSub(
        pb.SubscribeRequest(subject="limits.test", consumer_name=LONG), metadata=AUTH),
     {grpc.StatusCode.INVALID_ARGUMENT}, "consumer_name"),
]


@pytest.mark.parametrize(("label", "call", "codes", "field"), CASES, ids=[case[0] for case in CASES])
def test_a_20000_byte_name_gets_its_status_with_a_short_message(
    stub: pb_grpc.EventStoreStub,
    label: str,
    call: Callable[[pb_grpc.EventStoreStub], Any],
    codes: set[grpc.StatusCode],
    field: str,
) -> None:
    code, message = rpc_error(lambda: call(stub))
    assert code in codes, f"{label}: {code} {message[:200]!r}"
    assert len(message.encode()) <= SHORT, f"{label}: a {len(message.encode())}-byte message"
    assert field in message


def test_a_quoted_value_is_a_bounded_prefix_with_the_full_size() -> None:
    assert errors.quoted("orders") == "'orders'"
    text = errors.quoted("é" * 20_000)
    assert text.startswith("'" + "é" * 10) and "40000 bytes" in text
    assert len(text) < 120
    # A lone surrogate (impossible in a decoded proto string, possible in other callers' text) is fine too.
    assert "bytes" in errors.quoted("\ud800" * 100)


@pytest.mark.parametrize("char", ["x", "é", "€", "😀"])
def test_every_status_message_is_capped_on_a_character_boundary(char: str) -> None:
    code, message = status_of(errors.InvalidArgument("field", char * 20_000))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    encoded = message.encode()  # a cut through a character would not encode (or decode) cleanly
    assert len(encoded) <= SHORT
    assert message.startswith("field: " + char * 10)
    assert encoded.decode() == message


def test_a_short_status_message_is_unchanged() -> None:
    assert status_of(errors.NotFound("boundary 'x' is not configured")) == (
        grpc.StatusCode.NOT_FOUND, "boundary 'x' is not configured")


def test_a_boundary_longer_than_any_configurable_one_names_the_field(stub: pb_grpc.EventStoreStub) -> None:
    code, message = rpc_error(lambda: stub.GetEvents(pb.GetEventsRequest(boundary="b" * 64), metadata=AUTH))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith("boundary: ") and "63" in message
    code, message = rpc_error(lambda: stub.GetEvents(pb.GetEventsRequest(boundary="b" * 63), metadata=AUTH))
    assert code == grpc.StatusCode.NOT_FOUND


# --- Defect 7: GetEvents pages that fit ----------------------------------------------------------

# ~900 KB of data per event: within ORISUN_NATS_MAX_PAYLOAD's default 1 MiB; four of them pass the
# module server's message limit of 4 MiB.
BIG = 900_000
BIG_EVENTS = 12


def big_event(i: int) -> pb.EventToSave:
    return event({"i": i, "pad": "p" * BIG})


@pytest.fixture(scope="module")
def big_stream(stub: pb_grpc.EventStoreStub) -> list[str]:
    """The ids of BIG_EVENTS ~900 KB events in stream `big`, in order (three writes)."""
    ids: list[str] = []
    for first in range(0, BIG_EVENTS, 4):
        batch = [big_event(i) for i in range(first, first + 4)]
        stub.SaveEvents(save(stream="big", events=batch), metadata=AUTH)
        ids += [e.event_id for e in batch]
    return ids


def read_all(stub: pb_grpc.EventStoreStub, direction: int, *, count: int = 100) -> tuple[list[str], list[int]]:
    """Page through stream `big` with the cursor: (the ids read, the size of each page)."""
    ids: list[str] = []
    sizes: list[int] = []
    cursor: pb.Position | None = None
    for _ in range(2 * BIG_EVENTS + 2):
        request = pb.GetEventsRequest(boundary="limits", stream=pb.GetStreamQuery(name="big"), count=count,
                                      direction=direction, last_retrieved_position=cursor)
        page = stub.GetEvents(request, metadata=AUTH)
        assert page.ByteSize() <= MESSAGE_LIMIT
        ids += [e.event_id for e in page.events]
        sizes.append(len(page.events))
        if not page.truncated:
            assert len(page.events) < count  # the end: fewer than asked, and not cut
            return ids, sizes
        assert page.events, "a cut page holds at least one event"
        cursor = page.events[-1].position
    raise AssertionError(f"paging did not end: pages of {sizes}")


@pytest.mark.parametrize("direction", [pb.ASC, pb.DESC])
def test_get_events_cuts_a_page_to_fit_and_the_cursor_reads_everything_once(
    stub: pb_grpc.EventStoreStub, big_stream: list[str], logged_errors: Callable[[], list[str]], direction: int
) -> None:
    ids, sizes = read_all(stub, direction)
    expected = big_stream if direction == pb.ASC else big_stream[::-1]
    assert ids == expected
    assert len(sizes) > 1 and all(0 < n < 5 for n in sizes[:-1])
    assert not logged_errors()


def test_a_page_that_fits_is_not_cut(stub: pb_grpc.EventStoreStub, big_stream: list[str]) -> None:
    page = stub.GetEvents(pb.GetEventsRequest(boundary="limits", stream=pb.GetStreamQuery(name="big"), count=2),
                          metadata=AUTH)
    assert [e.event_id for e in page.events] == big_stream[:2]
    assert not page.truncated  # exactly `count` events: the client asks again, as always


def test_small_events_fill_a_page_of_count(stub: pb_grpc.EventStoreStub) -> None:
    batch = [event({"i": i}) for i in range(300)]
    stub.SaveEvents(save(stream="small", events=batch), metadata=AUTH)
    page = stub.GetEvents(pb.GetEventsRequest(boundary="limits", stream=pb.GetStreamQuery(name="small"),
                                              count=250), metadata=AUTH)
    assert [e.event_id for e in page.events] == [e.event_id for e in batch[:250]]
    assert not page.truncated


def test_subscriptions_deliver_events_of_any_size(server: ServerThread, big_stream: list[str]) -> None:
    with server.channel() as channel:
        stream = pb_grpc.EventStoreStub(channel).SubscribeToEvents(subscription(), metadata=AUTH, timeout=60)
        got: list[str] = []
        for e in stream:
            if e.stream_id == "big":
                got.append(e.event_id)
            if len(got) == len(big_stream):
                break
        stream.cancel()
    assert got == big_stream


def test_an_event_saved_at_the_message_limit_can_be_read_and_subscribed_to(
    postgres: EmbeddedPostgres, logged_errors: Callable[[], list[str]]
) -> None:
    """The stored event carries a position, a timestamp and a version beyond what was sent: the
    send limit leaves room for them, so that every event that could be saved can be read."""
    limit = 300_000
    with running_server(postgres.conninfo, "test_limits_edge", boundaries=BOUNDARIES,
                        grpc_max_message_size=limit) as edge, edge.stub() as stub:
        # Two-byte positions and version: the stored event outgrows the request that saved it.
        stub.SaveEvents(save(stream="edge", events=[event() for _ in range(200)]), metadata=AUTH)
        event_id = str(uuid.uuid4())

        def edge_request(padding: int) -> pb.SaveEventsRequest:
            # expected_version 199 takes 2 bytes where -2 would take 10.
            return save(stream="edge", events=[event({"pad": "p" * padding}, event_id=event_id)], expected_version=199)

        padding = limit - edge_request(0).ByteSize()
        while edge_request(padding).ByteSize() > limit:  # the varint of a length may have grown by a byte
            padding -= 1
        request = edge_request(padding)
        assert limit - 3 <= request.ByteSize() <= limit
        stub.SaveEvents(request, metadata=AUTH)

        page = stub.GetEvents(pb.GetEventsRequest(boundary="limits", stream=pb.GetStreamQuery(name="edge",
                                                                                              from_version=200)),
                              metadata=AUTH)
        assert [e.event_id for e in page.events] == [request.events[0].event_id]
        assert page.events[0].ByteSize() > limit  # the case this test is about

        events = stub.SubscribeToEvents(subscription(position=pb.Position(commit_position=200, prepare_position=200)),
                                        metadata=AUTH, timeout=30)
        assert next(events).event_id == request.events[0].event_id
        events.cancel()
    assert not logged_errors()


@pytest.fixture(scope="module")
def mixed_stream(stub: pb_grpc.EventStoreStub) -> list[str]:
    """Stream `mixed`, tagged kind=mixed: 150 small events, 6 of ~900 KB, 150 small ones again."""
    tags = [pb.Tag(key="kind", value="mixed")]
    small = [event({"i": i}, tags=tags) for i in range(150)]
    big = [event({"i": i, "pad": "p" * BIG}, tags=tags) for i in range(6)]
    after = [event({"i": i}, tags=tags) for i in range(150)]
    for batch in (small, big[:3], big[3:], after):
        stub.SaveEvents(save(stream="mixed", events=batch), metadata=AUTH)
    return [e.event_id for e in small + big + after]


@pytest.mark.parametrize("direction", [pb.ASC, pb.DESC])
@pytest.mark.parametrize("by", ["stream", "query"])
def test_a_page_cut_in_a_later_chunk_pages_on_exactly(
    stub: pb_grpc.EventStoreStub, mixed_stream: list[str], direction: int, by: str
) -> None:
    ids: list[str] = []
    pages: list[tuple[int, bool]] = []
    cursor: pb.Position | None = None
    while len(pages) < 20:
        request = pb.GetEventsRequest(boundary="limits", count=1000, direction=direction,
                                      last_retrieved_position=cursor)
        if by == "stream":
            request.stream.name = "mixed"
        else:
            request.query.criteria.add().tags.add(key="kind", value="mixed")
        page = stub.GetEvents(request, metadata=AUTH)
        ids += [e.event_id for e in page.events]
        pages.append((len(page.events), page.truncated))
        if not page.truncated:
            break
        cursor = page.events[-1].position
    assert ids == (mixed_stream if direction == pb.ASC else mixed_stream[::-1])
    assert pages[-1][1] is False and len(pages) == 2
    # The first page holds the 150 small events and the big ones that fit after them.
    assert 150 < pages[0][0] < 155 and pages[0][1]


def test_count_100_over_1_mb_events_with_the_default_limits(
    postgres: EmbeddedPostgres, logged_errors: Callable[[], list[str]]
) -> None:
    """The issue's case at the default ORISUN_GRPC_MAX_MESSAGE_SIZE (64 MiB): 70 events of ~1 MB
    (within ORISUN_NATS_MAX_PAYLOAD) read with count=100 by a client that accepts 64 MiB + 64 KiB."""
    limit = 64 * 1024 * 1024
    with running_server(postgres.conninfo, "test_limits_default", boundaries=BOUNDARIES) as default:
        assert default.settings.grpc_max_message_size == limit
        options = [("grpc.max_receive_message_length", limit + 64 * 1024),
                   ("grpc.max_send_message_length", limit)]
        with grpc.insecure_channel(default.address, options=options) as channel:
            stub = pb_grpc.EventStoreStub(channel)
            saved: list[str] = []
            for first in range(0, 70, 10):
                batch = [event({"i": i, "pad": "p" * 1_000_000}) for i in range(first, first + 10)]
                stub.SaveEvents(save(stream="mb", events=batch), metadata=AUTH, timeout=60)
                saved += [e.event_id for e in batch]
            read: list[str] = []
            pages: list[tuple[int, bool]] = []
            cursor: pb.Position | None = None
            while len(pages) < 10:
                page = stub.GetEvents(pb.GetEventsRequest(boundary="limits", stream=pb.GetStreamQuery(name="mb"),
                                                          count=100, last_retrieved_position=cursor),
                                      metadata=AUTH, timeout=60)
                assert page.ByteSize() <= limit
                read += [e.event_id for e in page.events]
                pages.append((len(page.events), page.truncated))
                if not page.truncated:
                    break
                cursor = page.events[-1].position
    assert read == saved
    assert [truncated for _, truncated in pages] == [True, False]
    assert not logged_errors()

"""SaveEvents on a real server: positions, versions, concurrency checks, idempotency, validation.

docs/contract.md §2, §3 and §7. One server is shared by the module; every test uses its own streams
(and the tests that need absolute positions their own boundary). That data, metadata and tags come
back byte-for-byte is tested in test_get_events.py.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from orisun.runtime.postgres import EmbeddedPostgres
from tests.support import ServerThread, auth_metadata, running_server

pytestmark = pytest.mark.timeout(120)

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


def read_all(stub: Any, boundary: str) -> list[pb.Event]:
    response = stub.GetEvents(pb.GetEventsRequest(boundary=boundary, count=10_000), metadata=ADMIN_AUTH, timeout=60)
    return list(response.events)


def head(stub: Any, boundary: str = B) -> int:
    """The boundary's last position (0 when empty)."""
    response = stub.GetEvents(pb.GetEventsRequest(boundary=boundary, count=1, direction=pb.DESC),
                              metadata=ADMIN_AUTH, timeout=10)
    return response.events[0].position.prepare_position if response.events else 0


# Issue #15: a conflict's message starts with upstream's wording, which upstream's Java client parses
# with JAVA_CLIENT (case-sensitive, digits only: it cannot read a negative version), and still
# carries the lowercase (docs/contract.md §3) "expected N, actual M".
UPSTREAM_CONFLICT = re.compile(
    r"OptimisticConcurrencyException:StreamVersionConflict: Expected (-?\d+), Actual (-?\d+)")
JAVA_CLIENT = re.compile(r"Expected\s+(\d+),\s+Actual\s+(\d+)")
CONTRACT_CONFLICT = re.compile(r"expected (-?\d+), actual (-?\d+)")


def conflict(stub: Any, stream: str, expected: int, subset: pb.Query | None = None) -> str:
    """The ALREADY_EXISTS message of a write with a wrong expectation (asserting it stored nothing,
    and that both upstream's clients and the contract's wording read the same versions from it)."""
    before = read_stream(stub, stream)
    code, details = refused(stub, request(stream, [ev()], expected, subset))
    assert code == grpc.StatusCode.ALREADY_EXISTS, details
    assert [e.event_id for e in read_stream(stub, stream)] == [e.event_id for e in before]
    upstream = UPSTREAM_CONFLICT.match(details)
    assert upstream is not None, f"does not start with upstream's wording: {details!r}"
    assert int(upstream[1]) == expected, details
    contract = CONTRACT_CONFLICT.search(details)
    assert contract is not None and contract.groups() == upstream.groups(), details
    java = JAVA_CLIENT.search(details)
    if min(int(upstream[1]), int(upstream[2])) >= 0:
        assert java is not None and java.groups() == upstream.groups(), details
    else:
        assert java is None, details  # never a wrong pair of numbers
    assert stream in details
    return details


# --- WriteResult and positions --------------------------------------------------------------------


def test_write_result_and_dense_positions_across_streams(stub: Any) -> None:
    a = [ev("A0"), ev("A1")]
    b = [ev("B0"), ev("B1"), ev("B2")]
    a2 = [ev("A2")]
    assert save(stub, "a", a, -1, boundary="dense") == (2, 2, 1)
    assert save(stub, "b", b, -1, boundary="dense") == (5, 5, 2)
    assert save(stub, "a", a2, 1, boundary="dense") == (6, 6, 2)

    events = read_all(stub, "dense")
    assert [e.event_id for e in events] == [e.event_id for e in (*a, *b, *a2)]
    assert [e.position.prepare_position for e in events] == [1, 2, 3, 4, 5, 6]
    assert [e.position.commit_position for e in events] == [2, 2, 5, 5, 5, 6]
    assert [(e.stream_id, e.version) for e in events] == [("a", 0), ("a", 1), ("b", 0), ("b", 1), ("b", 2), ("a", 2)]
    assert [e.event_type for e in events] == ["A0", "A1", "B0", "B1", "B2", "A2"]


def test_log_position_is_the_position_getevents_returns(stub: Any) -> None:
    s = stream_name("logpos")
    events = [ev(), ev(), ev()]
    commit, prepare, version = save(stub, s, events, -1)
    assert commit == prepare
    assert version == 2
    stored = read_stream(stub, s)
    assert [(e.position.commit_position, e.position.prepare_position) for e in stored] == [
        (commit, prepare - 2), (commit, prepare - 1), (commit, prepare)]
    assert head(stub) == prepare


# --- expected_version --------------------------------------------------------------------------------


def test_expected_version_no_stream(stub: Any) -> None:
    s = stream_name("nostream")
    assert save(stub, s, [ev()], -1)[2] == 0
    assert save(stub, s, [ev()], 0)[2] == 1
    assert "expected -1, actual 1" in conflict(stub, s, -1)


def test_expected_version_exact(stub: Any) -> None:
    s = stream_name("exact")
    assert "expected 0, actual -1" in conflict(stub, s, 0)
    assert save(stub, s, [ev(), ev(), ev()], -1)[2] == 2
    assert "expected 1, actual 2" in conflict(stub, s, 1)
    assert "expected 3, actual 2" in conflict(stub, s, 3)
    assert "expected 0, actual 2" in conflict(stub, s, 0)
    assert save(stub, s, [ev(), ev()], 2)[2] == 4
    assert [e.version for e in read_stream(stub, s)] == [0, 1, 2, 3, 4]


def test_a_conflict_is_worded_as_upstreams_servers_did(stub: Any) -> None:
    """Issue #15: upstream's Java client reads the versions with a case-sensitive pattern."""
    s = stream_name("wording")
    save(stub, s, [ev(), ev(), ev()], -1)
    details = conflict(stub, s, 1)
    assert details == (f"OptimisticConcurrencyException:StreamVersionConflict: Expected 1, Actual 2 "
                       f"(stream {s!r}: expected 1, actual 2)")
    java = JAVA_CLIENT.search(details)
    assert java is not None and (int(java[1]), int(java[2])) == (1, 2)


def test_expected_version_any(stub: Any) -> None:
    s = stream_name("any")
    assert save(stub, s, [ev()], -2)[2] == 0
    assert save(stub, s, [ev(), ev()], -2)[2] == 2
    assert save(stub, s, [ev()], -2)[2] == 3


@pytest.mark.parametrize("expected", [-3, -100, -2147483648])
def test_expected_version_below_minus_two_is_invalid(stub: Any, expected: int) -> None:
    s = stream_name("badexp")
    code, details = refused(stub, request(s, [ev()], expected))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "stream.expected_version" in details
    assert str(expected) in details
    assert read_stream(stub, s) == []


# --- subsetQuery ---------------------------------------------------------------------------------


def _subset_stream(stub: Any) -> str:
    s = stream_name("subset")
    save(stub, s, [
        ev("OrderCreated", tags=[("customer", "c1")]),                 # v0
        ev("ItemAdded", tags=[("customer", "c1"), ("item", "i1")]),    # v1
        ev("ItemAdded", tags=[("item", "i2")]),                        # v2
        ev("Note", tags=[("customer", "c2")]),                         # v3
    ], -1)
    return s


@pytest.mark.parametrize(
    ("subset", "actual"),
    [
        (query([("customer", "c1")]), 1),
        (query([("customer", "c2")]), 3),
        (query([("item", "i2")]), 2),
        (query([("event_type", "ItemAdded")]), 2),
        (query([("eventType", "OrderCreated")]), 0),
        (query([("event_type", "Note"), ("customer", "c2")]), 3),
        (query([("item", "i1")], [("event_type", "OrderCreated")]), 1),   # OR of criteria
        (query([("item", "i2")], [("customer", "c1")]), 2),
        (query([("customer", "c1"), ("item", "i1")]), 1),                # AND of tags
        (query([("customer", "c2"), ("item", "i1")]), -1),
        (query([("customer", "C1")]), -1),                                # exact match
        (query([("customer", "nobody")]), -1),
    ],
    ids=["tag", "tag-last", "other-tag", "event_type", "eventType", "type-and-tag", "or", "or-2", "and",
         "and-none", "case", "none"],
)
def test_subset_query_actual_version(stub: Any, subset: pb.Query, actual: int) -> None:
    s = _subset_stream(stub)
    assert f"expected 99, actual {actual}" in conflict(stub, s, 99, subset)
    # The matching expectation succeeds; the new event still takes the stream's next version.
    new = ev("Later")
    assert save(stub, s, [new], actual, subset)[2] == 4
    last = read_stream(stub, s)[-1]
    assert (last.event_id, last.version) == (new.event_id, 4)


def test_subset_query_on_empty_stream(stub: Any) -> None:
    s = stream_name("subset-empty")
    subset = query([("customer", "c1")])
    assert "expected 0, actual -1" in conflict(stub, s, 0, subset)
    assert save(stub, s, [ev(tags=[("customer", "c9")])], -1, subset)[2] == 0
    # Still no event with customer=c1, so -1 holds again; versions continue.
    assert save(stub, s, [ev(tags=[("customer", "c1")])], -1, subset)[2] == 1
    assert "expected -1, actual 1" in conflict(stub, s, -1, subset)


def test_subset_query_with_any_version_is_not_checked(stub: Any) -> None:
    s = _subset_stream(stub)
    assert save(stub, s, [ev()], -2, query([("customer", "nobody")]))[2] == 4


def test_subset_query_without_criteria_matches_every_event(stub: Any) -> None:
    # proto Query: "A query without criteria matches every event" (as in GetEvents), so the
    # "actual" version is the stream's last version.
    s = _subset_stream(stub)
    assert "expected 99, actual 3" in conflict(stub, s, 99, pb.Query())
    assert save(stub, s, [ev()], 3, pb.Query())[2] == 4


# --- All or nothing, idempotency, duplicate ids -------------------------------------------------------


def test_a_failing_write_stores_nothing_and_leaves_no_hole(stub: Any) -> None:
    s = stream_name("atomic")
    before = head(stub)
    bad = [ev(), ev(), ev(data="{not json")]
    code, details = refused(stub, request(s, bad, -1))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "events[2].data" in details
    assert "expected -1, actual -1" not in details
    # A conflicting 3-event write stores nothing either.
    save(stub, s, [ev()], -1)
    code, _ = refused(stub, request(s, [ev(), ev(), ev()], 5))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert len(read_stream(stub, s)) == 1
    # The next write gets the next positions: no hole from the failures.
    good = [ev(), ev()]
    assert save(stub, s, good, 0) == (before + 3, before + 3, 2)
    assert [e.position.prepare_position for e in read_stream(stub, s)] == [before + 1, before + 2, before + 3]


def test_identical_retry_returns_the_original_result(stub: Any) -> None:
    s = stream_name("retry")
    events = [ev("R0", tags=[("k", "v")]), ev("R1"), ev("R2")]
    first = stub.SaveEvents(request(s, events, -1), metadata=ADMIN_AUTH, timeout=10)
    save(stub, stream_name("other"), [ev(), ev()], -1)  # the boundary moves on meanwhile
    after_other = head(stub)
    again = stub.SaveEvents(request(s, events, -1), metadata=ADMIN_AUTH, timeout=10)
    assert again == first
    assert first.new_stream_version == 2
    assert first.log_position.commit_position == first.log_position.prepare_position == after_other - 2
    assert [e.event_id for e in read_stream(stub, s)] == [e.event_id for e in events]
    assert head(stub) == after_other
    # Still the original answer after the stream itself moved on.
    save(stub, s, [ev()], 2)
    assert stub.SaveEvents(request(s, events, -1), metadata=ADMIN_AUTH, timeout=10) == first
    assert len(read_stream(stub, s)) == 4


def test_partial_reuse_of_ids_is_already_exists(stub: Any) -> None:
    s = stream_name("partial")
    a, b = ev(), ev()
    save(stub, s, [a, b], -1)
    before = head(stub)
    c = ev()
    code, details = refused(stub, request(s, [c, a], 1))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert a.event_id in details
    # Same ids in another order: not the same write either.
    code, details = refused(stub, request(s, [b, a], -2))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert b.event_id in details or a.event_id in details
    assert [e.event_id for e in read_stream(stub, s)] == [a.event_id, b.event_id]
    assert head(stub) == before


def stored(stub: Any, stream: str) -> list[tuple[str, str, str, str, list[tuple[str, str]], int, int]]:
    """Everything a write leaves in a stream: ids, content, positions."""
    return [(e.event_id, e.event_type, e.data, e.metadata, [(t.key, t.value) for t in e.tags],
             e.position.prepare_position, e.version) for e in read_stream(stub, stream)]


def reused(stub: Any, req: pb.SaveEventsRequest, named: str) -> str:
    """The message of a write refused because it reuses ids outside a retry; it names ``named``
    and leaves no trace (the stream and the boundary's head are unchanged)."""
    before, before_head = stored(stub, req.stream.name), head(stub)
    code, details = refused(stub, req)
    assert code == grpc.StatusCode.ALREADY_EXISTS, details
    assert named in details
    assert stored(stub, req.stream.name) == before
    assert head(stub) == before_head
    return details


def test_resending_part_of_a_write_with_other_content_is_already_exists(stub: Any) -> None:
    """The issue's case: only the first event of a stored 2-event write, with another type and
    other data, was answered OK with the original's position and the new content dropped."""
    s = stream_name("part")
    a, b = ev("Ordered", '{"n": 1}'), ev("Paid", '{"n": 2}')
    save(stub, s, [a, b], -1)
    details = reused(stub, request(s, [ev("Cancelled", '{"n": 9}', event_id=a.event_id)]), a.event_id)
    assert "other content" in details
    # Unchanged, but still only a part of the write: not a retry either.
    reused(stub, request(s, [a]), a.event_id)
    reused(stub, request(s, [b]), b.event_id)


def _changed(event: pb.EventToSave, how: str) -> pb.EventToSave:
    copy = pb.EventToSave()
    copy.CopyFrom(event)
    if how == "event_type":
        copy.event_type += "X"
    elif how == "data":
        copy.data = '{"n":1}'  # the same JSON value, other text: data is kept byte-for-byte
    elif how == "metadata":
        copy.metadata = '{"m": 2}'
    elif how == "metadata emptied":
        copy.metadata = ""
    elif how == "tag value":
        copy.tags[0].value = "other"
    elif how == "tags reordered":
        copy.tags[0].key, copy.tags[1].key = copy.tags[1].key, copy.tags[0].key
        copy.tags[0].value, copy.tags[1].value = copy.tags[1].value, copy.tags[0].value
    elif how == "tag added":
        copy.tags.append(pb.Tag(key="extra", value="1"))
    elif how == "tag dropped":
        del copy.tags[-1]
    else:
        raise AssertionError(how)
    return copy


@pytest.mark.parametrize("how", ["event_type", "data", "metadata", "metadata emptied", "tag value",
                                 "tags reordered", "tag added", "tag dropped"])
@pytest.mark.parametrize("which", [0, 1])
def test_resending_a_write_with_one_event_changed_is_already_exists(stub: Any, how: str, which: int) -> None:
    s = stream_name("changed")
    events = [ev("E0", '{"n": 1}', '{"m": 1}', [("a", "1"), ("b", "2")]),
              ev("E1", '{"n": 1}', '{"m": 1}', [("a", "1"), ("b", "2")])]
    first = save(stub, s, events, -1)
    resent = list(events)
    resent[which] = _changed(events[which], how)
    details = reused(stub, request(s, resent, -1), events[which].event_id)
    assert "other content" in details
    # The unchanged write is still recognised.
    assert save(stub, s, events, -1) == first


def test_resending_a_write_to_another_stream_is_already_exists(stub: Any) -> None:
    s, other = stream_name("home"), stream_name("away")
    events = [ev(), ev()]
    save(stub, s, events, -1)
    details = reused(stub, request(other, events, -2), events[0].event_id)
    assert "another stream" in details
    assert read_stream(stub, other) == []


def test_exact_retry_of_any_write_returns_its_own_result(stub: Any) -> None:
    """Each of a stream's writes is recognised on its own, also when its expected_version no
    longer holds and after other writes moved the stream and the boundary on."""
    s = stream_name("writes")
    w1 = [ev("W1a", tags=[("k", "1")]), ev("W1b", metadata='{"m": 1}')]
    w2 = [ev("W2")]
    w3 = [ev("W3a"), ev("W3b", tags=[("k", "3"), ("k", "3")]), ev("W3c")]
    r1 = save(stub, s, w1, -1)
    save(stub, stream_name("between"), [ev()], -1)
    r2 = save(stub, s, w2, 1)
    r3 = save(stub, s, w3, 2, subset=query([("event_type", "W2")]))
    assert (r1[2], r2[2], r3[2]) == (1, 2, 5)
    contents = stored(stub, s)
    for events, expected, result in ((w1, -1, r1), (w2, 1, r2), (w3, 2, r3), (w1, 7, r1), (w2, -2, r2)):
        assert save(stub, s, events, expected) == result
    assert save(stub, s, w3, 2, subset=query([("event_type", "W3a")])) == r3
    assert stored(stub, s) == contents


def test_the_events_of_two_writes_together_are_not_a_retry(stub: Any) -> None:
    s = stream_name("two")
    w1, w2 = [ev(), ev()], [ev()]
    save(stub, s, w1, -1)
    save(stub, s, w2, 1)
    reused(stub, request(s, [*w1, *w2]), w1[0].event_id)
    reused(stub, request(s, [w1[1], *w2]), w1[1].event_id)


def test_reordered_or_extended_writes_are_already_exists(stub: Any) -> None:
    s = stream_name("shape")
    a, b = ev(), ev()
    save(stub, s, [a, b], -1)
    reused(stub, request(s, [b, a]), b.event_id)
    extra = ev()
    reused(stub, request(s, [a, b, extra]), a.event_id)
    reused(stub, request(s, [extra, a, b]), a.event_id)
    assert extra.event_id not in [e.event_id for e in read_stream(stub, s)]


def test_concurrent_sends_of_one_id_store_one_content(stub: Any) -> None:
    """Clients racing with the same event ids, some with other content: one content is stored;
    every copy of it gets the same result, every other content ALREADY_EXISTS."""
    s = stream_name("racing")
    ids = [new_id(), new_id()]
    variants = [[ev(f"V{v}", event_id=i) for i in ids] for v in range(3)]
    sends = [variants[i % 3] for i in range(12)]

    def attempt(events: list[pb.EventToSave]) -> tuple[int, int, int] | str:
        try:
            return save(stub, s, events, -1)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.ALREADY_EXISTS, exc.details()
            return exc.details()

    with ThreadPoolExecutor(len(sends)) as pool:
        outcomes = list(pool.map(attempt, sends))
    got = stored(stub, s)
    assert [e[0] for e in got] == ids
    winner = int(got[0][1][1:])
    assert {e[1] for e in got} == {f"V{winner}"}
    results = {o for o, events in zip(outcomes, sends, strict=True) if events is variants[winner]}
    assert len(results) == 1 and not isinstance(next(iter(results)), str), results
    losers = [o for o, events in zip(outcomes, sends, strict=True) if events is not variants[winner]]
    assert all(isinstance(o, str) and ids[0] in o for o in losers), losers


def test_same_id_in_another_stream_is_already_exists(stub: Any) -> None:
    s, other = stream_name("owner"), stream_name("thief")
    a = ev()
    save(stub, s, [a], -1)
    code, details = refused(stub, request(other, [ev(event_id=a.event_id)], -1))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert a.event_id in details
    assert read_stream(stub, other) == []


def test_duplicate_id_inside_one_request_is_invalid(stub: Any) -> None:
    s = stream_name("dup")
    a = new_id()
    code, details = refused(stub, request(s, [ev(), ev(event_id=a), ev(event_id=a)], -1))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "events[2].event_id" in details
    assert "events[1]" in details
    code, details = refused(stub, request(s, [ev(event_id=a), ev(event_id=a.upper())], -1))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "events[1].event_id" in details
    assert read_stream(stub, s) == []


# --- Invalid input -------------------------------------------------------------------------------------


def _valid() -> pb.SaveEventsRequest:
    return request(stream_name("invalid"), [ev(), ev(tags=[("k", "v")]), ev()], -1)


def _set_event(index: int, **fields: Any) -> Callable[[pb.SaveEventsRequest], None]:
    def change(req: pb.SaveEventsRequest) -> None:
        for name, value in fields.items():
            setattr(req.events[index], name, value)
    return change


def _tag(index: int, **fields: str) -> Callable[[pb.SaveEventsRequest], None]:
    def change(req: pb.SaveEventsRequest) -> None:
        for name, value in fields.items():
            setattr(req.events[1].tags[index], name, value)
    return change


def _extend(req: pb.SaveEventsRequest, what: str, n: int) -> None:
    if what == "tags":
        req.events[1].tags.extend(pb.Tag(key=f"k{i}", value="v") for i in range(n))
    else:
        req.events.extend(pb.EventToSave(event_id=new_id(), event_type="T", data="{}") for _ in range(n))


E1 = "events[1]"
INVALID: list[tuple[str, Callable[[pb.SaveEventsRequest], None], list[str]]] = [
    ("missing-boundary", lambda r: setattr(r, "boundary", ""), ["boundary"]),
    ("empty-stream", lambda r: setattr(r.stream, "name", ""), ["stream.name"]),
    ("no-stream", lambda r: r.ClearField("stream"), ["stream.name"]),
    ("nul-stream", lambda r: setattr(r.stream, "name", "s\x00"), ["stream.name"]),
    ("long-stream", lambda r: setattr(r.stream, "name", "s" * 513), ["stream.name", "512"]),
    ("no-events", lambda r: r.ClearField("events"), ["events"]),
    ("bad-uuid", _set_event(1, event_id="not-a-uuid"), [f"{E1}.event_id", "not-a-uuid"]),
    ("uuid-no-dashes", _set_event(1, event_id=uuid.uuid4().hex), [f"{E1}.event_id"]),
    ("empty-event-id", _set_event(2, event_id=""), ["events[2].event_id"]),
    ("empty-event-type", _set_event(1, event_type=""), [f"{E1}.event_type"]),
    ("long-event-type", _set_event(1, event_type="T" * 513), [f"{E1}.event_type"]),
    ("nul-event-type", _set_event(1, event_type="T\x00"), [f"{E1}.event_type"]),
    ("data-not-json", _set_event(1, data="{not json"), [f"{E1}.data"]),
    ("data-empty", _set_event(2, data=""), ["events[2].data"]),
    ("data-nan", _set_event(1, data='{"x": NaN}'), [f"{E1}.data"]),
    ("data-trailing", _set_event(1, data='{"a": 1} x'), [f"{E1}.data"]),
    ("data-nul", _set_event(0, data='{"a": "\x00"}'), ["events[0].data"]),
    ("metadata-not-json", _set_event(1, metadata="meta"), [f"{E1}.metadata"]),
    ("metadata-nul", _set_event(1, metadata='{"a": "\x00"}'), [f"{E1}.metadata"]),
    ("empty-tag-key", _tag(0, key=""), [f"{E1}.tags[0].key"]),
    ("nul-tag-value", _tag(0, value="a\x00b"), [f"{E1}.tags[0].value"]),
    ("too-many-tags", lambda r: _extend(r, "tags", 100), [f"{E1}.tags", "101"]),
    ("too-many-events", lambda r: _extend(r, "events", 10_001 - 3), ["events", "10001", "10000"]),
    ("subset-empty-key", lambda r: r.stream.subsetQuery.CopyFrom(query([("customer", "c1"), ("", "x")])),
     ["stream.subsetQuery.criteria[0].tags[1].key"]),
]


@pytest.mark.parametrize(("change", "words"), [i[1:] for i in INVALID], ids=[i[0] for i in INVALID])
def test_invalid_input_is_refused_naming_the_field(
    stub: Any, change: Callable[[pb.SaveEventsRequest], None], words: list[str]
) -> None:
    req = _valid()
    stream = req.stream.name
    change(req)
    code, details = refused(stub, req)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    for word in words:
        assert word in details
    assert read_stream(stub, stream) == []


def test_unknown_boundary_is_not_found(stub: Any) -> None:
    code, details = refused(stub, request("s", [ev()], -1, boundary="payments"))
    assert code == grpc.StatusCode.NOT_FOUND
    assert "payments" in details


def test_event_larger_than_nats_max_payload_is_refused(start_server: Callable[..., ServerThread]) -> None:
    server = start_server(nats_max_payload=4096, boundaries={"orisun_admin": "orisun_admin", B: B})
    small = ev(data=json.dumps({"pad": "x" * 3000}))
    with server.stub() as small_stub:
        s = stream_name("payload")
        code, details = refused(small_stub, request(s, [ev(), ev(data=json.dumps({"pad": "x" * 5000}))], -1))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "events[1]" in details
        assert "ORISUN_NATS_MAX_PAYLOAD" in details
        assert "4096" in details
        # Data, metadata and tags count together.
        code, details = refused(small_stub, request(s, [ev(data=json.dumps({"pad": "x" * 2000}),
                                                           metadata=json.dumps({"pad": "y" * 2000}))], -1))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "events[0]" in details
        assert read_stream(small_stub, s) == []
        assert save(small_stub, s, [small], -1) == (1, 1, 0)
        assert [e.data for e in read_stream(small_stub, s)] == [small.data]


# --- Concurrency ---------------------------------------------------------------------------------------


def test_of_concurrent_writers_with_the_same_expectation_exactly_one_wins(stub: Any) -> None:
    s = stream_name("race")
    batches = [[ev(f"W{i}"), ev(f"W{i}")] for i in range(12)]

    def attempt(events: list[pb.EventToSave]) -> str:
        try:
            save(stub, s, events, -1)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.ALREADY_EXISTS, exc.details()
            assert "expected -1, actual 1" in exc.details()
            return "lost"
        return "won"

    with ThreadPoolExecutor(len(batches)) as pool:
        outcomes = list(pool.map(attempt, batches))
    assert outcomes.count("won") == 1
    winner = batches[outcomes.index("won")]
    assert [e.event_id for e in read_stream(stub, s)] == [e.event_id for e in winner]


def test_concurrent_writes_get_dense_contiguous_positions(stub: Any) -> None:
    before = head(stub)
    writes = {stream_name("parallel"): [ev() for _ in range(1 + i % 4)] for i in range(16)}
    with ThreadPoolExecutor(len(writes)) as pool:
        results = dict(zip(writes, pool.map(lambda item: save(stub, item[0], item[1], -1), writes.items()),
                           strict=True))
    total = sum(len(events) for events in writes.values())
    assert head(stub) == before + total
    for name, events in writes.items():
        commit, prepare, version = results[name]
        assert commit == prepare
        assert version == len(events) - 1
        stored = read_stream(stub, name)
        assert [e.event_id for e in stored] == [e.event_id for e in events]
        assert [e.position.prepare_position for e in stored] == list(range(commit - len(events) + 1, commit + 1))
        assert {e.position.commit_position for e in stored} == {commit}
    ends = sorted(r[0] for r in results.values())
    assert ends[-1] == before + total
    assert len(set(ends)) == len(ends)


# --- Roles ----------------------------------------------------------------------------------------------


def test_write_needs_a_write_role_and_reads_need_none(store: ServerThread, stub: Any) -> None:
    users = store.app.users
    assert users is not None
    store.call(users.create("Reader", "reader", "reader-pw", []))
    store.call(users.create("Operator", "operator", "operator-pw", ["OPERATIONS"]))
    reader, operator = auth_metadata("reader", "reader-pw"), auth_metadata("operator", "operator-pw")
    s = stream_name("roles")

    code, details = refused(stub, request(s, [ev()], -1), metadata=reader)
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "reader" in details
    assert read_stream(stub, s) == []

    written = ev("ByOperator")
    assert save(stub, s, [written], -1, metadata=operator)[2] == 0
    response = stub.GetEvents(pb.GetEventsRequest(boundary=B, stream=pb.GetStreamQuery(name=s)),
                              metadata=reader, timeout=10)
    assert [(e.event_id, e.event_type) for e in response.events] == [(written.event_id, "ByOperator")]


# --- A large batch ------------------------------------------------------------------------------------


def test_five_thousand_events_of_one_kilobyte_in_one_call(stub: Any) -> None:
    events = [
        ev(f"Bulk{i % 7}", data=json.dumps({"i": i, "pad": "p" * 1000}), metadata=json.dumps({"m": i}),
           tags=[("batch", "big"), ("i", str(i))])
        for i in range(5000)
    ]
    assert all(len(e.data) >= 1000 for e in events)
    assert save(stub, "bulk", events, -1, boundary="big") == (5000, 5000, 4999)
    stored = read_stream(stub, "bulk", boundary="big", count=10_000)
    assert len(stored) == 5000
    assert [e.event_id for e in stored] == [e.event_id for e in events]
    assert [e.data for e in stored] == [e.data for e in events]
    assert [e.metadata for e in stored] == [e.metadata for e in events]
    assert [e.event_type for e in stored] == [e.event_type for e in events]
    assert [[(t.key, t.value) for t in e.tags] for e in stored] == [[(t.key, t.value) for t in e.tags] for e in events]
    assert [e.version for e in stored] == list(range(5000))
    assert [e.position.prepare_position for e in stored] == list(range(1, 5001))
    assert {e.position.commit_position for e in stored} == {5000}

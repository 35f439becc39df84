"""SaveEvents on a real server: all or nothing (a failing write stores nothing and leaves no hole),
idempotent retries (an identical retry returns the original result), and ALREADY_EXISTS for event
ids reused with other content, in another stream or inside one request (docs/contract.md §2 and
§3). Shared fixtures and helpers: tests/save_events_support.py.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from orisun._proto import eventstore_pb2 as pb
from tests import save_events_support
from tests.save_events_support import (
    ADMIN_AUTH,
    ev,
    head,
    new_id,
    query,
    read_stream,
    refused,
    request,
    save,
    stream_name,
)

# Fixtures of tests/save_events_support.py, bound to names of this module so that pytest finds them here.
store = save_events_support.store
stub = save_events_support.stub


pytestmark = pytest.mark.timeout(120)


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


"""SaveEvents on a real server: WriteResult and positions, expected_version, subsetQuery, concurrent
writers, roles and a large batch (docs/contract.md §2, §3 and §7).

One server is shared by the module; every test uses its own streams (and the tests that need
absolute positions their own boundary). All-or-nothing writes, idempotency and duplicate ids are in
tests/test_save_events_idempotency.py, invalid input in tests/test_save_events_validation.py;
shared fixtures and helpers in tests/save_events_support.py. That data, metadata and tags come back
byte-for-byte is tested in test_get_events.py.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from orisun._proto import eventstore_pb2 as pb
from tests import save_events_support
from tests.save_events_support import ADMIN_AUTH, B, ev, head, query, read_stream, refused, request, save, stream_name
from tests.support import ServerThread, auth_metadata

# Fixtures of tests/save_events_support.py, bound to names of this module so that pytest finds them here.
store = save_events_support.store
stub = save_events_support.stub


pytestmark = pytest.mark.timeout(120)


def read_all(stub: Any, boundary: str) -> list[pb.Event]:
    response = stub.GetEvents(pb.GetEventsRequest(boundary=boundary, count=10_000), metadata=ADMIN_AUTH, timeout=60)
    return list(response.events)


# Issue #15: a conflict's message starts with upstream's wording, which upstream's Java client parses
# with JAVA_CLIENT (case-sensitive, digits only: it cannot read a negative version), and still
# carries the contract's lowercase "expected N, actual M".
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


"""GetEvents on a real server: stream reads, tag queries, cursors, paging, count, errors.

docs/contract.md §2 and §4. One server per module; the module seeds two boundaries once (`catalog`,
40 events in 9 writes across streams, and `bulk`, 150 events) and every test only reads them, so
positions are known exactly: the n-th event saved has prepare position n. The round-trip tests at
the end write to their own boundary, `roundtrip`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from orisun._proto import eventstore_pb2 as pb
from orisun.runtime.postgres import EmbeddedPostgres
from tests.support import auth_metadata, running_server

pytestmark = pytest.mark.timeout(120)

AUTH = auth_metadata()
BOUNDARIES = {"orisun_admin": "orisun_admin", "catalog": "catalog", "bulk": "bulk_events", "roundtrip": "roundtrip"}


@dataclass(frozen=True)
class Saved:
    event_id: str
    event_type: str
    stream: str
    version: int
    tags: tuple[tuple[str, str], ...]
    prepare: int
    commit: int
    data: str
    metadata: str


@dataclass
class World:
    stub: Any
    events: list[Saved]  # the catalog boundary, in position order
    started: datetime
    finished: datetime

    def at(self, *positions: int) -> list[str]:
        """The ids of the catalog events at these positions, in the order given."""
        return [self.events[p - 1].event_id for p in positions]


# The catalog's writes: (stream, [(event_type, tags), ...]), saved in this order.
T = tuple[str, tuple[tuple[str, str], ...]]
WRITES: list[tuple[str, list[T]]] = [
    ("cart-1", [("CartCreated", (("customer", "alice"),)),                                   # 1
                ("ItemAdded", (("customer", "alice"), ("item", "apple")))]),                # 2
    ("cart-2", [("CartCreated", (("customer", "bob"),)),                                     # 3
                ("ItemAdded", (("customer", "bob"), ("item", "apple"))),                    # 4
                ("ItemAdded", (("customer", "bob"), ("item", "pear")))]),                   # 5
    ("cart-1", [("ItemAdded", (("customer", "alice"), ("item", "pear"))),                   # 6
                ("ItemRemoved", (("customer", "alice"), ("item", "apple")))]),              # 7
    ("inventory", [("StockReceived", (("item", "apple"),)),                                  # 8
                   ("StockReceived", (("item", "pear"),)),                                   # 9
                   ("StockCounted", (("event_type", "ItemAdded"), ("eventType", "CheckedOut")))]),  # 10
    ("cart-3", [("CartCreated", (("customer", "carol"),)),                                   # 11
                ("ItemAdded", (("customer", "carol"), ("item", "apple"), ("promo", "yes")))]),  # 12
    ("cart-1", [("CheckedOut", (("customer", "alice"),))]),                                  # 13
    ("noise-1", [("Noise", (("n", str(i)),)) for i in range(10)]),                           # 14-23
    ("cart-2", [("CheckedOut", (("customer", "bob"),))]),                                    # 24
    ("noise-2", [("Noise", (("n", str(i)),)) for i in range(16)]),                           # 25-40
]


def _save(stub: Any, boundary: str, stream: str, events: Sequence[pb.EventToSave]) -> pb.WriteResult:
    result: pb.WriteResult = stub.SaveEvents(pb.SaveEventsRequest(boundary=boundary, stream=pb.SaveStreamQuery(
        name=stream, expected_version=-2), events=events), metadata=AUTH, timeout=30)
    return result


def _seed(stub: Any) -> list[Saved]:
    saved: list[Saved] = []
    versions: dict[str, int] = {}
    for stream, specs in WRITES:
        first = len(saved) + 1
        commit = first + len(specs) - 1
        batch = []
        for offset, (event_type, tags) in enumerate(specs):
            position = first + offset
            version = versions.get(stream, -1) + 1
            versions[stream] = version
            event = Saved(str(uuid.uuid4()), event_type, stream, version, tags, position, commit,
                          json.dumps({"position": position, "type": event_type}), json.dumps({"seq": position}))
            saved.append(event)
            batch.append(pb.EventToSave(event_id=event.event_id, event_type=event_type, data=event.data,
                                        metadata=event.metadata, tags=[pb.Tag(key=k, value=v) for k, v in tags]))
        result = _save(stub, "catalog", stream, batch)
        assert (result.log_position.commit_position, result.log_position.prepare_position) == (commit, commit)
        assert result.new_stream_version == versions[stream]
    return saved


@pytest.fixture(scope="module")
def world(postgres: EmbeddedPostgres) -> Iterator[World]:
    with running_server(postgres.conninfo, "test_get", boundaries=BOUNDARIES) as server, server.stub() as stub:
        started = datetime.now(UTC)
        events = _seed(stub)
        finished = datetime.now(UTC)
        bulk = [pb.EventToSave(event_id=str(uuid.uuid4()), event_type="Bulk", data=json.dumps({"i": i}))
                for i in range(150)]
        assert _save(stub, "bulk", "bulk-1", bulk).new_stream_version == 149
        yield World(stub, events, started, finished)


def query(*criteria: Sequence[tuple[str, str]]) -> pb.Query:
    return pb.Query(criteria=[pb.Criterion(tags=[pb.Tag(key=k, value=v) for k, v in c]) for c in criteria])


def pos(commit: int, prepare: int) -> pb.Position:
    return pb.Position(commit_position=commit, prepare_position=prepare)


def get(world: World, boundary: str = "catalog", **fields: Any) -> list[pb.Event]:
    response = world.stub.GetEvents(pb.GetEventsRequest(boundary=boundary, **fields), metadata=AUTH, timeout=30)
    return list(response.events)


def positions(world: World, **fields: Any) -> list[int]:
    """The prepare positions GetEvents returns on the catalog, asserting ids match the seed."""
    events = get(world, **fields)
    got = [e.position.prepare_position for e in events]
    assert [e.event_id for e in events] == world.at(*got)
    return got


def refused(world: World, boundary: str = "catalog", **fields: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        world.stub.GetEvents(pb.GetEventsRequest(boundary=boundary, **fields), metadata=AUTH, timeout=30)
    return raised.value.code(), raised.value.details()


def stream(name: str, from_version: int = 0, subset: pb.Query | None = None) -> pb.GetStreamQuery:
    return pb.GetStreamQuery(name=name, from_version=from_version, subsetQuery=subset)


ALL = list(range(1, 41))


# --- Whole boundary ----------------------------------------------------------------------------------


def test_everything_asc_and_desc(world: World) -> None:
    assert positions(world) == ALL
    assert positions(world, direction=pb.DESC) == ALL[::-1]
    events = get(world)
    assert [e.position.commit_position for e in events[:13]] == [2, 2, 5, 5, 5, 7, 7, 10, 10, 10, 12, 12, 13]
    assert [(e.stream_id, e.version) for e in events[:7]] == [
        ("cart-1", 0), ("cart-1", 1), ("cart-2", 0), ("cart-2", 1), ("cart-2", 2), ("cart-1", 2), ("cart-1", 3)]


# --- Stream reads --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("from_version", "expected"),
    [(0, [1, 2, 6, 7, 13]), (1, [2, 6, 7, 13]), (2, [6, 7, 13]), (4, [13]), (5, []), (1000, [])],
)
def test_stream_asc_from_version(world: World, from_version: int, expected: list[int]) -> None:
    events = get(world, stream=stream("cart-1", from_version))
    assert [e.position.prepare_position for e in events] == expected
    assert [e.version for e in events] == list(range(from_version, 5))[:len(expected)]
    assert {e.stream_id for e in events} <= {"cart-1"}


@pytest.mark.parametrize(
    ("from_version", "expected"),
    [(0, [13, 7, 6, 2, 1]), (1, [2, 1]), (2, [6, 2, 1]), (4, [13, 7, 6, 2, 1]), (100, [13, 7, 6, 2, 1])],
)
def test_stream_desc_from_version(world: World, from_version: int, expected: list[int]) -> None:
    assert positions(world, stream=stream("cart-1", from_version), direction=pb.DESC) == expected


def test_stream_count_and_unknown_stream(world: World) -> None:
    assert positions(world, stream=stream("cart-1"), count=2) == [1, 2]
    assert positions(world, stream=stream("cart-1"), count=2, direction=pb.DESC) == [13, 7]
    assert positions(world, stream=stream("no-such-stream")) == []
    assert positions(world, stream=stream("CART-1")) == []


def test_stream_subset_query(world: World) -> None:
    assert positions(world, stream=stream("cart-1", subset=query([("item", "apple")]))) == [2, 7]
    assert positions(world, stream=stream("cart-1", 3, query([("item", "apple")], [("event_type", "CheckedOut")]))
                     ) == [7, 13]


# --- Tag queries ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("criteria", "expected"),
    [
        ([[("customer", "alice")]], [1, 2, 6, 7, 13]),
        ([[("item", "apple")]], [2, 4, 7, 8, 12]),
        ([[("customer", "bob"), ("item", "apple")]], [4]),                         # AND
        ([[("customer", "carol")], [("item", "pear")]], [5, 6, 9, 11, 12]),        # OR
        ([[("customer", "carol")], [("customer", "carol"), ("promo", "yes")]], [11, 12]),
        ([[("event_type", "ItemAdded")]], [2, 4, 5, 6, 12]),     # the type, not the stored tag of 10
        ([[("eventType", "CheckedOut")]], [13, 24]),
        ([[("event_type", "ItemAdded"), ("item", "apple")]], [2, 4, 12]),
        ([[("event_type", "CartCreated")], [("promo", "yes")]], [1, 3, 11, 12]),
        ([[("event_type", "StockCounted")]], [10]),
        ([[("customer", "Alice")]], []),                                         # exact, case-sensitive
        ([[("customer", "alice"), ("customer", "bob")]], []),
        ([[("nope", "x")]], []),
        ([[("n", "3")]], [17, 28]),
    ],
    ids=["tag", "tag-2", "and", "or", "or-overlap", "event_type", "eventType", "type-and-tag", "type-or-tag",
         "stored-event_type-tag", "case", "and-none", "none", "noise"],
)
def test_query_criteria(world: World, criteria: list[list[tuple[str, str]]], expected: list[int]) -> None:
    assert positions(world, query=query(*criteria)) == expected
    assert positions(world, query=query(*criteria), direction=pb.DESC) == expected[::-1]


def test_query_without_criteria_matches_everything(world: World) -> None:
    assert positions(world, query=pb.Query()) == ALL


def test_stream_and_query_combine_with_and(world: World) -> None:
    assert positions(world, stream=stream("cart-2"), query=query([("event_type", "ItemAdded")])) == [4, 5]
    assert positions(world, stream=stream("cart-2"), query=query([("event_type", "ItemAdded")]),
                     direction=pb.DESC) == [5, 4]
    assert positions(world, stream=stream("cart-2"), query=query([("customer", "alice")])) == []
    assert positions(world, stream=stream("cart-1", 2), query=query([("item", "apple")], [("item", "pear")])
                     ) == [6, 7]


# --- Cursor --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["from_position", "last_retrieved_position"])
def test_cursor_is_exclusive(world: World, name: str) -> None:
    cursor = {name: pos(7, 6)}  # event 6, saved in the write ending at 7
    assert positions(world, **cursor) == list(range(7, 41))
    assert positions(world, **cursor, direction=pb.DESC) == [5, 4, 3, 2, 1]
    assert positions(world, **{name: pos(40, 40)}) == []
    assert positions(world, **{name: pos(1, 1)}, direction=pb.DESC) == []
    assert positions(world, **{name: pos(2, 1)}, direction=pb.DESC) == []
    assert positions(world, **{name: pos(10, 8)}, query=query([("item", "apple")]), direction=pb.DESC) == [7, 4, 2]
    assert positions(world, **{name: pos(7, 7)}, query=query([("item", "apple")])) == [8, 12]
    assert positions(world, **cursor, stream=stream("cart-1")) == [7, 13]
    assert positions(world, **cursor, stream=stream("cart-1"), direction=pb.DESC) == [2, 1]
    # Lexicographic (commit, prepare): after (10, 0) is the whole write ending at 10 and later.
    assert positions(world, **{name: pos(10, 0)}) == list(range(8, 41))
    assert positions(world, **{name: pos(10, 0)}, direction=pb.DESC) == [7, 6, 5, 4, 3, 2, 1]


@pytest.mark.parametrize("big", [2**63 - 1, 2**63, 2**64 - 1])
def test_cursors_beyond_any_position(world: World, big: int) -> None:
    """Positions are uint64 on the wire and bigint in PostgreSQL: a cursor past 2**63 - 1 is
    after every event (ASC: nothing; DESC: everything), never an INTERNAL error."""
    for cursor in (pos(big, big), pos(big, 0), pos(big, 5)):
        assert positions(world, from_position=cursor) == []
        assert positions(world, from_position=cursor, query=query([("item", "apple")])) == []
        assert positions(world, from_position=cursor, stream=stream("cart-1")) == []
        assert positions(world, from_position=cursor, direction=pb.DESC) == (
            ALL[::-1] if cursor.prepare_position in (0, big) else [4, 3, 2, 1])
        assert positions(world, from_position=cursor, stream=stream("cart-1"), direction=pb.DESC) == (
            [13, 7, 6, 2, 1] if cursor.prepare_position in (0, big) else [2, 1])


def test_both_cursor_names(world: World) -> None:
    assert positions(world, from_position=pos(7, 6), last_retrieved_position=pos(7, 6), count=3) == [7, 8, 9]
    code, details = refused(world, from_position=pos(7, 6), last_retrieved_position=pos(7, 7))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "from_position" in details
    assert "last_retrieved_position" in details


# --- Paging --------------------------------------------------------------------------------------------


def _pages(world: World, count: int, cursor_name: str, **fields: Any) -> list[list[int]]:
    pages: list[list[int]] = []
    cursor: dict[str, pb.Position] = {}
    while True:
        events = get(world, count=count, **cursor, **fields)
        pages.append([e.position.prepare_position for e in events])
        assert [e.event_id for e in events] == world.at(*pages[-1])
        if len(events) < count:
            return pages
        last = events[-1].position
        cursor = {cursor_name: pos(last.commit_position, last.prepare_position)}
        assert len(pages) < 100, "paging does not end"


def test_paging_asc(world: World) -> None:
    pages = _pages(world, 7, "last_retrieved_position")
    assert [len(p) for p in pages] == [7, 7, 7, 7, 7, 5]
    assert [p for page in pages for p in page] == ALL


def test_paging_desc(world: World) -> None:
    pages = _pages(world, 7, "from_position", direction=pb.DESC)
    assert [len(p) for p in pages] == [7, 7, 7, 7, 7, 5]
    assert [p for page in pages for p in page] == ALL[::-1]


def test_paging_a_tag_query(world: World) -> None:
    apples = query([("item", "apple")], [("customer", "bob")])  # 2, 3, 4, 5, 7, 8, 12, 24
    pages = _pages(world, 3, "last_retrieved_position", query=apples)
    assert pages == [[2, 3, 4], [5, 7, 8], [12, 24]]
    pages = _pages(world, 2, "from_position", query=apples, direction=pb.DESC)
    assert pages == [[24, 12], [8, 7], [5, 4], [3, 2], []]


def test_paging_a_stream(world: World) -> None:
    pages = _pages(world, 2, "last_retrieved_position", stream=stream("cart-1"))
    assert pages == [[1, 2], [6, 7], [13]]


# --- count ---------------------------------------------------------------------------------------------


def _bulk(world: World, **fields: Any) -> list[int]:
    return [e.position.prepare_position for e in get(world, "bulk", **fields)]


def test_count_zero_means_the_default_100(world: World) -> None:
    assert _bulk(world) == list(range(1, 101))
    assert _bulk(world, count=0, direction=pb.DESC) == list(range(150, 50, -1))
    assert _bulk(world, query=query([("event_type", "Bulk")])) == list(range(1, 101))


def test_count_up_to_the_maximum(world: World) -> None:
    assert _bulk(world, count=10_000) == list(range(1, 151))
    assert _bulk(world, count=150) == list(range(1, 151))
    assert _bulk(world, count=149, direction=pb.DESC) == list(range(150, 1, -1))
    assert _bulk(world, count=1) == [1]


def test_count_above_the_maximum_is_invalid(world: World) -> None:
    for count in (10_001, 2**32 - 1):
        code, details = refused(world, "bulk", count=count)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "count" in details
        assert "10000" in details.replace(",", "")


# --- Errors --------------------------------------------------------------------------------------------


def test_unknown_and_empty_boundary(world: World) -> None:
    code, details = refused(world, "payments")
    assert code == grpc.StatusCode.NOT_FOUND
    assert "payments" in details
    code, details = refused(world, "")
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "boundary" in details


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"query": query([("customer", "alice")], [("", "x")])}, "query.criteria[1].tags[0].key"),
        ({"query": query([("customer", "alice"), ("", "")])}, "query.criteria[0].tags[1].key"),
        ({"stream": stream("cart-1", subset=query([("", "x")]))}, "stream.subsetQuery.criteria[0].tags[0].key"),
        ({"stream": stream("cart-1", -1)}, "stream.from_version"),
        ({"stream": stream("", 3)}, "stream.name"),
        ({"stream": stream("cart\x001")}, "stream.name"),
        ({"query": query([("item", "ap\x00ple")])}, "query.criteria[0].tags[0].value"),
        ({"query": query(*[[("n", str(i))] for i in range(101)])}, "query.criteria"),
        ({"query": query([("n", str(i)) for i in range(33)])}, "query.criteria[0].tags"),
        ({"direction": 2}, "direction"),
    ],
    ids=["query-empty-key", "query-empty-key-and", "subset-empty-key", "negative-from-version", "no-stream-name",
         "nul-stream", "nul-tag-value", "too-many-criteria", "too-many-tags", "bad-direction"],
)
def test_invalid_reads(world: World, fields: dict[str, Any], field: str) -> None:
    code, details = refused(world, **fields)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in details


# --- The Event message -------------------------------------------------------------------------------


def test_event_fields_are_complete(world: World) -> None:
    [event] = get(world, from_position=pos(12, 11), count=1)
    seeded = world.events[11]
    assert event.event_id == seeded.event_id
    assert event.event_type == "ItemAdded"
    assert event.data == json.dumps({"position": 12, "type": "ItemAdded"})
    assert event.metadata == json.dumps({"seq": 12})
    assert [(t.key, t.value) for t in event.tags] == [("customer", "carol"), ("item", "apple"), ("promo", "yes")]
    assert event.HasField("position")
    assert (event.position.commit_position, event.position.prepare_position) == (12, 12)
    assert event.stream_id == "cart-3"
    assert event.version == 1
    assert event.HasField("date_created")
    created = event.date_created.ToDatetime(tzinfo=UTC)
    slack = timedelta(seconds=5)  # clock granularity between this process and PostgreSQL
    assert world.started - slack <= created <= world.finished + slack


def test_stored_tags_named_event_type_come_back_unchanged(world: World) -> None:
    [event] = get(world, stream=stream("inventory", 2))
    assert event.event_type == "StockCounted"
    assert [(t.key, t.value) for t in event.tags] == [("event_type", "ItemAdded"), ("eventType", "CheckedOut")]


def test_every_event_round_trips(world: World) -> None:
    events = get(world, count=100)
    assert [
        (e.event_id, e.event_type, e.stream_id, e.version, tuple((t.key, t.value) for t in e.tags),
         e.position.prepare_position, e.position.commit_position, e.data, e.metadata)
        for e in events
    ] == [
        (s.event_id, s.event_type, s.stream, s.version, s.tags, s.prepare, s.commit, s.data, s.metadata)
        for s in world.events
    ]


# --- What SaveEvents stored comes back exactly (docs/contract.md §3) --------------------------------


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def ev(event_type: str = "Happened", data: str = '{"n": 1}', metadata: str = "",
       tags: Sequence[tuple[str, str]] = (), event_id: str | None = None) -> pb.EventToSave:
    return pb.EventToSave(event_id=event_id or str(uuid.uuid4()), event_type=event_type, data=data,
                          metadata=metadata, tags=[pb.Tag(key=k, value=v) for k, v in tags])


def _read(world: World, name: str) -> list[pb.Event]:
    return get(world, "roundtrip", stream=stream(name))


PAYLOADS = [
    ('{"a":1}', ""),
    ('  {\n\t"a" :   1 ,\r\n  "b":[ ]  }  \n', '\t{ "m" : [ 1 , 2 ] }\n'),
    ('{"name": "Zoë — 日本語 🎉", "ß": "ü"}', '{"who": "Ωmega"}'),
    ('{"esc": "q\\" b\\\\ n\\n t\\t u\\u00e9 s\\ud83d\\ude00 sl\\/"}', '{"x": "\\u0000 is escaped"}'),
    ('{"nested": {"deep": {"list": [1, {"x": null}, [true, false, []], {}]}}}', "{}"),
    ('{"big": 123456789012345678901234567890, "f": 1.000000000000000000001, "e": -1.5E+300, "z": -0}', "[]"),
    ('{"dup": 1, "dup": 2}', '"just a string"'),
    ('"text"', "null"),
    ("42", "0"),
    ("null", ""),
    ("[]", ""),
]


def test_data_and_metadata_come_back_byte_for_byte(world: World) -> None:
    s = _name("bytes")
    events = [ev(data=d, metadata=m) for d, m in PAYLOADS]
    _save(world.stub, "roundtrip", s, events)
    stored = _read(world, s)
    assert [(e.data, e.metadata) for e in stored] == PAYLOADS


def test_valid_json_beyond_python_defaults_is_stored(world: World) -> None:
    # JSON has no limit on number size; a 5,000-digit integer is JSON text like any other.
    s = _name("digits")
    data = '{"n": ' + "7" * 5000 + "}"
    _save(world.stub, "roundtrip", s, [ev(data=data, metadata="-" + "1" * 4400)])
    assert [(e.data, e.metadata) for e in _read(world, s)] == [(data, "-" + "1" * 4400)]


def test_deeply_nested_json_is_never_an_internal_error(world: World) -> None:
    # 100,000 nested arrays (200 kB) is valid JSON: store it, or refuse it as INVALID_ARGUMENT
    # naming the field, but INTERNAL means a server bug (docs/contract.md §7).
    s = _name("deep")
    data = "[" * 100_000 + "]" * 100_000
    try:
        _save(world.stub, "roundtrip", s, [ev(), ev(data=data)])
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.details()
        assert "events[1].data" in exc.details()
        assert _read(world, s) == []
    else:
        assert _read(world, s)[1].data == data


def test_tags_come_back_exactly_as_saved(world: World) -> None:
    s = _name("tags")
    tags = [("b", "2"), ("a", "1"), ("a", "1"), ("event_type", "Custom"), ("eventType", "x"), ("empty", ""),
            ("ünï", "cødé 🎉"), ("A", "1")]
    _save(world.stub, "roundtrip", s, [ev("Tagged", tags=tags), ev("Untagged")])
    stored = _read(world, s)
    assert [(t.key, t.value) for t in stored[0].tags] == tags
    assert list(stored[1].tags) == []
    assert [e.event_type for e in stored] == ["Tagged", "Untagged"]


def test_event_id_comes_back_in_canonical_lowercase(world: World) -> None:
    # Event.event_id: the UUID it was saved with, in canonical lowercase form.
    s = _name("upper")
    upper = str(uuid.uuid4()).upper()
    _save(world.stub, "roundtrip", s, [ev(event_id=upper)])
    assert [e.event_id for e in _read(world, s)] == [upper.lower()]


def test_names_and_tags_with_sql_special_characters(world: World) -> None:
    s = _name("it's 100% \\ \"quoted\" _ 日本")
    tags = [("k'ey", "v'al%_"), ("--", "; DROP TABLE events; --")]
    event = ev(tags=tags)
    _save(world.stub, "roundtrip", s, [event])
    [stored] = _read(world, s)
    assert (stored.event_id, stored.stream_id) == (event.event_id, s)
    assert [(t.key, t.value) for t in stored.tags] == tags
    for tag in tags:
        found = get(world, "roundtrip", query=query([tag]))
        assert [e.event_id for e in found] == [event.event_id]
    assert get(world, "roundtrip", query=query([("k'ey", "v'al%")])) == []

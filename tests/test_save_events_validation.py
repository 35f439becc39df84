"""SaveEvents on a real server: invalid input is refused with INVALID_ARGUMENT naming the field and
stores nothing; an unknown boundary is NOT_FOUND; an event larger than NATS' max payload is refused
(docs/contract.md §7). Shared fixtures and helpers: tests/save_events_support.py.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from orisun._proto import eventstore_pb2 as pb
from tests import save_events_support
from tests.save_events_support import B, ev, new_id, query, read_stream, refused, request, save, stream_name
from tests.support import ServerThread

# Fixtures of tests/save_events_support.py, bound to names of this module so that pytest finds them here.
store = save_events_support.store
stub = save_events_support.stub


pytestmark = pytest.mark.timeout(120)


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


"""Upstream Orisun's Node client against Orisun, through stubs built from its own proto (issue #15):
OrisunLabs/orisun-node-client at df80552 (``node``): SaveEvents, GetEvents,
CatchUpSubscribeToEvents, CatchUpSubscribeToStream; int64 positions, uint64 versions, int64
expected versions, no tags on EventToSave/Event, ``afterPosition``. Also: which RPCs each upstream
proto shares with Orisun (all covered here or in tests/test_compat_java.py), and that the node
client's HEAD ``orisun.EventStore`` (position-based appends, no streams) is not served:
UNIMPLEMENTED.

The Java client is in tests/test_compat_java.py, upstream's ``orisun.Admin`` in
tests/test_compat_admin.py; shared fixtures and helpers in tests/compat_support.py. The answers are
compared with what Orisun's own proto reads for the same events.
"""

from __future__ import annotations

import functools
import uuid
from typing import Any

import grpc
import pytest

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from tests import compat_support
from tests.compat import stubs
from tests.compat_support import (
    AUTH,
    NODE_B,
    _tagged_history,
    enum,
    head,
    java,
    msg,
    node,
    node_event,
    node_save,
    our_stream,
    refused,
    same_events,
    unique,
)

# Fixtures of tests/compat_support.py, bound to names of this module so that pytest finds them here.
server = compat_support.server
channel = compat_support.channel
ours = compat_support.ours
node_stub = compat_support.node_stub
reader = compat_support.reader


pytestmark = pytest.mark.timeout(120)


# Every RPC of Orisun's eventstore.EventStore that each upstream proto also has, and the tests here
# that cover it (test_every_shared_rpc_is_covered keeps this list honest).
COVERED = {
    "node": {"SaveEvents", "GetEvents", "CatchUpSubscribeToEvents", "CatchUpSubscribeToStream"},
    "java": {"SaveEvents", "GetEvents", "CatchUpSubscribeToEvents", "PublishToPubSub", "SubscribeToPubSub"},
}


def test_every_shared_rpc_is_covered() -> None:
    """The RPCs each upstream proto shares with Orisun's are the ones this module tests."""
    mine = {m.name for m in pb.DESCRIPTOR.services_by_name["EventStore"].methods}
    for label, protos in (("node", node()), ("java", java())):
        theirs = {m.name for m in protos.service("eventstore.EventStore").methods}
        assert theirs <= mine, f"{label}: RPCs Orisun lacks: {theirs - mine}"
        assert theirs & mine == COVERED[label], label


def test_node_save_with_every_expected_version(node_stub: stubs.Stub, ours: pb_grpc.EventStoreStub) -> None:
    stream = unique("node-versions")
    first = node_save(node_stub, stream, [node_event(), node_event()], -1)  # must not exist yet
    assert first.new_stream_version == 1
    second = node_save(node_stub, stream, [node_event()], 1)  # exactly version 1
    assert second.new_stream_version == 2
    third = node_save(node_stub, stream, [node_event()], -2)  # any
    assert third.new_stream_version == 3
    stored = our_stream(ours, NODE_B, stream)
    assert [e.version for e in stored] == [0, 1, 2, 3]
    assert (third.log_position.commit_position, third.log_position.prepare_position) == (
        stored[-1].position.commit_position, stored[-1].position.prepare_position)
    for expected, actual in ((-1, 3), (1, 3), (7, 3)):
        code, details = refused(node_stub.SaveEvents, msg(node(), "SaveEventsRequest", boundary=NODE_B,
                                events=[node_event()], stream=msg(node(), "SaveStreamQuery", name=stream,
                                                                  expected_version=expected)))
        assert code == grpc.StatusCode.ALREADY_EXISTS, details
        assert f"Expected {expected}, Actual {actual}" in details
    assert len(our_stream(ours, NODE_B, stream)) == 4, "a refused write stores nothing"


def test_node_idempotent_retry_returns_the_original_result(node_stub: stubs.Stub) -> None:
    stream = unique("node-retry")
    events = [node_event(), node_event()]
    original = node_save(node_stub, stream, events, -1)
    retried = node_save(node_stub, stream, events, -1)  # the answer was lost: the client sends it again
    assert retried == original


def test_node_subset_query(node_stub: stubs.Stub, ours: pb_grpc.EventStoreStub) -> None:
    """Node's EventToSave has no tags: its subsetQuery can narrow by the event_type pseudo-tag."""
    stream = unique("node-subset")
    node_save(node_stub, stream, [node_event("Opened"), node_event("Paid"), node_event("Noted")], -1)
    paid = msg(node(), "Query", criteria=[msg(node(), "Criterion", tags=[msg(node(), "Tag", key="event_type",
                                                                            value="Paid")])])
    code, details = refused(node_stub.SaveEvents, msg(node(), "SaveEventsRequest", boundary=NODE_B,
                            events=[node_event("Paid")], stream=msg(node(), "SaveStreamQuery", name=stream,
                                                                    expected_version=2, subsetQuery=paid)))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "Expected 2, Actual 1" in details, details
    result = node_save(node_stub, stream, [node_event("Paid")], 1, subset=paid)
    assert result.new_stream_version == 3
    assert [e.event_type for e in our_stream(ours, NODE_B, stream)] == ["Opened", "Paid", "Noted", "Paid"]


def test_node_get_events_by_stream_tags_cursor_and_direction(node_stub: stubs.Stub,
                                                              ours: pb_grpc.EventStoreStub) -> None:
    tag = uuid.uuid4().hex
    stream = unique("node-read")
    tagged = _tagged_history(ours, NODE_B, stream, tag)
    assert len(tagged) == 6
    n = functools.partial(msg, node())
    by_tag = n("Query", criteria=[n("Criterion", tags=[n("Tag", key="compat", value=tag)])])

    got = node_stub.GetEvents(n("GetEventsRequest", boundary=NODE_B, query=by_tag, count=100), metadata=AUTH).events
    same_events(got, tagged)
    got = node_stub.GetEvents(n("GetEventsRequest", boundary=NODE_B, stream=n("GetStreamQuery", name=stream,
                                                                              from_version=1)), metadata=AUTH).events
    same_events(got, [e for e in tagged if e.stream_id == stream][1:])
    cursor = n("Position", commit_position=tagged[2].position.commit_position,
               prepare_position=tagged[2].position.prepare_position)
    got = node_stub.GetEvents(n("GetEventsRequest", boundary=NODE_B, query=by_tag, from_position=cursor, count=2),
                              metadata=AUTH).events
    same_events(got, tagged[3:5])
    got = node_stub.GetEvents(n("GetEventsRequest", boundary=NODE_B, query=by_tag, from_position=cursor,
                                direction=enum(node(), "eventstore.Direction", "DESC")), metadata=AUTH).events
    same_events(got, tagged[:2][::-1])
    by_type = n("Query", criteria=[n("Criterion", tags=[n("Tag", key="compat", value=tag),
                                                        n("Tag", key="eventType", value="T1")])])
    got = node_stub.GetEvents(n("GetEventsRequest", boundary=NODE_B, query=by_type), metadata=AUTH).events
    same_events(got, [e for e in tagged if e.event_type == "T1"])


def test_node_catch_up_subscribe_to_events(node_stub: stubs.Stub, ours: pb_grpc.EventStoreStub,
                                           reader: Any) -> None:
    tag = uuid.uuid4().hex
    history = _tagged_history(ours, NODE_B, unique("node-sub"), tag)
    n = functools.partial(msg, node())
    by_tag = n("Query", criteria=[n("Criterion", tags=[n("Tag", key="compat", value=tag)])])
    after = n("Position", commit_position=history[1].position.commit_position,
              prepare_position=history[1].position.prepare_position)
    subscription = reader(node(), "CatchUpSubscribeToEvents", n("CatchUpSubscribeToEventStoreRequest",
                          boundary=NODE_B, query=by_tag, afterPosition=after, subscriber_name=unique("node")))
    subscription.wait_for_count(4)  # the catch-up
    everything = _tagged_history(ours, NODE_B, unique("node-sub"), tag)
    assert everything[:6] == history
    same_events(subscription.wait_for_count(10), everything[2:])


def test_node_catch_up_subscribe_to_stream(node_stub: stubs.Stub, ours: pb_grpc.EventStoreStub,
                                           reader: Any) -> None:
    """Issue #15, point 1: the Node client's subscription to one stream (its basic-usage example)."""
    stream = unique("node-stream")
    n = functools.partial(msg, node())
    node_save(node_stub, stream, [node_event("Opened"), node_event("Paid")], -1)
    node_save(node_stub, f"{stream}-other", [node_event("Opened")], -1)
    everything = reader(node(), "CatchUpSubscribeToStream", n("CatchUpSubscribeToStreamRequest", boundary=NODE_B,
                                                              stream=stream, afterVersion=-1))
    after_first = reader(node(), "CatchUpSubscribeToStream", n("CatchUpSubscribeToStreamRequest", boundary=NODE_B,
                                                               stream=stream, afterVersion=0,
                                                               subscriber_name=unique("node-stream")))
    paid = n("Query", criteria=[n("Criterion", tags=[n("Tag", key="event_type", value="Paid")])])
    only_paid = reader(node(), "CatchUpSubscribeToStream", n("CatchUpSubscribeToStreamRequest", boundary=NODE_B,
                                                             stream=stream, afterVersion=-1, query=paid))
    everything.wait_for_count(2)
    node_save(node_stub, stream, [node_event("Paid"), node_event("Shipped")], 1)
    node_save(node_stub, f"{stream}-other", [node_event("Paid")], 0)
    stored = our_stream(ours, NODE_B, stream)
    same_events(everything.wait_for_count(4), stored)
    same_events(after_first.wait_for_count(3), stored[1:])
    same_events(only_paid.wait_for_count(2), [e for e in stored if e.event_type == "Paid"])
    # Refusals come as the node client expects them: a status on the stream.
    code, details = refused(lambda *a, **k: next(iter(node_stub.CatchUpSubscribeToStream(*a, **k))),
                            n("CatchUpSubscribeToStreamRequest", boundary="no_such_boundary", stream=stream))
    assert code == grpc.StatusCode.NOT_FOUND, details


def test_node_positions_and_versions_decode_the_same(node_stub: stubs.Stub, ours: pb_grpc.EventStoreStub) -> None:
    """int64 positions and uint64 versions (node) against uint64 positions and uint32 versions
    (Orisun): the same varints on the wire."""
    stream = unique("node-wire")
    result = node_save(node_stub, stream, [node_event() for _ in range(3)], -1)
    mine = our_stream(ours, NODE_B, stream)
    theirs = node_stub.GetEvents(msg(node(), "GetEventsRequest", boundary=NODE_B,
                                     stream=msg(node(), "GetStreamQuery", name=stream)), metadata=AUTH).events
    same_events(theirs, mine)
    assert result.log_position.prepare_position == mine[-1].position.prepare_position > 0


# --- Upstream's later orisun.EventStore ---------------------------------------------------------------


def test_upstreams_later_event_store_is_not_served(channel: grpc.Channel) -> None:
    """upstream-head's ``orisun.EventStore`` (position-based appends without streams, criteria
    matched against the data JSON) is another API: its calls answer UNIMPLEMENTED."""
    stub = head().stub(channel, "orisun.EventStore")
    code, _ = refused(stub.GetEvents, msg(head(), "GetEventsRequest", boundary=NODE_B))
    assert code == grpc.StatusCode.UNIMPLEMENTED


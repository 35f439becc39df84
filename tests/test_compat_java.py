"""Upstream oexza/Orisun's Java client at 4c0ec17 (``java``) against Orisun, through stubs built from
its own proto (issue #15): SaveEvents, GetEvents, CatchUpSubscribeToEvents, PublishToPubSub,
SubscribeToPubSub with ``bytes`` data, no new_stream_version; and its conflict parsing
(``Utils.extractVersionNumbers``). Shared fixtures and helpers: tests/compat_support.py.
"""

from __future__ import annotations

import functools
import json
import re
import time
import uuid
from collections.abc import Sequence
from typing import Any

import grpc
import pytest

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from tests import compat_support
from tests.compat import stubs
from tests.compat_support import (
    AUTH,
    DELIVERY_TIMEOUT,
    JAVA_B,
    Reader,
    _tagged_history,
    enum,
    java,
    msg,
    new_id,
    our_stream,
    refused,
    same_events,
    unique,
)
from tests.support import wait_for

# Fixtures of tests/compat_support.py, bound to names of this module so that pytest finds them here.
server = compat_support.server
channel = compat_support.channel
ours = compat_support.ours
reader = compat_support.reader


pytestmark = pytest.mark.timeout(120)


# Upstream's Java client, Utils.extractVersionNumbers: java.util.regex, case-sensitive, find().
JAVA_CONFLICT = re.compile(r"Expected\s+(\d+),\s+Actual\s+(\d+)")


@pytest.fixture(scope="module")
def java_stub(channel: grpc.Channel) -> stubs.Stub:
    return java().stub(channel, "eventstore.EventStore")


# --- The Java client (4c0ec17) ------------------------------------------------------------------------


def java_event(event_type: str = "Happened") -> Any:
    return msg(java(), "EventToSave", event_id=new_id(), event_type=event_type,
               data=json.dumps({"n": uuid.uuid4().hex[:6]}), metadata='{"by": "java"}')


def java_save_request(stream: str, events: Sequence[Any], expected: int, subset: Any = None) -> Any:
    return msg(java(), "SaveEventsRequest", boundary=JAVA_B, events=events,
               stream=msg(java(), "SaveStreamQuery", name=stream, expected_version=expected, subsetQuery=subset))


def java_versions(details: str) -> tuple[int, int]:
    """What upstream's Java client makes of a conflict (Utils.extractVersionNumbers), or an
    IllegalArgumentException as AssertionError."""
    match = JAVA_CONFLICT.search(details)
    assert match is not None, f"the Java client cannot read this conflict: {details!r}"
    return int(match[1]), int(match[2])


def test_java_save_with_every_expected_version_and_retry(java_stub: stubs.Stub, ours: pb_grpc.EventStoreStub) -> None:
    stream = unique("java-versions")
    events = [java_event(), java_event()]
    first = java_stub.SaveEvents(java_save_request(stream, events, -1), metadata=AUTH, timeout=30)
    java_stub.SaveEvents(java_save_request(stream, [java_event()], 1), metadata=AUTH, timeout=30)
    last = java_stub.SaveEvents(java_save_request(stream, [java_event()], -2), metadata=AUTH, timeout=30)
    stored = our_stream(ours, JAVA_B, stream)
    assert [e.version for e in stored] == [0, 1, 2, 3]
    assert last.log_position.prepare_position == stored[-1].position.prepare_position
    retried = java_stub.SaveEvents(java_save_request(stream, events, -1), metadata=AUTH, timeout=30)
    assert retried == first  # an idempotent retry, though the stream has moved on


def test_java_client_reads_the_conflicts_versions(java_stub: stubs.Stub) -> None:
    """Issue #15, point 2: the Java client's regex finds the right expected and actual versions."""
    stream = unique("java-conflict")
    java_stub.SaveEvents(java_save_request(stream, [java_event("A"), java_event("B"), java_event("A")], -1),
                         metadata=AUTH, timeout=30)
    for expected, subset, actual in ((0, None, 2), (5, None, 2), (0, "B", 1), (7, "A", 2)):
        query = None if subset is None else msg(java(), "Query", criteria=[msg(java(), "Criterion", tags=[
            msg(java(), "Tag", key="event_type", value=subset)])])
        code, details = refused(java_stub.SaveEvents, java_save_request(stream, [java_event()], expected, query))
        assert code == grpc.StatusCode.ALREADY_EXISTS, details
        assert java_versions(details) == (expected, actual)
        assert details.startswith("OptimisticConcurrencyException:StreamVersionConflict: ")


def test_java_get_events_by_stream_subset_tags_cursor_and_direction(java_stub: stubs.Stub,
                                                                    ours: pb_grpc.EventStoreStub) -> None:
    tag = uuid.uuid4().hex
    stream = unique("java-read")
    tagged = _tagged_history(ours, JAVA_B, stream, tag)
    j = functools.partial(msg, java())
    by_tag = j("Query", criteria=[j("Criterion", tags=[j("Tag", key="compat", value=tag)])])
    got = java_stub.GetEvents(j("GetEventsRequest", boundary=JAVA_B, query=by_tag), metadata=AUTH).events
    same_events(got, tagged)
    t1 = j("Query", criteria=[j("Criterion", tags=[j("Tag", key="event_type", value="T1")])])
    got = java_stub.GetEvents(j("GetEventsRequest", boundary=JAVA_B, stream=j("GetStreamQuery", name=stream,
                                                                              subsetQuery=t1)), metadata=AUTH).events
    same_events(got, [e for e in tagged if e.stream_id == stream and e.event_type == "T1"])
    cursor = j("Position", commit_position=tagged[3].position.commit_position,
               prepare_position=tagged[3].position.prepare_position)
    got = java_stub.GetEvents(j("GetEventsRequest", boundary=JAVA_B, query=by_tag, from_position=cursor,
                                direction=enum(java(), "eventstore.Direction", "DESC"), count=2), metadata=AUTH).events
    same_events(got, tagged[1:3][::-1])


def test_java_catch_up_subscribe_to_events(java_stub: stubs.Stub, ours: pb_grpc.EventStoreStub, reader: Any) -> None:
    tag = uuid.uuid4().hex
    _tagged_history(ours, JAVA_B, unique("java-sub"), tag)
    j = functools.partial(msg, java())
    by_tag = j("Query", criteria=[j("Criterion", tags=[j("Tag", key="compat", value=tag)])])
    subscription = reader(java(), "CatchUpSubscribeToEvents", j("CatchUpSubscribeToEventStoreRequest",
                          boundary=JAVA_B, query=by_tag, subscriber_name=unique("java")))
    subscription.wait_for_count(6)
    everything = _tagged_history(ours, JAVA_B, unique("java-sub"), tag)
    same_events(subscription.wait_for_count(12), everything)


def java_publish(stub: stubs.Stub, subject: str, data: bytes, message_id: str = "") -> None:
    stub.PublishToPubSub(msg(java(), "PublishRequest", id=message_id, subject=subject, data=data),
                         metadata=AUTH, timeout=30)


def establish(stub: stubs.Stub, subject: str, subscribers: Sequence[Reader]) -> set[str]:
    """Publish probes until every subscriber has received one (a new consumer gets only what is
    published after it subscribed); the probes' ids."""
    probes: set[str] = set()

    def received() -> bool:
        java_publish(stub, subject, b"probe", probe := new_id())
        probes.add(probe)
        return wait_for_any(lambda: all({r.message.id for r in s.items} & probes for s in subscribers), 0.3)

    wait_for(received, DELIVERY_TIMEOUT, "the pub/sub subscriptions to be established")
    return probes


def wait_for_any(condition: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return bool(condition())


def test_java_pubsub_with_bytes_data_fan_out_and_competing_consumers(
    java_stub: stubs.Stub, ours: pb_grpc.EventStoreStub, reader: Any
) -> None:
    """Java's ``bytes data`` is the same on the wire as Orisun's ``string data`` for UTF-8."""
    subject = f"compat.{uuid.uuid4().hex[:8]}"
    j = functools.partial(msg, java())
    fan_a = reader(java(), "SubscribeToPubSub", j("SubscribeRequest", subject=subject, consumer_name=unique("a")))
    fan_b = reader(java(), "SubscribeToPubSub", j("SubscribeRequest", subject=subject, consumer_name=unique("b")))
    shared = unique("workers")
    workers = [reader(java(), "SubscribeToPubSub", j("SubscribeRequest", subject=subject, consumer_name=shared))
               for _ in range(2)]
    probes = establish(java_stub, subject, [fan_a, fan_b, workers[0]])
    payloads = {new_id(): json.dumps({"n": n, "text": "Zoë 日本 🎉"}).encode() for n in range(20)}
    for message_id, data in payloads.items():
        java_publish(java_stub, subject, data, message_id)
    ours.PublishToPubSub(pb.PublishRequest(id=(mine := new_id()), subject=subject, data='{"from": "orisun"}',
                                           metadata='{"m": 1}'), metadata=AUTH, timeout=30)
    payloads[mine] = b'{"from": "orisun"}'

    def delivered(subscribers: Sequence[Reader]) -> dict[str, bytes]:
        return {r.message.id: r.message.data for s in subscribers for r in s.items if r.message.id not in probes}

    for subscribers in ([fan_a], [fan_b], workers):
        wait_for(lambda s=subscribers: set(payloads) <= set(delivered(s)), DELIVERY_TIMEOUT, "every message")
        assert delivered(subscribers) == payloads
        assert all(r.message.subject == subject for s in subscribers for r in s.items)
    ids = [r.message.id for w in workers for r in w.items if r.message.id not in probes]
    assert sorted(ids) == sorted(payloads), "competing consumers: each message to one of them"


def test_java_pubsub_data_that_is_not_utf8_is_refused(java_stub: stubs.Stub) -> None:
    """Orisun's data is text: bytes that are not UTF-8 cannot be decoded as its PublishRequest."""
    code, details = refused(java_stub.PublishToPubSub, msg(java(), "PublishRequest", subject="compat.binary",
                                                           data=b"\xff\xfe\x00"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details


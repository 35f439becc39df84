"""PublishToPubSub / SubscribeToPubSub on a real server (docs/contract.md §6 and §7).

Written from the contract (docs/contract.md) and the implementer's stated decisions, not from the implementation:

- subjects are dot-separated tokens of [A-Za-z0-9_-]; publish takes no wildcards, subscribe may use
  `*` tokens and a final `>`; anything else is INVALID_ARGUMENT naming `subject`;
- consumer_name is required, [A-Za-z0-9_-]{1,64}, else INVALID_ARGUMENT naming `consumer_name`;
- publishing needs ADMIN or OPERATIONS, subscribing any authenticated user;
- `id` is generated (a UUID) when empty and kept when given; data and metadata round-trip exactly;
- a new consumer name starts with what is published after it first subscribed, and is durable;
  subscribers sharing a name split the messages, different names each get every message.

Establishing a subscription is observable only through delivery, so tests publish "probe" messages
until every subscriber has received one (`establish`), and then publish the messages under test.
Probes are excluded from the exact-set assertions. Delivery is in stream order, so a message that
should never arrive (published before the consumer existed, or on a non-matching subject) is
published before the ones awaited: once those have arrived, its absence is meaningful.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc
import nats.js.errors
import pytest
from google.protobuf import empty_pb2

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from orisun.messaging.pubsub import PREFIX, STREAM, ConsumerStatus, PubSub, PubSubMessage, durable_name, wire_size
from orisun.model import Role
from orisun.runtime.postgres import EmbeddedPostgres
from tests.brief import BRIEF_PUBLISH, BRIEF_SUBSCRIBE_TO_PUBSUB
from tests.support import (
    ADMIN,
    CHANNEL_OPTIONS,
    GrpcurlStream,
    LoopThread,
    ServerThread,
    StreamReader,
    auth_metadata,
    grpcurl,
    running_server,
    wait_for,
)

pytestmark = pytest.mark.timeout(60)

READER = ("pubsub-reader", "reader-password-1")  # a user without roles
OPERATOR = ("pubsub-operator", "operator-password-1")  # role OPERATIONS

# A short ack wait (ORISUN_PUBSUB_ACK_WAIT) bounds how long a redelivery can take, so that a test
# racing a disconnect (see test_reconnecting_consumer_gets_what_it_missed) stays fast either way.
ACK_WAIT = 5.0
DELIVERY_TIMEOUT = 20.0  # for messages that should arrive promptly
REDELIVERY_TIMEOUT = ACK_WAIT + DELIVERY_TIMEOUT


# --- Fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture(scope="module", params=[1, 2], ids=["1-worker", "2-workers"])
def pubsub_server(postgres: EmbeddedPostgres, request: pytest.FixtureRequest) -> Iterator[ServerThread]:
    """One server for the module; every test uses its own subjects and consumer names."""
    with running_server(postgres.conninfo, "test_pubsub", workers=request.param, pubsub_ack_wait=ACK_WAIT) as server:
        users = server.app.users
        assert users is not None
        server.call(users.create("Pub/sub reader", *READER, []))
        server.call(users.create("Pub/sub operator", *OPERATOR, [Role.OPERATIONS]))
        yield server


@pytest.fixture
def stub(pubsub_server: ServerThread) -> Iterator[pb_grpc.EventStoreStub]:
    with pubsub_server.stub() as client:
        yield client


def unique(prefix: str) -> str:
    """A subject token / consumer name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def publish(
    stub: pb_grpc.EventStoreStub,
    subject: str,
    *,
    id: str = "",
    data: str = "",
    metadata: str = "",
    auth: tuple[str, str] | None = ADMIN,
) -> None:
    request = pb.PublishRequest(id=id, subject=subject, data=data, metadata=metadata)
    answer = stub.PublishToPubSub(request, metadata=auth_metadata(*auth) if auth else None, timeout=10)
    assert isinstance(answer, empty_pb2.Empty)


def publish_many(stub: pb_grpc.EventStoreStub, subject: str, count: int, data: str = "") -> list[str]:
    """Publish ``count`` messages with known ids, in order; their ids."""
    ids = [str(uuid.uuid4()) for _ in range(count)]
    for n, message_id in enumerate(ids):
        publish(stub, subject, id=message_id, data=data or f'{{"n": {n}}}', metadata='{"m": true}')
    return ids


def rpc_error(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value.code(), raised.value.details() or ""


class Subscriber(StreamReader[pb.SubscribeResponse]):
    """A SubscribeToPubSub call on its own channel (a separate client), read by a thread (see
    StreamReader for ``pause_after``)."""

    def __init__(
        self,
        server: ServerThread,
        subject: str,
        consumer_name: str,
        auth: tuple[str, str] = ADMIN,
        pause_after: int | None = None,
        stop_after: int | None = None,
        options: list[tuple[str, Any]] | None = None,
        address: str | None = None,
    ) -> None:
        self.subject = subject
        self.consumer_name = consumer_name
        channel = grpc.insecure_channel(address or server.address, options=[*CHANNEL_OPTIONS, *(options or [])])
        request = pb.SubscribeRequest(subject=subject, consumer_name=consumer_name)
        call = pb_grpc.EventStoreStub(channel).SubscribeToPubSub(request, metadata=auth_metadata(*auth), timeout=120)
        super().__init__(call, channel, f"subscription {consumer_name} on {subject}", pause_after=pause_after,
                         stop_after=stop_after)

    @property
    def messages(self) -> list[pb.Message]:
        return [response.message for response in self.items]

    def ids(self) -> list[str]:
        return [m.id for m in self.messages]

    def wait_for_ids(self, expected: Iterable[str], timeout: float = DELIVERY_TIMEOUT) -> None:
        wanted = set(expected)
        self.wait_until(lambda items: wanted <= {r.message.id for r in items}, timeout,
                        f"{len(wanted - set(self.ids()))} of {len(wanted)} messages")


@pytest.fixture
def subscribe(pubsub_server: ServerThread) -> Iterator[Callable[..., Subscriber]]:
    """Start subscribers; all are cancelled at the end of the test."""
    started: list[Subscriber] = []

    def start(subject: str, consumer_name: str, **kwargs: Any) -> Subscriber:
        subscriber = Subscriber(pubsub_server, subject, consumer_name, **kwargs)
        started.append(subscriber)
        return subscriber

    yield start
    for subscriber in started:
        subscriber.close()


def establish(stub: pb_grpc.EventStoreStub, subject: str, subscribers: list[Any], timeout: float = 15.0) -> set[str]:
    """Publish probes on ``subject`` until every subscriber has received one; the probe ids.

    A subscription exists once it receives something; a new consumer gets only what is published
    after it subscribed, so probing (not sleeping) is how to know it is there."""
    probes: set[str] = set()
    deadline = time.monotonic() + timeout
    while True:
        probe = str(uuid.uuid4())
        publish(stub, subject, id=probe, data="probe")
        probes.add(probe)
        round_end = time.monotonic() + 0.25
        while time.monotonic() < round_end:
            for subscriber in subscribers:
                subscriber.check()
            received = [set(s.ids()) for s in subscribers]  # Subscriber or GrpcurlSubscription
            if all(r & probes for r in received):
                return probes
            if any(probe in r for r in received):
                break  # progress: publish the next probe for those still waiting
            time.sleep(0.01)
        if time.monotonic() > deadline:
            missing = [s.consumer_name for s in subscribers if not set(s.ids()) & probes]
            raise AssertionError(f"subscriptions not established after {timeout}s: {missing}")


def non_probe(ids: Iterable[str], probes: set[str]) -> list[str]:
    return [i for i in ids if i not in probes]


def is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text.lower()
    except ValueError:
        return False


# --- The brief's examples, verbatim through grpcurl -----------------------------------------------


def test_brief_publish_example_without_subscriber(pubsub_server: ServerThread) -> None:
    result = grpcurl(pubsub_server.address, "eventstore.EventStore/PublishToPubSub", data=BRIEF_PUBLISH)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {}


def test_brief_publish_example_is_delivered(
    pubsub_server: ServerThread, stub: pb_grpc.EventStoreStub, subscribe: Callable[..., Subscriber]
) -> None:
    body = json.loads(BRIEF_PUBLISH)
    subscriber = subscribe(body["subject"], unique("brief-publish"))
    probes = establish(stub, body["subject"], [subscriber])

    result = grpcurl(pubsub_server.address, "eventstore.EventStore/PublishToPubSub", data=BRIEF_PUBLISH)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {}

    def delivered() -> list[pb.Message]:
        subscriber.check()
        return [m for m in subscriber.messages if m.id not in probes]

    [message] = wait_for(delivered, DELIVERY_TIMEOUT, "the brief's message")
    assert is_uuid(message.id), message.id
    assert message.subject == "order.notifications"
    assert message.data == (
        '{"order_id": "order-789", "status": "shipped", "customer_email": "john.doe@example.com"}'
    )
    assert message.metadata == '{"priority": "high", "notification_type": "shipping_update"}'


class GrpcurlSubscription(GrpcurlStream):
    """The real grpcurl running SubscribeToPubSub."""

    def __init__(self, address: str, body: str) -> None:
        super().__init__(address, "eventstore.EventStore/SubscribeToPubSub", body)
        self.consumer_name = "grpcurl"

    def ids(self) -> set[str]:
        return {o["message"]["id"] for o in self.objects}


def test_brief_subscribe_example_through_grpcurl(pubsub_server: ServerThread, stub: pb_grpc.EventStoreStub) -> None:
    body = json.loads(BRIEF_SUBSCRIBE_TO_PUBSUB)
    subject = body["subject"]
    assert subject == "inventory.updates"
    subscription = GrpcurlSubscription(pubsub_server.address, BRIEF_SUBSCRIBE_TO_PUBSUB)
    try:
        # Publish until grpcurl shows the first message: the subscription is established.
        probes = establish(stub, subject, [subscription])

        expected = {}
        for n in range(5):
            message_id = str(uuid.uuid4())
            data = json.dumps({"sku": f"SKU-{n}", "quantity_change": -n, "warehouse": "WH-1"})
            metadata = json.dumps({"source": "inventory-service", "seq": n})
            publish(stub, subject, id=message_id, data=data, metadata=metadata)
            expected[message_id] = {"message": {"id": message_id, "subject": subject, "data": data,
                                                "metadata": metadata}}

        def all_arrived() -> bool:
            subscription.check()
            return set(expected) <= subscription.ids()

        wait_for(all_arrived, DELIVERY_TIMEOUT, "the inventory updates in grpcurl's output")
        got = {o["message"]["id"]: o for o in subscription.objects if o["message"]["id"] not in probes}
        assert got == expected
        probe_objects = [o for o in subscription.objects if o["message"]["id"] in probes]
        assert probe_objects and all(
            o == {"message": {"id": o["message"]["id"], "subject": subject, "data": "probe"}} for o in probe_objects
        )
    finally:
        subscription.close()


# --- Round trip --------------------------------------------------------------------------------


def test_round_trip_keeps_id_data_and_metadata(
    stub: pb_grpc.EventStoreStub, subscribe: Callable[..., Subscriber]
) -> None:
    subject = f"{unique('rt')}.messages"
    subscriber = subscribe(subject, unique("round-trip"))
    probes = establish(stub, subject, [subscriber])

    given_uuid = str(uuid.uuid4())
    sent = [
        # (id as published, data, metadata)
        (given_uuid, '{"order_id": "order-789", "status": "shipped"}', '{"priority": "high"}'),
        ("msg-0001", "plain text, not JSON {", "not json either ]"),
        ("", "unicode: héllo wörld ✓ 🚀 日本語", '{"emoji": "🎉", "quote": "\\"", "backslash": "\\\\"}'),
        ("", 'escapes: "quoted" \\ back\\slash \n newline \t tab \r\n crlf \u2028 \x7f \x01', "line1\nline2\r\n"),
        ("", '{"empty_metadata": true}', ""),
        ("", "", '{"empty_data": true}'),
        ("", "x" * 100_000, "m" * 10_000),
        ("", "  leading and trailing spaces  ", "  "),
    ]
    for message_id, data, metadata in sent:
        publish(stub, subject, id=message_id, data=data, metadata=metadata)
    last = str(uuid.uuid4())
    publish(stub, subject, id=last, data="last", metadata="")
    subscriber.wait_for_ids([last])

    received = [m for m in subscriber.messages if m.id not in probes]
    assert len(received) == len(sent) + 1, [m.id for m in received]
    assert all(m.subject == subject for m in received)
    by_data = {m.data: m for m in received}
    assert len(by_data) == len(received)
    for message_id, data, metadata in sent:
        message = by_data[data]
        assert message.metadata == metadata
        if message_id:
            assert message.id == message_id
        else:
            assert is_uuid(message.id), message.id
    generated = [by_data[data].id for message_id, data, _ in sent if not message_id]
    assert len(set(generated)) == len(generated)
    assert given_uuid not in generated


def test_data_and_metadata_may_contain_nul(stub: pb_grpc.EventStoreStub, subscribe: Callable[..., Subscriber]) -> None:
    """A proto string may hold U+0000 and pub/sub payloads are "any string", delivered byte-for-byte
    (nothing here goes through PostgreSQL text)."""
    subject = f"{unique('nul')}.x"
    subscriber = subscribe(subject, unique("nul"))
    probes = establish(stub, subject, [subscriber])
    message_id = str(uuid.uuid4())
    publish(stub, subject, id=message_id, data="a\u0000b", metadata="\u0000")
    subscriber.wait_for_ids([message_id])
    [message] = [m for m in subscriber.messages if m.id not in probes]
    assert (message.data, message.metadata) == ("a\u0000b", "\u0000")


def test_subject_of_delivered_message_is_the_published_one(
    stub: pb_grpc.EventStoreStub, subscribe: Callable[..., Subscriber]
) -> None:
    """Wildcard subscriptions: `*` matches one token, a final `>` one or more."""
    root = unique("wc")
    star = subscribe(f"{root}.*", unique("star"))
    tail = subscribe(f"{root}.>", unique("tail"))
    middle = subscribe(f"{root}.*.created", unique("middle"))
    probes = establish(stub, f"{root}.probe", [star, tail])
    probes |= establish(stub, f"{root}.probe.created", [middle, tail])

    # Published first: must reach nobody (delivery follows publication order).
    publish(stub, f"other-{root}.a", id=str(uuid.uuid4()), data="another root")
    publish(stub, root, id=str(uuid.uuid4()), data="the bare root matches none of the patterns")
    subjects = [f"{root}.a", f"{root}.b", f"{root}.a.deep", f"{root}.x.created", f"{root}.x.y.created",
                f"{root}.z.created",  # last for middle
                f"{root}.zz"]  # last for star and tail
    on = {subject: str(uuid.uuid4()) for subject in subjects}
    for subject, message_id in on.items():
        publish(stub, subject, id=message_id, data=subject)

    star.wait_for_ids([on[f"{root}.zz"]])
    tail.wait_for_ids([on[f"{root}.zz"]])
    middle.wait_for_ids([on[f"{root}.z.created"]])

    def got(subscriber: Subscriber) -> dict[str, str]:
        messages = [m for m in subscriber.messages if m.id not in probes]
        assert all(m.data == m.subject for m in messages)
        return {m.id: m.subject for m in messages}

    def expect(*subjects: str) -> dict[str, str]:
        return {on[subject]: subject for subject in subjects}

    assert got(star) == expect(f"{root}.a", f"{root}.b", f"{root}.zz")
    assert got(tail) == expect(*subjects)
    assert got(middle) == expect(f"{root}.x.created", f"{root}.z.created")


def test_publish_without_subscribers_succeeds(stub: pb_grpc.EventStoreStub) -> None:
    for n in range(3):
        publish(stub, f"{unique('nobody')}.listening", data=str(n))
    publish(stub, unique("single-token"), id=str(uuid.uuid4()), data="x", metadata="y")


# --- Delivery semantics ------------------------------------------------------------------------


def test_competing_consumers_split_the_messages(
    stub: pb_grpc.EventStoreStub, subscribe: Callable[..., Subscriber]
) -> None:
    subject = f"{unique('compete')}.jobs"
    name = unique("workers")
    workers = [subscribe(subject, name) for _ in range(3)]
    probes = establish(stub, subject, workers)

    published = publish_many(stub, subject, 300)

    def union() -> set[str]:
        for worker in workers:
            worker.check()
        return set().union(*(w.ids() for w in workers))

    wait_for(lambda: set(published) <= union(), DELIVERY_TIMEOUT, "all 300 messages across the workers")
    per_worker = [non_probe(w.ids(), probes) for w in workers]
    everything = [i for ids in per_worker for i in ids]
    assert sorted(everything) == sorted(published), "each message to exactly one worker, nothing else"
    assert all(per_worker), f"every worker should get some: {[len(ids) for ids in per_worker]}"
    all_ids = [i for w in workers for i in w.ids()]
    assert len(all_ids) == len(set(all_ids)), "no probe delivered twice either"


def test_different_consumer_names_each_get_every_message(
    stub: pb_grpc.EventStoreStub, subscribe: Callable[..., Subscriber]
) -> None:
    subject = f"{unique('fanout')}.events"
    billing = subscribe(subject, unique("billing"))
    shipping_a = subscribe(subject, (shipping := unique("shipping")))
    shipping_b = subscribe(subject, shipping)
    probes = establish(stub, subject, [billing, shipping_a, shipping_b])

    published = publish_many(stub, subject, 100)

    billing.wait_for_ids(published)
    assert sorted(non_probe(billing.ids(), probes)) == sorted(published)

    def shipping_union() -> set[str]:
        shipping_a.check()
        shipping_b.check()
        return set(shipping_a.ids()) | set(shipping_b.ids())

    wait_for(lambda: set(published) <= shipping_union(), DELIVERY_TIMEOUT, "every message to shipping")
    shipped = non_probe(shipping_a.ids(), probes) + non_probe(shipping_b.ids(), probes)
    assert sorted(shipped) == sorted(published)


def test_new_consumer_starts_with_messages_published_after_it_subscribed(
    stub: pb_grpc.EventStoreStub, subscribe: Callable[..., Subscriber]
) -> None:
    subject = f"{unique('late')}.news"
    early = subscribe(subject, unique("early"))
    early_probes = establish(stub, subject, [early])
    before = publish_many(stub, subject, 10)
    early.wait_for_ids(before)

    late = subscribe(subject, unique("late"))
    late_probes = establish(stub, subject, [late])
    after = publish_many(stub, subject, 5)
    late.wait_for_ids(after)
    assert sorted(non_probe(late.ids(), late_probes | early_probes)) == sorted(after)
    assert not set(late.ids()) & early_probes


def test_reconnecting_consumer_gets_what_it_missed(
    pubsub_server: ServerThread, stub: pb_grpc.EventStoreStub, subscribe: Callable[..., Subscriber]
) -> None:
    subject = f"{unique('durable')}.orders"
    name = unique("order-projector")
    before_first_subscription = publish_many(stub, subject, 5)

    first = subscribe(subject, name)
    probes = establish(stub, subject, [first])
    while_connected = publish_many(stub, subject, 10)
    first.wait_for_ids(while_connected)
    first.close()
    first_ids = first.ids()

    while_away = publish_many(stub, subject, 20)

    second = subscribe(subject, name)
    # Normally prompt; if the old subscription grabbed some before the server saw it vanish, they
    # come back after the ack wait.
    second.wait_for_ids(while_away, timeout=REDELIVERY_TIMEOUT)
    second_ids = second.ids()

    assert not set(before_first_subscription) & (set(first_ids) | set(second_ids))
    assert sorted(non_probe(first_ids, probes)) == sorted(while_connected)
    # Besides what it missed, the second session may only see redeliveries of unacked messages.
    assert set(second_ids) <= set(while_away) | set(while_connected) | probes
    assert len(non_probe(second_ids, probes)) == len(set(non_probe(second_ids, probes)))


def test_slow_consumer_does_not_hold_up_other_consumers(
    stub: pb_grpc.EventStoreStub, subscribe: Callable[..., Subscriber]
) -> None:
    subject = f"{unique('slow')}.feed"
    slow = subscribe(subject, unique("slow"), pause_after=1)  # reads one message, then stops reading
    fast = subscribe(subject, unique("fast"))
    probes = establish(stub, subject, [slow, fast])
    assert len(slow.messages) == 1

    # ~3 MiB: more than gRPC's flow-control window lets the server push to the stalled client.
    published = publish_many(stub, subject, 400, data="d" * 8192)
    fast.wait_for_ids(published)
    assert sorted(non_probe(fast.ids(), probes)) == sorted(published)
    assert len(slow.messages) == 1

    # The slow consumer was held back, not dropped: once it reads again it gets everything.
    slow.resume()
    slow.wait_for_ids(published, timeout=REDELIVERY_TIMEOUT)
    assert set(non_probe(slow.ids(), probes)) == set(published)


def test_message_in_flight_to_a_vanished_client_is_redelivered(
    stub: pb_grpc.EventStoreStub, subscribe: Callable[..., Subscriber]
) -> None:
    """At-least-once. The first client reads one message and stalls, with BDP probing off so its
    HTTP/2 window stays at 64 KiB: a 500 kB message cannot be fully written to it, so the server is
    still handing one on when the client vanishes. A client of the same name must get every message,
    that one included (after the ack wait)."""
    subject = f"{unique('inflight')}.x"
    name = unique("inflight")
    first = subscribe(subject, name, pause_after=1, options=[("grpc.http2.bdp_probe", 0)])
    probes = establish(stub, subject, [first])
    published = publish_many(stub, subject, 10, data="p" * 500_000)
    first.close()
    assert not set(first.ids()) & set(published)

    second = subscribe(subject, name)
    second.wait_for_ids(published, timeout=REDELIVERY_TIMEOUT)
    assert sorted(set(non_probe(second.ids(), probes))) == sorted(published)
    assert all(m.data == "p" * 500_000 for m in second.messages if m.id in published)


def test_durable_consumer_survives_a_server_restart(start_server: Callable[..., ServerThread]) -> None:
    """Messages are kept in JetStream file storage: what was published while the consumer was away
    is delivered after the server restarts (same data dir and database)."""
    subject = f"{unique('restart')}.x"
    name = unique("restart")
    before = start_server(pubsub_ack_wait=ACK_WAIT)
    with before.stub() as first_stub:
        not_for_us = publish_many(first_stub, subject, 3)
        first = Subscriber(before, subject, name)
        try:
            probes = establish(first_stub, subject, [first])
        finally:
            first.close()
        while_away = publish_many(first_stub, subject, 10)
    before.stop()

    after = start_server(pubsub_ack_wait=ACK_WAIT)
    second = Subscriber(after, subject, name)
    try:
        with after.stub() as second_stub:
            second.wait_for_ids(while_away, timeout=REDELIVERY_TIMEOUT)
            later = publish_many(second_stub, subject, 5)
            second.wait_for_ids(later)
        got = set(second.ids())
        assert got <= set(while_away) | set(later) | probes
        assert not got & set(not_for_us)
    finally:
        second.close()


# --- Validation --------------------------------------------------------------------------------


BAD_PUBLISH_SUBJECTS = [
    "", ".", "a.", ".a", "a..b", "a b", " a", "a ", "a\tb", "a\nb", "a.*", "*", ">", "a.>", "*.a",
    "a*", "a>b", "a/b", "é", "orders.ünïcode", "$JS.API.STREAM.LIST", "a,b",
]
BAD_SUBSCRIBE_SUBJECTS = [
    "", ".", "a.", ".a", "a..b", "a b", "a\nb", "a.>.b", ">.a", "a*", "a.b*", "a.*b", "a>", "a.b>",
    "$JS.API.>", "a/b", "é",
]
BAD_CONSUMER_NAMES = ["", " ", "a b", "a.b", "a*", "a>", "x" * 65, "é", "a/b", "$name", "a\n", "a:b"]


@pytest.mark.parametrize("subject", BAD_PUBLISH_SUBJECTS)
def test_publish_rejects_bad_subjects(stub: pb_grpc.EventStoreStub, subject: str) -> None:
    code, details = rpc_error(lambda: publish(stub, subject, data="x"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert "subject" in details


def _first_delivery(stub: pb_grpc.EventStoreStub, subject: str, name: str, **kwargs: Any) -> None:
    call = stub.SubscribeToPubSub(pb.SubscribeRequest(subject=subject, consumer_name=name), timeout=5, **kwargs)
    try:
        next(call)
    finally:
        call.cancel()


@pytest.mark.parametrize("subject", BAD_SUBSCRIBE_SUBJECTS)
def test_subscribe_rejects_bad_subjects(stub: pb_grpc.EventStoreStub, subject: str) -> None:
    code, details = rpc_error(lambda: _first_delivery(stub, subject, unique("c"), metadata=auth_metadata()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert "subject" in details
    assert "consumer_name" not in details


@pytest.mark.parametrize("name", BAD_CONSUMER_NAMES)
def test_subscribe_rejects_bad_consumer_names(stub: pb_grpc.EventStoreStub, name: str) -> None:
    subject = f"{unique('names')}.x"
    code, details = rpc_error(lambda: _first_delivery(stub, subject, name, metadata=auth_metadata()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert "consumer_name" in details


def test_boundary_subjects_and_names_are_accepted(
    stub: pb_grpc.EventStoreStub, subscribe: Callable[..., Subscriber]
) -> None:
    token = unique("Edge_Case")
    for subject in (token, f"{token}.A-b_c.9", f"{token}.a.b.c.d.e.f.g", f"{token}.-.-_"):
        publish(stub, subject, data="accepted")
    longest = subscribe(f"*.{token}.>", "N" + uuid.uuid4().hex[:31] + "_-" * 15 + "Z-")
    assert len(longest.consumer_name) == 64
    shortest = subscribe(f"{token}.*", uuid.uuid4().hex[0])  # one character (may repeat: fine, own subject)
    establish(stub, f"x.{token}.y", [longest])
    establish(stub, f"{token}.y", [shortest])


# --- Auth --------------------------------------------------------------------------------------


def test_publish_needs_a_write_role(stub: pb_grpc.EventStoreStub, subscribe: Callable[..., Subscriber]) -> None:
    subject = f"{unique('auth')}.pub"
    subscriber = subscribe(subject, unique("auth-watch"))
    probes = establish(stub, subject, [subscriber])

    code, details = rpc_error(lambda: publish(stub, subject, id=str(uuid.uuid4()), data="nope", auth=READER))
    assert code == grpc.StatusCode.PERMISSION_DENIED, details

    by_operator = str(uuid.uuid4())
    publish(stub, subject, id=by_operator, data="ops", auth=OPERATOR)
    subscriber.wait_for_ids([by_operator])
    assert non_probe(subscriber.ids(), probes) == [by_operator]  # the refused one was not published


@pytest.mark.parametrize(
    "metadata",
    [None, auth_metadata(ADMIN[0], "wrong-password"), auth_metadata("no-such-user", "whatever-1"),
     [("authorization", "Bearer abc")]],
    ids=["none", "wrong-password", "unknown-user", "other-scheme"],
)
def test_pubsub_needs_credentials(stub: pb_grpc.EventStoreStub, metadata: list[tuple[str, str]] | None) -> None:
    subject = f"{unique('anon')}.x"
    request = pb.PublishRequest(subject=subject, data="x")
    code, details = rpc_error(lambda: stub.PublishToPubSub(request, metadata=metadata, timeout=10))
    assert code == grpc.StatusCode.UNAUTHENTICATED, details
    code, details = rpc_error(lambda: _first_delivery(stub, subject, unique("anon"), metadata=metadata))
    assert code == grpc.StatusCode.UNAUTHENTICATED, details


def test_any_authenticated_user_may_subscribe(
    stub: pb_grpc.EventStoreStub, subscribe: Callable[..., Subscriber]
) -> None:
    subject = f"{unique('reader')}.x"
    reader = subscribe(subject, unique("reader"), auth=READER)
    probes = establish(stub, subject, [reader])
    published = publish_many(stub, subject, 3)
    reader.wait_for_ids(published)
    assert sorted(non_probe(reader.ids(), probes)) == sorted(published)



# --- No message lost when a consumer goes (issue #12, defect 2) ------------------------------------


def consumer_status(server: ServerThread, subject: str, name: str) -> ConsumerStatus | None:
    """The JetStream consumer of (name, subject) as the dashboard sees it."""
    assert server.app.nats_client is not None
    pubsub = PubSub(server.app.nats_client, retention=3600, ack_wait=ACK_WAIT)
    found = [c for c in server.call(pubsub.consumers()) if c.subject == subject and c.consumer_name == name]
    return found[0] if found else None


def waiting_pulls(server: ServerThread, subject: str, name: str) -> int:
    assert server.app.nats_client is not None
    js = server.app.nats_client.jetstream()
    info = server.call(js.consumer_info(STREAM, durable_name(name, subject)))
    return int(info.num_waiting or 0)


def settled(server: ServerThread, subject: str, name: str) -> bool:
    """Nothing is waiting for an acknowledgement or for delivery."""
    status = consumer_status(server, subject, name)
    return status is not None and status.pending == 0 and status.ack_pending == 0


def test_consumer_that_reads_two_of_eight_and_cancels_loses_nothing(
    pubsub_server: ServerThread, stub: pb_grpc.EventStoreStub, subscribe: Callable[..., Subscriber]
) -> None:
    """The issue's scenario: a consumer reads 2 of 8 messages and disconnects. The other 6 must
    come to the next consumer of the name at once (not after the ack wait), and the pending
    figures must say they are waiting. The first 2 may come again (documented duplicates)."""
    subject = f"{unique('two-of-eight')}.x"
    name = unique("two-of-eight")
    creator = subscribe(subject, name)
    probes = establish(stub, subject, [creator])
    # The probes are acknowledged once the stream has kept them for the ack delay.
    wait_for(lambda: settled(pubsub_server, subject, name), DELIVERY_TIMEOUT, "the probes acknowledged")
    creator.close()
    # Its last pull request lingers in JetStream until it expires; a message it took would come
    # back only after the ack wait (not lost, but not what this test is about).
    wait_for(lambda: waiting_pulls(pubsub_server, subject, name) == 0, DELIVERY_TIMEOUT, "no pull request left")

    published = publish_many(stub, subject, 8)
    reader = subscribe(subject, name, stop_after=2)
    wait_for(reader.stopped.is_set, DELIVERY_TIMEOUT, "the reader to take 2 messages and cancel")
    assert reader.ids() == published[:2], (reader.ids(), published, probes)

    def six_waiting() -> bool:
        status = consumer_status(pubsub_server, subject, name)
        return status is not None and status.pending + status.ack_pending >= 6

    wait_for(six_waiting, DELIVERY_TIMEOUT, "the dashboard's figures to show the 6 unread messages")

    # Faster than the ack wait: the cancelled stream gave back what it had not confirmed.
    started = time.monotonic()
    second = subscribe(subject, name)
    second.wait_for_ids(published[2:], timeout=ACK_WAIT - 1)
    assert time.monotonic() - started < ACK_WAIT
    assert set(second.ids()) <= set(published) | probes
    wait_for(lambda: settled(pubsub_server, subject, name), DELIVERY_TIMEOUT, "everything acknowledged")


def test_messages_of_a_stream_the_server_ends_are_redelivered(start_server: Callable[..., ServerThread]) -> None:
    """A server that stops ends its streams: what it had sent to a client that did not read it yet
    is not lost. (The server gives it back as it stops, but the embedded NATS stops too, and
    JetStream restores such messages as pending: they come back after the ack wait.)"""
    subject = f"{unique('server-ends')}.x"
    name = unique("server-ends")
    before = start_server(pubsub_ack_wait=ACK_WAIT)
    with before.stub() as first_stub:
        first = Subscriber(before, subject, name, pause_after=1)  # reads one, then stops reading
        try:
            establish(first_stub, subject, [first])
            published = publish_many(first_stub, subject, 5)
            # The server has handed them to gRPC: all five are out of JetStream's hands.
            wait_for(lambda: (s := consumer_status(before, subject, name)) is not None and s.pending == 0,
                     DELIVERY_TIMEOUT, "the messages handed to the stalled client's stream")
            before.stop()
        finally:
            first.close()
    assert not set(first.ids()) & set(published)

    after = start_server(pubsub_ack_wait=ACK_WAIT)
    second = Subscriber(after, subject, name)
    try:
        second.wait_for_ids(published, timeout=REDELIVERY_TIMEOUT)
    finally:
        second.close()


class FreezingProxy:
    """A TCP proxy to ``target`` that can freeze: it then forwards nothing either way and keeps
    every connection open, as when a client's host vanishes (powered off, cable pulled) and no
    FIN or RST ever reaches the server."""

    def __init__(self, target: str) -> None:
        self._host, port = target.rsplit(":", 1)
        self._port = int(port)
        self._loop = LoopThread("freezing-proxy")
        self._thawed = threading.Event()
        self._thawed.set()
        self._server: asyncio.Server | None = None
        self.address = self._loop.call(self._start())

    async def _start(self) -> str:
        self._server = await asyncio.start_server(self._connect, "127.0.0.1", 0)
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _connect(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(self._host, self._port)
        await asyncio.gather(self._pump(client_reader, server_writer), self._pump(server_reader, client_writer),
                             return_exceptions=True)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if not self._thawed.is_set():
                await asyncio.Future()  # frozen for good: these bytes are never forwarded
            writer.write(data)
            await writer.drain()
        writer.close()

    def freeze(self) -> None:
        self._thawed.clear()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._loop.close()


def test_messages_sent_to_a_client_whose_host_vanished_are_given_back(
    start_server: Callable[..., ServerThread],
) -> None:
    """A client whose host vanishes never closes its connection: only the server's keepalive
    pings tell it is gone. That must happen before the ack delay would acknowledge what the server
    wrote into the dead connection, and the stream then gives those messages back: the next
    consumer of the name gets them at once, well before the ack wait (30 s) would redeliver them.
    (Without keepalives the dead stream acknowledged them after its ack delay: lost.)"""
    server = start_server()  # the default ack wait, 30 s: the ack delay is 10 s
    subject = f"{unique('vanished')}.x"
    name = unique("vanished")
    proxy = FreezingProxy(server.address)
    try:
        with server.stub() as stub:
            doomed = Subscriber(server, subject, name, address=proxy.address)
            try:
                establish(stub, subject, [doomed])
                proxy.freeze()
                published = publish_many(stub, subject, 3)
                # The doomed stream pulls each message and writes it into the frozen connection.
                wait_for(lambda: (s := consumer_status(server, subject, name)) is not None and s.pending == 0,
                         DELIVERY_TIMEOUT, "the messages handed to the vanished client's stream")
                started = time.monotonic()
                heir = Subscriber(server, subject, name)
                try:
                    heir.wait_for_ids(published, timeout=25)
                    assert time.monotonic() - started < 25
                finally:
                    heir.close()
            finally:
                doomed.close()
        assert not set(doomed.ids()) & set(published)
    finally:
        proxy.close()


# --- Payload size and ids (issue #12, defect 6) ---------------------------------------------------


def test_large_non_ascii_data_within_the_limit_is_delivered(
    stub: pb_grpc.EventStoreStub, subscribe: Callable[..., Subscriber]
) -> None:
    """700 KB of 'é' (2 bytes each in UTF-8) is within the 1 MiB limit: it must not be inflated
    (JSON's ASCII escaping made each one 6 bytes) past NATS's max payload."""
    subject = f"{unique('big')}.x"
    subscriber = subscribe(subject, unique("big"))
    establish(stub, subject, [subscriber])
    accented = "é" * 350_000
    quoted = '"\\' * 300_000  # 600 KB that JSON would double
    controls = "\x01" * 150_000  # 150 KB that JSON would make six times larger
    ids = [str(uuid.uuid4()) for _ in range(3)]
    for message_id, data in zip(ids, (accented, quoted, controls), strict=True):
        publish(stub, subject, id=message_id, data=data, metadata="ü" * 1000)
    subscriber.wait_for_ids(ids)
    by_id = {m.id: m for m in subscriber.messages}
    assert [by_id[i].data for i in ids] == [accented, quoted, controls]
    assert all(by_id[i].metadata == "ü" * 1000 for i in ids)


def test_a_message_too_large_for_nats_is_invalid_argument_naming_data(
    pubsub_server: ServerThread, stub: pb_grpc.EventStoreStub, subscribe: Callable[..., Subscriber]
) -> None:
    subject = f"{unique('too-big')}.x"
    subscriber = subscribe(subject, unique("too-big"))
    probes = establish(stub, subject, [subscriber])
    limit = pubsub_server.settings.nats_max_payload
    # The last: data and metadata fit, but not with the id, envelope and headers.
    for data, metadata in (("x" * limit, ""), ("é" * (limit // 2), ""), ("x" * (limit // 2), "y" * (limit // 2)),
                           ("x" * (limit - 20), "")):
        code, details = rpc_error(lambda d=data, m=metadata: publish(stub, subject, id=str(uuid.uuid4()), data=d,
                                                                     metadata=m))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert details.startswith("data:"), details
        assert len(details) < 300
    # Just below the limit (the envelope and headers take less than 300 bytes) is fine, and the
    # NATS connection survived the refused ones.
    fits = str(uuid.uuid4())
    publish(stub, subject, id=fits, data="x" * (limit - 300 - len(fits)))
    # The check counts the exact bytes NATS gets: the largest message it allows passes NATS's own
    # check (which would close the connection over one byte more), and one byte more is refused.
    exact = str(uuid.uuid4())
    largest = limit - wire_size(PubSubMessage(exact, subject, "", "é"))
    publish(stub, subject, id=exact, data="y" * largest, metadata="é")
    code, details = rpc_error(lambda: publish(stub, subject, id=str(uuid.uuid4()), data="y" * (largest + 1),
                                              metadata="é"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    subscriber.wait_for_ids([fits, exact])
    assert non_probe(subscriber.ids(), probes) == [fits, exact]
    assert [len(m.data) for m in subscriber.messages if m.id == exact] == [largest]


def test_ids_that_differ_only_in_whitespace_stay_distinct(
    stub: pb_grpc.EventStoreStub, subscribe: Callable[..., Subscriber]
) -> None:
    """The Nats-Msg-Id header used to be the raw id, trimmed and with line breaks replaced: `x`
    and ` x `, or `a\nb` and `a b`, collided and one message was dropped as a duplicate."""
    subject = f"{unique('ids')}.x"
    subscriber = subscribe(subject, unique("ids"))
    probes = establish(stub, subject, [subscriber])
    base = unique("id")
    ids = [base, f" {base} ", f"{base} ", f"\t{base}", f"{base}\n", f"a\n{base}", f"a {base}", f"a\r\n{base}",
           f"a\r{base}", f"{base}\u0000", f"{base}é"]
    for n, message_id in enumerate(ids):
        publish(stub, subject, id=message_id, data=str(n))
    last = str(uuid.uuid4())
    publish(stub, subject, id=last, data="last")
    subscriber.wait_for_ids([last])
    got = non_probe(subscriber.ids(), probes)
    assert got == [*ids, last]
    # The same id again is still recognised as a retry within the duplicate window.
    publish(stub, subject, id=ids[1], data="again")
    after = str(uuid.uuid4())
    publish(stub, subject, id=after, data="after")
    subscriber.wait_for_ids([after])
    assert non_probe(subscriber.ids(), probes) == [*ids, last, after]


def test_messages_stored_in_the_old_json_envelope_are_still_read(
    pubsub_server: ServerThread, stub: pb_grpc.EventStoreStub, subscribe: Callable[..., Subscriber]
) -> None:
    subject = f"{unique('legacy')}.x"
    subscriber = subscribe(subject, unique("legacy"))
    probes = establish(stub, subject, [subscriber])
    assert pubsub_server.app.nats_client is not None
    js = pubsub_server.app.nats_client.jetstream()
    body = json.dumps({"id": "old-1", "data": "héllo \"old\"", "metadata": '{"v": 1}'}).encode()
    pubsub_server.call(js.publish(PREFIX + subject, body, stream=STREAM, headers={"Nats-Msg-Id": "old-1"}))
    subscriber.wait_for_ids(["old-1"])
    [message] = [m for m in subscriber.messages if m.id not in probes]
    assert (message.id, message.subject, message.data, message.metadata) == (
        "old-1", subject, 'héllo "old"', '{"v": 1}')


# --- ConsumePubSub: explicitly acknowledged consumption (issue #12, defect 2) --------------------


class Consumer:
    """A ConsumePubSub call on its own channel: a thread reads the deliveries (acking each one at
    once with ``auto_ack``); ``ack``/``nack`` send tokens; ``finish`` closes the client's side."""

    def __init__(self, server: ServerThread, subject: str, consumer_name: str, *, max_in_flight: int = 0,
                 auto_ack: bool = False, auth: tuple[str, str] | None = ADMIN,
                 first: pb.ConsumeRequest | None = None) -> None:
        self.subject = subject
        self.consumer_name = consumer_name
        self._auto_ack = auto_ack
        self._requests: queue.Queue[pb.ConsumeRequest | None] = queue.Queue()
        self._requests.put(first or pb.ConsumeRequest(subject=subject, consumer_name=consumer_name,
                                                      max_in_flight=max_in_flight))
        self._channel = grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS)
        self._call = pb_grpc.EventStoreStub(self._channel).ConsumePubSub(
            self._send(), metadata=auth_metadata(*auth) if auth else None, timeout=120)
        self._lock = threading.Lock()
        self._items: list[pb.ConsumeResponse] = []
        self._closing = False
        self.error: grpc.RpcError | None = None
        self.ended = threading.Event()
        self._thread = threading.Thread(target=self._read, name=f"consumer-{consumer_name}", daemon=True)
        self._thread.start()

    def _send(self) -> Iterator[pb.ConsumeRequest]:
        while (request := self._requests.get()) is not None:
            yield request

    def _read(self) -> None:
        try:
            for response in self._call:
                with self._lock:
                    self._items.append(response)
                if self._auto_ack:
                    self.ack(response.token)
        except grpc.RpcError as exc:
            if not self._closing:
                self.error = exc
        finally:
            self.ended.set()

    @property
    def items(self) -> list[pb.ConsumeResponse]:
        with self._lock:
            return list(self._items)

    def ids(self) -> list[str]:
        return [r.message.id for r in self.items]

    def tokens(self, ids: Iterable[str]) -> list[int]:
        wanted = set(ids)
        return [r.token for r in self.items if r.message.id in wanted]

    def check(self) -> None:
        if self.error is not None:
            raise AssertionError(f"{self.consumer_name} failed: {self.error.code()} {self.error.details()}")

    def wait_for_ids(self, expected: Iterable[str], timeout: float = DELIVERY_TIMEOUT) -> None:
        wanted = set(expected)

        def arrived() -> bool:
            self.check()
            return wanted <= set(self.ids())

        wait_for(arrived, timeout, f"{len(wanted - set(self.ids()))} of {len(wanted)} messages on {self.consumer_name}")

    def ack(self, *tokens: int) -> None:
        self._requests.put(pb.ConsumeRequest(ack=tokens))

    def nack(self, *tokens: int) -> None:
        self._requests.put(pb.ConsumeRequest(nack=tokens))

    def send(self, request: pb.ConsumeRequest) -> None:
        self._requests.put(request)

    def finish(self) -> None:
        """Close the client's side: the server settles what was sent before and ends the call."""
        self._requests.put(None)

    def close(self) -> None:
        """Cancel the call (the client goes away)."""
        self._closing = True
        self._call.cancel()
        self._requests.put(None)
        self._thread.join(timeout=10)
        assert not self._thread.is_alive(), f"the reader of {self.consumer_name} did not end"
        self._channel.close()


@pytest.fixture
def consume(pubsub_server: ServerThread) -> Iterator[Callable[..., Consumer]]:
    """Start ConsumePubSub calls; all are cancelled at the end of the test."""
    started: list[Consumer] = []

    def start(subject: str, consumer_name: str, **kwargs: Any) -> Consumer:
        consumer = Consumer(pubsub_server, subject, consumer_name, **kwargs)
        started.append(consumer)
        return consumer

    yield start
    for consumer in started:
        consumer.close()


def ack_pending(server: ServerThread, subject: str, name: str) -> int | None:
    status = consumer_status(server, subject, name)
    return None if status is None else status.pending + status.ack_pending


@pytest.mark.parametrize("ending", ["cancel", "finish"])
def test_acked_consumer_gets_back_exactly_what_it_did_not_ack(
    pubsub_server: ServerThread, stub: pb_grpc.EventStoreStub, consume: Callable[..., Consumer], ending: str
) -> None:
    """Read 10, ack 4, go (cancelling, or closing its side after sending the acks): the next
    consumer of the name gets exactly the other 6, at once."""
    subject = f"{unique('acked')}.x"
    name = unique("acked")
    first = consume(subject, name)
    probes = establish(stub, subject, [first])
    first.ack(*first.tokens(probes))
    published = publish_many(stub, subject, 10)
    first.wait_for_ids(published)
    assert [r.delivery_count for r in first.items if r.message.id in published] == [1] * 10
    acked = published[:2] + published[5:7]
    first.ack(*first.tokens(acked))
    if ending == "cancel":
        # Acks are confirmed by JetStream before the next request is read: wait for that, then go.
        wait_for(lambda: ack_pending(pubsub_server, subject, name) == 6, DELIVERY_TIMEOUT, "the 4 acks recorded")
        first.close()
    else:
        first.finish()
        wait_for(first.ended.is_set, DELIVERY_TIMEOUT, "the call to end after the client closed its side")
        first.check()  # ended with OK
    wait_for(lambda: waiting_pulls(pubsub_server, subject, name) == 0, DELIVERY_TIMEOUT, "no pull request left")

    started = time.monotonic()
    second = consume(subject, name)
    unacked = [i for i in published if i not in acked]
    second.wait_for_ids(unacked, timeout=ACK_WAIT - 1)
    assert time.monotonic() - started < ACK_WAIT
    second.ack(*second.tokens(unacked))
    marker = str(uuid.uuid4())
    publish(stub, subject, id=marker, data="marker")
    second.wait_for_ids([marker])
    assert sorted(second.ids()) == sorted([*unacked, marker])
    assert all(r.delivery_count >= 2 for r in second.items if r.message.id in unacked)
    assert all(r.message.data == f'{{"n": {published.index(r.message.id)}}}' for r in second.items
               if r.message.id in unacked)


def test_acked_consumer_nack_redelivers_and_unknown_tokens_are_ignored(
    pubsub_server: ServerThread, stub: pb_grpc.EventStoreStub, consume: Callable[..., Consumer]
) -> None:
    subject = f"{unique('nack')}.x"
    name = unique("nack")
    consumer = consume(subject, name)
    probes = establish(stub, subject, [consumer])
    consumer.ack(*consumer.tokens(probes))
    [message_id] = publish_many(stub, subject, 1)
    consumer.wait_for_ids([message_id])
    [token] = consumer.tokens([message_id])
    consumer.ack(token + 1_000_000, *consumer.tokens(probes))  # never delivered here; acked already
    consumer.nack(token)
    wait_for(lambda: consumer.ids().count(message_id) == 2, DELIVERY_TIMEOUT, "the nacked message again")
    again = [r for r in consumer.items if r.message.id == message_id]
    assert [r.token for r in again] == [token, token]
    assert [r.delivery_count for r in again] == [1, 2]
    consumer.ack(token)
    wait_for(lambda: settled(pubsub_server, subject, name), DELIVERY_TIMEOUT, "everything acknowledged")
    consumer.check()


def test_acked_consumer_keeps_at_most_max_in_flight_unacked(
    pubsub_server: ServerThread, stub: pb_grpc.EventStoreStub, consume: Callable[..., Consumer]
) -> None:
    subject = f"{unique('window')}.x"
    name = unique("window")
    consumer = consume(subject, name, max_in_flight=3)
    probes = establish(stub, subject, [consumer])
    consumer.ack(*consumer.tokens(probes))
    wait_for(lambda: settled(pubsub_server, subject, name), DELIVERY_TIMEOUT, "the probes acknowledged")
    published = publish_many(stub, subject, 10)
    consumer.wait_for_ids(published[:3])
    status = consumer_status(pubsub_server, subject, name)
    assert status is not None and (status.pending, status.ack_pending) == (7, 3)
    assert non_probe(consumer.ids(), probes) == published[:3]
    consumer.ack(*consumer.tokens(published[:2]))
    consumer.wait_for_ids(published[:5])
    status = consumer_status(pubsub_server, subject, name)
    assert status is not None and (status.pending, status.ack_pending) == (5, 3)
    assert non_probe(consumer.ids(), probes) == published[:5]


def test_acked_competing_consumers_split_the_messages(
    stub: pb_grpc.EventStoreStub, consume: Callable[..., Consumer]
) -> None:
    subject = f"{unique('acked-compete')}.jobs"
    name = unique("acked-workers")
    workers = [consume(subject, name, max_in_flight=2, auto_ack=True) for _ in range(3)]
    probes = establish(stub, subject, workers)
    published = publish_many(stub, subject, 90)

    def union() -> set[str]:
        for worker in workers:
            worker.check()
        return set().union(*(w.ids() for w in workers))

    wait_for(lambda: set(published) <= union(), DELIVERY_TIMEOUT, "all 90 messages across the workers")
    per_worker = [non_probe(w.ids(), probes) for w in workers]
    assert sorted(i for ids in per_worker for i in ids) == sorted(published), "each to exactly one worker"
    assert all(per_worker), f"every worker should get some: {[len(ids) for ids in per_worker]}"


@pytest.mark.parametrize(
    ("first", "later", "field"),
    [
        (pb.ConsumeRequest(subject="a..b", consumer_name="x"), None, "subject"),
        (pb.ConsumeRequest(subject="a.b", consumer_name="x y"), None, "consumer_name"),
        (pb.ConsumeRequest(subject="a.b", consumer_name="x", max_in_flight=10_001), None, "max_in_flight"),
        (pb.ConsumeRequest(subject="a.b", consumer_name="x", ack=[1]), None, "ack"),
        (None, pb.ConsumeRequest(subject="a.b"), "subject"),
        (None, pb.ConsumeRequest(max_in_flight=5), "max_in_flight"),
        (None, pb.ConsumeRequest(ack=[0]), "ack"),
        (None, pb.ConsumeRequest(nack=[3, 0]), "nack"),
    ],
    ids=["bad-subject", "bad-name", "too-many-in-flight", "ack-when-opening", "subject-later",
         "max-in-flight-later", "zero-ack", "zero-nack"],
)
def test_acked_consumer_rejects_bad_requests(
    pubsub_server: ServerThread, first: pb.ConsumeRequest | None, later: pb.ConsumeRequest | None, field: str
) -> None:
    subject = f"{unique('bad')}.x"
    consumer = Consumer(pubsub_server, subject, unique("bad"), first=first)
    try:
        if later is not None:
            consumer.send(later)
        wait_for(consumer.ended.is_set, DELIVERY_TIMEOUT, "the call to be refused")
        assert consumer.error is not None
        assert consumer.error.code() == grpc.StatusCode.INVALID_ARGUMENT, consumer.error.details()
        assert (consumer.error.details() or "").startswith(f"{field}:"), consumer.error.details()
    finally:
        consumer.close()


@pytest.mark.parametrize("auth", [None, ("no-such-user", "whatever-1")], ids=["none", "unknown-user"])
def test_acked_consumer_needs_credentials(pubsub_server: ServerThread, auth: tuple[str, str] | None) -> None:
    consumer = Consumer(pubsub_server, f"{unique('anon')}.x", unique("anon"), auth=auth)
    try:
        wait_for(consumer.ended.is_set, DELIVERY_TIMEOUT, "the call to be refused")
        assert consumer.error is not None and consumer.error.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        consumer.close()


def test_acked_consumer_through_grpcurl_reflection(pubsub_server: ServerThread) -> None:
    """The new RPC is visible through reflection, with its messages described."""
    result = grpcurl(pubsub_server.address, "describe", "eventstore.EventStore")
    assert result.returncode == 0, result.stderr
    assert "rpc ConsumePubSub ( stream .eventstore.ConsumeRequest ) returns ( stream .eventstore.ConsumeResponse )" \
        in result.stdout, result.stdout


def test_a_server_stream_holds_at_most_max_unacked_messages_and_gives_them_back(
    pubsub_server: ServerThread,
) -> None:
    """The messaging layer under SubscribeToPubSub, with a bound of 3 and an ack delay longer than
    the test: after 3 messages handed on (none acknowledged yet) it pulls no more; when the stream
    ends, the 3 come back at once (the ack wait here is a minute)."""
    assert pubsub_server.app.nats_client is not None
    client = pubsub_server.app.nats_client
    subject = f"{unique('bound')}.x"
    name = unique("bound")
    bounded = PubSub(client, retention=3600, ack_wait=60.0, ack_delay=30.0, max_unacked=3)
    ids = [str(uuid.uuid4()) for _ in range(5)]

    async def scenario() -> tuple[list[str], list[str]]:
        first = bounded.subscribe(subject, name)
        opening = asyncio.ensure_future(anext(first))
        js = client.jetstream()
        deadline = time.monotonic() + DELIVERY_TIMEOUT
        while True:  # the consumer exists once the subscription has pulled
            try:
                await js.consumer_info(STREAM, durable_name(name, subject))
                break
            except nats.js.errors.NotFoundError:
                assert time.monotonic() < deadline, "the consumer was not created"
                await asyncio.sleep(0.02)
        for message_id in ids:
            await bounded.publish(PubSubMessage(message_id, subject, "x", ""))
        handed = [(await asyncio.wait_for(opening, DELIVERY_TIMEOUT)).id]
        handed += [(await asyncio.wait_for(anext(first), DELIVERY_TIMEOUT)).id for _ in range(2)]
        fourth = asyncio.ensure_future(anext(first))
        done, _ = await asyncio.wait([fourth], timeout=1.5)  # asserting that nothing happens
        assert not done, "a fourth message was handed on while 3 were unacknowledged"
        info = await js.consumer_info(STREAM, durable_name(name, subject))
        assert (info.num_pending, info.num_ack_pending) == (2, 3), info
        fourth.cancel()  # the stream ends
        await asyncio.wait([fourth])
        await first.aclose()

        second = PubSub(client, retention=3600, ack_wait=60.0).subscribe(subject, name)
        again = [(await asyncio.wait_for(anext(second), DELIVERY_TIMEOUT)).id for _ in range(5)]
        await second.aclose()
        return handed, again

    handed, again = pubsub_server.call(scenario(), timeout=90)
    assert handed == ids[:3]
    assert sorted(again) == sorted(ids)


def test_what_a_stalled_client_has_not_read_is_not_acknowledged(
    stub: pb_grpc.EventStoreStub, subscribe: Callable[..., Subscriber]
) -> None:
    """A client that stops reading (its HTTP/2 window full, BDP probing off so it stays small) keeps
    some messages unread in its buffers. The server must not acknowledge them after the ack delay
    while its writes are blocked: when the client then goes, every message comes back."""
    subject = f"{unique('stalled')}.x"
    name = unique("stalled")
    first = subscribe(subject, name, pause_after=1, options=[("grpc.http2.bdp_probe", 0)])
    probes = establish(stub, subject, [first])
    published = publish_many(stub, subject, 12, data="s" * 30_000)  # ~360 kB: more than the window
    # Longer than the ack delay (at most half the ack wait): time for a wrong acknowledgement to
    # happen. Asserting that something does not happen needs the time to pass.
    time.sleep(ACK_WAIT / 2 + 1.5)
    assert len(first.messages) == 1
    first.close()

    second = subscribe(subject, name)
    second.wait_for_ids(published, timeout=REDELIVERY_TIMEOUT)
    assert set(non_probe(second.ids(), probes)) == set(published)

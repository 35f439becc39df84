"""PublishToPubSub / SubscribeToPubSub on a real server: the brief's examples, the round trip of a
message, validation of subjects and consumer names, auth, payload size and ids (docs/contract.md §6
and §7). Delivery semantics are in tests/test_pubsub_delivery.py, ConsumePubSub in
tests/test_pubsub_acked.py; the shared fixtures and helpers in tests/pubsub_support.py.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from orisun.messaging.pubsub import PREFIX, STREAM, PubSubMessage, wire_size
from tests import pubsub_support
from tests.brief import BRIEF_PUBLISH, BRIEF_SUBSCRIBE_TO_PUBSUB
from tests.pubsub_support import (
    DELIVERY_TIMEOUT,
    OPERATOR,
    READER,
    Subscriber,
    establish,
    non_probe,
    publish,
    publish_many,
    unique,
)
from tests.support import ADMIN, GrpcurlStream, ServerThread, auth_metadata, grpcurl, wait_for

# Fixtures of tests/pubsub_support.py, bound to names of this module so that pytest finds them here.
pubsub_server = pubsub_support.pubsub_server
stub = pubsub_support.stub
subscribe = pubsub_support.subscribe


pytestmark = pytest.mark.timeout(60)


def rpc_error(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value.code(), raised.value.details() or ""


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


"""ConsumePubSub on a real server: explicitly acknowledged consumption (issue #12, defect 2) -- what is
not acked comes back, nacks, the in-flight limit, competing consumers, request validation and auth.
Fixtures and helpers: tests/pubsub_support.py.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc
import pytest

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from tests import pubsub_support
from tests.pubsub_support import (
    ACK_WAIT,
    DELIVERY_TIMEOUT,
    consumer_status,
    establish,
    non_probe,
    publish,
    publish_many,
    settled,
    unique,
    waiting_pulls,
)
from tests.support import ADMIN, CHANNEL_OPTIONS, ServerThread, auth_metadata, grpcurl, wait_for

# Fixtures of tests/pubsub_support.py, bound to names of this module so that pytest finds them here.
pubsub_server = pubsub_support.pubsub_server
stub = pubsub_support.stub


pytestmark = pytest.mark.timeout(60)


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


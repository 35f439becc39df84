"""Fixtures and helpers shared by the pub/sub tests (tests/test_pubsub*.py; docs/contract.md §6 and §7).

The tests are written from the contract and the implementer's stated decisions, not from the
implementation:

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

The test files bind the fixtures here (`pubsub_server`, `stub`, `subscribe`) to module names of
their own, so that pytest finds them there (importing a fixture that a test takes as a parameter is
a lint error, F811).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from orisun.messaging.pubsub import STREAM, ConsumerStatus, PubSub, durable_name
from orisun.model import Role
from orisun.runtime.postgres import EmbeddedPostgres
from tests.support import ADMIN, CHANNEL_OPTIONS, ServerThread, StreamReader, auth_metadata, running_server

READER = ("pubsub-reader", "reader-password-1")  # a user without roles
OPERATOR = ("pubsub-operator", "operator-password-1")  # role OPERATIONS

# A short ack wait (ORISUN_PUBSUB_ACK_WAIT) bounds how long a redelivery can take, so that a test
# racing a disconnect (see test_reconnecting_consumer_gets_what_it_missed) stays fast either way.
ACK_WAIT = 5.0
DELIVERY_TIMEOUT = 20.0  # for messages that should arrive promptly


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


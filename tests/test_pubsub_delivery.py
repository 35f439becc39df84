"""SubscribeToPubSub delivery semantics on a real server (docs/contract.md §7): competing and
independent consumers, where a new consumer starts, redelivery to reconnecting, slow, vanished and
restarted consumers, and that no message is lost when a consumer or its stream goes (issue #12,
defect 2). Fixtures and helpers: tests/pubsub_support.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable

import nats.js.errors
import pytest

from orisun._proto import eventstore_pb2_grpc as pb_grpc
from orisun.messaging.pubsub import STREAM, PubSub, PubSubMessage, durable_name
from tests import pubsub_support
from tests.pubsub_support import (
    ACK_WAIT,
    DELIVERY_TIMEOUT,
    Subscriber,
    consumer_status,
    establish,
    non_probe,
    publish_many,
    settled,
    unique,
    waiting_pulls,
)
from tests.support import LoopThread, ServerThread, wait_for

# Fixtures of tests/pubsub_support.py, bound to names of this module so that pytest finds them here.
pubsub_server = pubsub_support.pubsub_server
stub = pubsub_support.stub
subscribe = pubsub_support.subscribe


pytestmark = pytest.mark.timeout(60)


REDELIVERY_TIMEOUT = ACK_WAIT + DELIVERY_TIMEOUT


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


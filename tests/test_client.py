"""The synchronous Python client (`orisun.client.Client`) against real servers: every method, the
typed errors, retries after UNAVAILABLE through a real TCP proxy that loses an answer, paging,
subscriptions resuming across a real server restart while a writer keeps writing, pub/sub with
acks, TLS and mutual TLS."""

from __future__ import annotations

import shutil
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trustme

from orisun.client import (
    ANY,
    NO_STREAM,
    AlreadyExists,
    BoundaryNotFound,
    Client,
    Direction,
    EventData,
    ExpectedVersion,
    InvalidArgument,
    NotFound,
    OrisunError,
    PermissionDenied,
    Position,
    RetryPolicy,
    Unauthenticated,
    Unavailable,
    WriteResult,
    WrongExpectedVersion,
    query,
)
from orisun.model import Role
from orisun.runtime.postgres import EmbeddedPostgres
from orisun.tls import TlsFiles
from tests.support import (
    ADMIN,
    CHANNEL_OPTIONS,
    ServerThread,
    free_port,
    fresh_database,
    running_server,
    server_settings,
    shared_tmpdir,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)

BOUNDARIES = {"orisun_admin": "orisun_admin", "orders": "orders", "payments": "payments"}


@pytest.fixture(scope="module")
def orisun(postgres: EmbeddedPostgres) -> Iterator[ServerThread]:
    with running_server(postgres.conninfo, "test_client", boundaries=BOUNDARIES) as server:
        yield server


def connect(address: str, **overrides: Any) -> Client:
    settings: dict[str, Any] = {"username": ADMIN[0], "password": ADMIN[1], "boundary": "orders",
                                "options": CHANNEL_OPTIONS}
    return Client(address, **{**settings, **overrides})


@pytest.fixture
def client(orisun: ServerThread) -> Iterator[Client]:
    with connect(orisun.address) as client:
        yield client


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class Collector(threading.Thread):
    """Iterates ``items`` (a subscription, a consumer) in a thread into a list, as an application's
    consumer loop would; ``on_item`` may act on each item (ack it)."""

    def __init__(self, items: Any, on_item: Callable[[Any], None] | None = None) -> None:
        super().__init__(daemon=True)
        self.source = items
        self.on_item = on_item
        self.items: list[Any] = []
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            for item in self.source:
                self.items.append(item)
                if self.on_item is not None:
                    self.on_item(item)
        except BaseException as exc:
            self.error = exc

    def wait_count(self, count: int, timeout: float = 30) -> list[Any]:
        def enough() -> bool:
            if self.error is not None:
                raise AssertionError(f"the iteration failed: {self.error!r}")
            return len(self.items) >= count

        wait_for(enough, timeout, f"{count} items (have {len(self.items)})")
        return list(self.items)


# --- save_events and errors -----------------------------------------------------------------------


def test_save_and_read_back_every_field(client: Client) -> None:
    stream = unique("order")
    before = datetime.now(UTC) - timedelta(seconds=5)
    events = [
        EventData("OrderPlaced", {"total": 42, "currency": "€"}, metadata={"source": "web"},
                  tags={"tenant": "t1", "region": "eu"}),
        EventData("OrderShipped", '{"carrier": "dhl"}', tags=[("tenant", "t1"), ("tenant", "t2")]),
    ]
    result = client.save_events(stream, events, expected_version=NO_STREAM)
    assert isinstance(result, WriteResult)
    assert result.new_stream_version == 1
    read = list(client.get_events(stream=stream))
    assert [e.event_id for e in read] == [e.event_id for e in events]
    first, second = read
    assert first.event_type == "OrderPlaced" and first.json() == {"total": 42, "currency": "€"}
    assert first.metadata_json() == {"source": "web"} and second.metadata == "" and second.metadata_json() is None
    assert first.tags == (("tenant", "t1"), ("region", "eu")) and first.tag_dict == {"tenant": "t1", "region": "eu"}
    assert second.data == '{"carrier": "dhl"}'  # text is sent as it is, byte for byte
    assert second.tags == (("tenant", "t1"), ("tenant", "t2"))
    assert (first.stream, first.version, second.version) == (stream, 0, 1)
    assert second.position == result.log_position and first.position < second.position
    assert first.created.tzinfo is not None and before <= first.created <= datetime.now(UTC) + timedelta(seconds=5)


def test_expected_version_constants(client: Client) -> None:
    assert (ANY, NO_STREAM) == (ExpectedVersion.ANY, ExpectedVersion.NO_STREAM) == (-2, -1)
    stream = unique("account")
    assert client.save_events(stream, [EventData("Opened", {})]).new_stream_version == 0  # ANY by default
    assert client.save_events(stream, [EventData("Credited", {})], expected_version=0).new_stream_version == 1
    assert client.save_events(stream, [EventData("Credited", {})], expected_version=ANY).new_stream_version == 2


def test_a_conflict_raises_wrong_expected_version_with_expected_and_actual(client: Client) -> None:
    stream = unique("account")
    client.save_events(stream, [EventData("Opened", {}), EventData("Credited", {})], expected_version=NO_STREAM)
    with pytest.raises(WrongExpectedVersion) as raised:
        client.save_events(stream, [EventData("Debited", {})], expected_version=0)
    assert (raised.value.expected, raised.value.actual) == (0, 1)
    assert isinstance(raised.value, AlreadyExists) and isinstance(raised.value, OrisunError)
    assert raised.value.code is not None and raised.value.code.name == "ALREADY_EXISTS"
    with pytest.raises(WrongExpectedVersion) as raised:
        client.save_events(stream, [EventData("Opened", {})], expected_version=NO_STREAM)
    assert (raised.value.expected, raised.value.actual) == (-1, 1)
    # With a subset query, "actual" is the version of the stream's last matching event.
    with pytest.raises(WrongExpectedVersion) as raised:
        client.save_events(stream, [EventData("Debited", {})], expected_version=NO_STREAM,
                           subset_query={"event_type": "Opened"})
    assert (raised.value.expected, raised.value.actual) == (-1, 0)
    result = client.save_events(stream, [EventData("Debited", {})], expected_version=0,
                                subset_query=query({"event_type": "Opened"}))
    assert result.new_stream_version == 2


def test_errors_are_typed_and_keep_code_and_message(client: Client, orisun: ServerThread) -> None:
    with pytest.raises(BoundaryNotFound) as not_found:
        client.save_events("s", [EventData("E", {})], boundary="nowhere")
    assert isinstance(not_found.value, NotFound) and "nowhere" in not_found.value.message
    with pytest.raises(InvalidArgument) as invalid:
        client.save_events("s", [EventData("E", "not json")])
    assert "data" in invalid.value.message and invalid.value.code is not None
    assert "INVALID_ARGUMENT" in str(invalid.value)
    reused = EventData("E", {})
    client.save_events(unique("a"), [reused])
    with pytest.raises(AlreadyExists) as duplicate:
        client.save_events(unique("b"), [reused])
    assert not isinstance(duplicate.value, WrongExpectedVersion), duplicate.value
    with pytest.raises(ValueError, match="boundary"):
        Client(orisun.address).save_events("s", [EventData("E", {})])
    with pytest.raises(TypeError, match="expected_version"):
        client.save_events("s", [EventData("E", {})], expected_version="any")  # type: ignore[arg-type]


def test_wrong_credentials_are_unauthenticated_and_a_reader_may_not_write(orisun: ServerThread) -> None:
    with connect(orisun.address, username="nobody-" + uuid.uuid4().hex[:6], password="wrong") as stranger:
        with pytest.raises(Unauthenticated):
            list(stranger.get_events())
        with pytest.raises(Unauthenticated):
            stranger.save_events("s", [EventData("E", {})])
    users = orisun.app.users
    assert users is not None
    name = unique("reader")
    orisun.call(users.create("Reader", name, "reader-pass", []))
    with connect(orisun.address, username=name, password="reader-pass") as reader:
        list(reader.get_events(page_size=1))
        with pytest.raises(PermissionDenied):
            reader.save_events("s", [EventData("E", {})])


# --- get_events -----------------------------------------------------------------------------------


def test_get_events_pages_without_loss_or_duplicates_both_ways(client: Client) -> None:
    stream = unique("paged")
    tag = unique("batch")
    saved: list[str] = []
    for i in range(5):  # several writes: commit and prepare positions differ
        batch = [EventData("Paged", {"i": i, "j": j}, tags={"batch": tag}) for j in range(i + 1)]
        client.save_events(stream, batch)
        saved += [e.event_id for e in batch]  # 15 events
    by_stream = list(client.get_events(stream=stream, page_size=4))
    assert [e.event_id for e in by_stream] == saved
    assert [e.version for e in by_stream] == list(range(15))
    newest_first = list(client.get_events(stream=stream, direction=Direction.DESC, page_size=4))
    assert [e.event_id for e in newest_first] == saved[::-1]
    by_tag = list(client.get_events(query={"batch": tag}, page_size=3, direction="desc"))
    assert [e.event_id for e in by_tag] == saved[::-1]
    exact_pages = list(client.get_events(query={"batch": tag}, page_size=5))  # 15 = 3 full pages
    assert [e.event_id for e in exact_pages] == saved
    # From a position (exclusive) and from a version.
    after = list(client.get_events(query={"batch": tag}, from_position=by_stream[9].position, page_size=2))
    assert [e.event_id for e in after] == saved[10:]
    assert [e.version for e in client.get_events(stream=stream, from_version=12, page_size=2)] == [12, 13, 14]
    assert [e.version for e in client.get_events(stream=stream, from_version=3, direction="DESC")] == [3, 2, 1, 0]
    # Criteria OR'd, tags AND'd, event_type matching the type.
    client.save_events(stream, [EventData("Other", {}, tags={"batch": tag, "kind": "x"})])
    either = list(client.get_events(query=query({"event_type": "Other"}, {"batch": tag, "kind": "none"})))
    assert [e.event_type for e in either] == ["Other"]
    both = list(client.get_events(query=[{"batch": tag, "event_type": "Other"}, {"event_type": "Nope"}]))
    assert [e.event_type for e in both] == ["Other"]


# --- retries after UNAVAILABLE ---------------------------------------------------------------------


class TcpProxy:
    """A real TCP proxy in front of a server. While ``holding`` is set it drops what the server
    sends (its answers never reach the client); `cut` closes every connection, as a network
    failure or a restarting load balancer would: the client's calls in flight fail UNAVAILABLE."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream = ("127.0.0.1", upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.holding = threading.Event()
        self._sockets: list[socket.socket] = []
        self._abandoned: set[socket.socket] = set()
        self._frozen: set[socket.socket] = set()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._upstream)
            with self._lock:
                self._sockets += [downstream, upstream]
                self._pairs.append((downstream, upstream))
            threading.Thread(target=self._pump, args=(downstream, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, downstream, True), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, to_client: bool) -> None:
        try:
            while data := source.recv(65536):
                if not (to_client and self.holding.is_set()) and source not in self._frozen:
                    target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                if sock not in self._abandoned and sock not in self._frozen:
                    with _suppress_oserror():
                        sock.shutdown(socket.SHUT_RDWR)

    def abandon(self) -> None:
        """Close the client's side of every connection but leave the server's open and unread, as
        when a client's host vanishes: the server notices only by its keepalive pings."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
            self._abandoned.update(upstream for _, upstream in pairs)
        for downstream, _ in pairs:
            with _suppress_oserror():
                downstream.shutdown(socket.SHUT_RDWR)
            downstream.close()

    def freeze(self) -> None:
        """Stop passing anything on the current connections, both ways, and keep them open: the
        server looks gone (a host that vanished, a partition) but nothing closes. New connections
        work."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
            self._frozen.update(sock for pair in pairs for sock in pair)

    def cut(self) -> None:
        with self._lock:
            sockets, self._sockets, self._pairs = self._sockets, [], []
        for sock in sockets:
            with _suppress_oserror():
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._listener.close()
        self.cut()


class _suppress_oserror:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], OSError)  # type: ignore[arg-type]


def lose_the_answer(client: Client, direct: Client, proxy: TcpProxy, stream: str,
                    events: list[EventData]) -> tuple[WriteResult | None, BaseException | None]:
    """Save ``events`` through the proxy, which passes the request on and swallows the answer; once
    the write is stored, cut the connection. What the client's save_events returned or raised."""
    outcome: list[Any] = []

    def save() -> None:
        try:
            outcome.append(client.save_events(stream, events, expected_version=NO_STREAM))
        except BaseException as exc:
            outcome.append(exc)

    proxy.holding.set()
    saver = threading.Thread(target=save, daemon=True)
    saver.start()
    wait_for(lambda: list(direct.get_events(stream=stream)), 30, "the write to be stored")
    proxy.holding.clear()
    proxy.cut()
    saver.join(60)
    assert not saver.is_alive()
    result = outcome[0]
    return (None, result) if isinstance(result, BaseException) else (result, None)


def test_a_save_whose_answer_was_lost_is_retried_with_the_same_ids_and_stored_once(
    client: Client, orisun: ServerThread
) -> None:
    proxy = TcpProxy(orisun.app.grpc_port)
    try:
        # Without retries the lost answer is an error: the proxy really fails the call UNAVAILABLE.
        with connect(f"127.0.0.1:{proxy.port}", retry=RetryPolicy(max_attempts=1)) as once:
            once.save_events(unique("warm-up"), [EventData("W", {})])  # the connection is up
            result, error = lose_the_answer(once, client, proxy, unique("once"), [EventData("E", {})])
            assert isinstance(error, Unavailable), (result, error)
        # With retries (the default) the same write is sent again, the same ids: the server
        # recognises it and answers the original result (with new ids, NO_STREAM would conflict).
        with connect(f"127.0.0.1:{proxy.port}") as retrying:
            retrying.save_events(unique("warm-up"), [EventData("W", {})])
            stream = unique("retried")
            events = [EventData("A", {"n": 1}), EventData("B", {"n": 2})]
            result, error = lose_the_answer(retrying, client, proxy, stream, events)
            assert error is None, error
            stored = list(client.get_events(stream=stream))
            assert [e.event_id for e in stored] == [e.event_id for e in events]  # stored once
            assert result == WriteResult(stored[-1].position, 1)
    finally:
        proxy.close()


# --- subscriptions --------------------------------------------------------------------------------


def test_subscribe_catches_up_then_goes_live_from_a_position(client: Client) -> None:
    tag = unique("sub")
    first = [EventData("Early", {"i": i}, tags={"sub": tag}) for i in range(3)]
    client.save_events(unique("s"), first)
    with client.subscribe(query={"sub": tag}) as subscription:
        collector = Collector(subscription)
        assert [e.event_id for e in collector.wait_count(3)] == [e.event_id for e in first]
        live = [EventData("Live", {}, tags={"sub": tag})]
        client.save_events(unique("s"), live)
        assert collector.wait_count(4)[3].event_id == live[0].event_id
        assert subscription.cursor == collector.items[3].position
    collector.join(10)
    assert not collector.is_alive() and collector.error is None  # close ends the iteration
    # From a position: only what follows it.
    with client.subscribe(query={"sub": tag}, from_position=collector.items[1].position) as later:
        assert [e.event_id for e in Collector(later).wait_count(2)] == [e.event_id for e in [first[2], *live]]


def test_closing_the_client_ends_its_subscriptions(orisun: ServerThread) -> None:
    """Not an error and no reconnecting: it was a ValueError ("Channel closed") from the reconnect."""
    own = connect(orisun.address)
    own.save_events(unique("s"), [EventData("E", {})])
    events = Collector(own.subscribe())
    events.wait_count(1)
    own.close()
    events.join(10)
    assert not events.is_alive() and events.error is None


def test_a_named_subscription_is_exclusive(client: Client) -> None:
    name = unique("exclusive")
    with client.subscribe(subscriber_name=name, query={"none": "x"}) as holder:
        holding = Collector(holder)
        client.save_events(unique("s"), [EventData("E", {}, tags={"none": "x"})])
        holding.wait_count(1)
        with pytest.raises(AlreadyExists):  # not retried: it is not resuming
            next(iter(client.subscribe(subscriber_name=name)))


def test_a_named_subscription_waits_for_its_name_when_resuming(client: Client, orisun: ServerThread) -> None:
    """The client's connection vanishes without the server noticing: on resuming, the server still
    holds the name (ALREADY_EXISTS) until its keepalive ends the old call (~8 s); the subscription
    waits for it and resumes where it was."""
    proxy = TcpProxy(orisun.app.grpc_port)
    tag = unique("named")
    try:
        with connect(f"127.0.0.1:{proxy.port}") as through_proxy, through_proxy.subscribe(
            subscriber_name=unique("resuming"), query={"named": tag}
        ) as subscription:
            events = Collector(subscription)
            first = [EventData("E", {"i": i}, tags={"named": tag}) for i in range(3)]
            client.save_events(unique("s"), first)
            events.wait_count(3)
            proxy.abandon()
            later = [EventData("E", {"i": i}, tags={"named": tag}) for i in range(3, 5)]
            client.save_events(unique("s"), later)
            delivered = events.wait_count(5, timeout=60)
            assert [e.event_id for e in delivered] == [e.event_id for e in first + later]
    finally:
        proxy.close()


def test_a_subscription_notices_a_silent_dead_connection_and_resumes(client: Client, orisun: ServerThread) -> None:
    """The connection stays open but nothing comes through any more: the client's keepalive pings
    go unanswered, the call fails, and the subscription reconnects and resumes."""
    proxy = TcpProxy(orisun.app.grpc_port)
    tag = unique("silent")
    try:
        with connect(f"127.0.0.1:{proxy.port}") as through_proxy, through_proxy.subscribe(
            query={"silent": tag}
        ) as subscription:
            events = Collector(subscription)
            first = [EventData("E", {"i": i}, tags={"silent": tag}) for i in range(2)]
            client.save_events(unique("s"), first)
            events.wait_count(2)
            proxy.freeze()
            later = [EventData("E", {"i": i}, tags={"silent": tag}) for i in range(2, 4)]
            client.save_events(unique("s"), later)
            delivered = events.wait_count(4, timeout=60)
            assert [e.event_id for e in delivered] == [e.event_id for e in first + later]
    finally:
        proxy.close()


def test_subscribe_resumes_across_a_server_restart_without_gap_or_duplicate(postgres: EmbeddedPostgres) -> None:
    with fresh_database(postgres.conninfo, "client_restart") as conninfo:
        data_dir = shared_tmpdir("orisun-client-restart-")
        settings = server_settings(data_dir, conninfo, grpc_port=free_port(), boundaries=BOUNDARIES)
        server = ServerThread(settings).start()
        stop_writing = threading.Event()
        acknowledged: list[WriteResult] = []
        patient = RetryPolicy(max_attempts=None, deadline=90)

        def write() -> None:
            with connect(server.address, retry=patient) as writer:
                while not stop_writing.is_set():
                    acknowledged.append(writer.save_events(unique("w"), [EventData("Written", {})]))

        try:
            with connect(server.address, retry=patient) as reader, reader.subscribe(
                subscriber_name="restart-test"
            ) as subscription:
                events = Collector(subscription)
                writer = threading.Thread(target=write, daemon=True)
                writer.start()
                events.wait_count(20)
                server.stop()
                before = len(acknowledged)
                server = ServerThread(settings).start()  # the same port, database and data dir
                wait_for(lambda: len(acknowledged) >= before + 20, 60, "writes after the restart")
                stop_writing.set()
                writer.join(60)
                assert not writer.is_alive()
                last = max(result.log_position for result in acknowledged)
                wait_for(lambda: events.items and events.items[-1].position >= last, 60, "every event delivered")
                delivered = [e.position.prepare for e in events.items]
                assert delivered == list(range(1, len(delivered) + 1)), "a gap or a duplicate"
                stored = [e.event_id for e in reader.get_events(page_size=1000)]
                assert [e.event_id for e in events.items] == stored
        finally:
            stop_writing.set()
            server.stop()
            shutil.rmtree(data_dir, ignore_errors=True)


def test_subscribe_to_stream_resumes_by_version(client: Client, orisun: ServerThread) -> None:
    stream = unique("one")
    client.save_events(stream, [EventData("E", {"i": i}) for i in range(3)])
    client.save_events(unique("other"), [EventData("Other", {})])
    proxy = TcpProxy(orisun.app.grpc_port)
    try:
        with connect(f"127.0.0.1:{proxy.port}") as through_proxy, through_proxy.subscribe_to_stream(
            stream, after_version=0
        ) as subscription:
            collector = Collector(subscription)
            assert [e.version for e in collector.wait_count(2)] == [1, 2]
            client.save_events(stream, [EventData("E", {"i": 3})])
            assert [e.version for e in collector.wait_count(3)] == [1, 2, 3]
            proxy.cut()  # the connection drops: it resumes after version 3
            client.save_events(stream, [EventData("E", {"i": i}) for i in (4, 5)])
            assert [e.version for e in collector.wait_count(5)] == [1, 2, 3, 4, 5]
            assert [e.json()["i"] for e in collector.items] == [1, 2, 3, 4, 5]
            assert subscription.cursor == 5
            with pytest.raises(InvalidArgument):
                next(iter(client.subscribe_to_stream(stream, after_version=-5)))
    finally:
        proxy.close()


# --- pub/sub --------------------------------------------------------------------------------------


def probe_until_received(client: Client, subject: str, received: Callable[[], list[Any]]) -> None:
    """A new consumer name starts with what is published after it exists: publish probes until one
    arrives, so that the consumer is known to be there."""

    def probed() -> bool:
        client.publish(subject, {"probe": True})
        return any(m.json() == {"probe": True} for m in received())

    wait_for(probed, 30, "the consumer to receive a probe")


def test_publish_and_subscribe(client: Client) -> None:
    subject = f"client.{uuid.uuid4().hex[:8]}"
    with client.subscribe_pubsub(subject, unique("consumer")) as subscription:
        messages = Collector(subscription)
        probe_until_received(client, subject, lambda: messages.items)
        ids = [client.publish(subject, {"n": n}, metadata={"m": n}) for n in range(3)]
        chosen = client.publish(subject, "plain text", id="my-own-id")
        assert chosen == "my-own-id"
        wait_for(lambda: {*ids, chosen} <= {m.id for m in messages.items}, 30, "the messages")
        by_id = {m.id: m for m in messages.items}
        assert [by_id[i].json() for i in ids] == [{"n": 0}, {"n": 1}, {"n": 2}]
        assert by_id[ids[1]].metadata == '{"m":1}' and by_id[ids[1]].subject == subject
        assert by_id[chosen].data == "plain text"


def test_consume_with_ack_and_nack(client: Client) -> None:
    subject = f"client.{uuid.uuid4().hex[:8]}"
    name = unique("worker")
    nacked_once: set[str] = set()

    def settle(message: Any) -> None:
        if message.json().get("nack") and message.id not in nacked_once:
            nacked_once.add(message.id)
            message.nack()  # delivered again at once
        else:
            message.ack()

    with client.consume(subject, name, max_in_flight=5) as consumer:
        received = Collector(consumer, settle)
        probe_until_received(client, subject, lambda: received.items)
        kept = client.publish(subject, {"n": 1})
        given_back = client.publish(subject, {"n": 2, "nack": True})
        wait_for(lambda: [m.id for m in received.items].count(given_back) == 2 and kept in
                 {m.id for m in received.items}, 30, "the nacked message to come again")
        again = [m for m in received.items if m.id == given_back]
        assert [m.delivery_count for m in again] == [1, 2] and again[0].token == again[1].token
    received.join(10)
    assert not received.is_alive() and received.error is None
    # Everything was acked: a new consumer of the name gets only what is published next.
    with client.consume(subject, name) as consumer:
        later = Collector(consumer, lambda m: m.ack())
        after = client.publish(subject, {"n": 3})
        assert [m.id for m in later.wait_count(1)] == [after]


# --- TLS --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificates() -> Iterator[tuple[Path, trustme.CA]]:
    directory = shared_tmpdir("orisun-client-tls-")
    ca = trustme.CA()
    server = ca.issue_cert("orisun.test")  # not 127.0.0.1: the client overrides the name it checks
    server.private_key_and_cert_chain_pem.write_to_path(str(directory / "server.pem"))
    server.private_key_pem.write_to_path(str(directory / "server.key"))
    for i, blob in enumerate(server.cert_chain_pems):
        blob.write_to_path(str(directory / "chain.pem"), append=i > 0)
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    yield directory, ca
    shutil.rmtree(directory, ignore_errors=True)


def test_tls_and_mutual_tls(postgres: EmbeddedPostgres, certificates: tuple[Path, trustme.CA]) -> None:
    directory, ca = certificates
    files = TlsFiles(directory / "chain.pem", directory / "server.key", client_ca_file=directory / "ca.pem")
    client_cert = ca.issue_cert("client.orisun.test")
    with running_server(postgres.conninfo, "test_client_tls", boundaries=BOUNDARIES, tls=files) as server:
        address = server.address
        with connect(address, root_certificates=directory / "ca.pem", server_name="orisun.test",
                     certificate_chain=b"".join(b.bytes() for b in client_cert.cert_chain_pems),
                     private_key=client_cert.private_key_pem.bytes()) as secure:
            stream = unique("tls")
            secure.save_events(stream, [EventData("Secure", {})])
            assert [e.event_type for e in secure.get_events(stream=stream)] == ["Secure"]
            with secure.subscribe(query={"event_type": "Secure"}) as subscription:
                assert Collector(subscription).wait_count(1)[0].stream == stream
        # The credentials travel as call credentials over TLS: wrong ones are refused.
        wrong = connect(address, password="wrong", root_certificates=ca.cert_pem.bytes(), server_name="orisun.test",
                        certificate_chain=b"".join(b.bytes() for b in client_cert.cert_chain_pems),
                        private_key=client_cert.private_key_pem.bytes())
        with wrong, pytest.raises(Unauthenticated):
            wrong.save_events(unique("tls"), [EventData("E", {})])
        # Without a client certificate the mutual-TLS server refuses the connection; without
        # trusting the CA the client refuses the server.
        for settings in ({"root_certificates": directory / "ca.pem", "server_name": "orisun.test"}, {"tls": True}):
            refused = connect(address, retry=RetryPolicy(max_attempts=1), timeout=10, **settings)
            with refused, pytest.raises(Unavailable):
                refused.save_events(unique("tls"), [EventData("E", {})])


# --- admin ----------------------------------------------------------------------------------------


def test_admin_users(client: Client) -> None:
    count = client.user_count()
    username = unique("op")
    user = client.create_user(username, "first-Pass-1", name="Op", roles=[Role.OPERATIONS.value])
    assert (user.username, user.name, user.roles) == (username, "Op", ("OPERATIONS",))
    assert user.user_id and user.created_at is not None
    assert client.user_count() == count + 1
    assert username in {u.username for u in client.list_users()}
    assert client.validate_credentials(username, "first-Pass-1") == user
    assert client.validate_credentials(username, "wrong") is None
    client.change_password(user.user_id, "second-Pass-2")
    assert client.validate_credentials(username, "second-Pass-2") is not None
    with pytest.raises(AlreadyExists):
        client.create_user(username, "first-Pass-1")
    client.delete_user(user.user_id)
    with pytest.raises(NotFound):
        client.delete_user(user.user_id)
    assert client.user_count() == count


def test_admin_boundaries_and_counts(client: Client) -> None:
    listed = client.list_boundaries()
    assert {"orders", "payments", "orisun_admin"} <= {b.name for b in listed}
    orders = client.get_boundary("orders")
    assert (orders.schema, orders.status, orders.existed_before_catalog) == ("orders", "ACTIVE", True)
    with pytest.raises(NotFound):
        client.get_boundary("nowhere")
    name = f"b_{uuid.uuid4().hex[:8]}"
    created = client.create_boundary(name, description="made by the client")
    assert (created.name, created.description, created.status) == (name, "made by the client", "ACTIVE")
    with pytest.raises(AlreadyExists):
        client.create_boundary(name)
    client.save_events("s", [EventData("E", {}), EventData("E", {})], boundary=name)  # usable at once
    assert client.event_count(name) == 2
    assert client.event_count() >= 1  # the default boundary
    with pytest.raises(NotFound):
        client.event_count("nowhere")


def test_positions_compare_as_commit_then_prepare() -> None:
    assert Position(2, 1) < Position(2, 2) < Position(3, 3)
    assert max(Position(5, 4), Position(5, 5), Position(3, 3)) == Position(5, 5)

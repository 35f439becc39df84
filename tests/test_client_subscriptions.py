"""The synchronous Python client's subscriptions against real servers: catch-up then live from a
position, closing the client ends them, named subscriptions (exclusive, waiting for their name when
resuming), a silent dead connection noticed, and resuming across a real server restart while a
writer keeps writing, by position or by stream version. Shared fixtures and helpers:
tests/client_support.py.
"""

from __future__ import annotations

import shutil
import threading

import pytest

from orisun.client import AlreadyExists, Client, EventData, InvalidArgument, RetryPolicy, WriteResult
from orisun.runtime.postgres import EmbeddedPostgres
from tests import client_support
from tests.client_support import BOUNDARIES, Collector, TcpProxy, connect, unique
from tests.support import ServerThread, free_port, fresh_database, server_settings, shared_tmpdir, wait_for

# Fixtures of tests/client_support.py, bound to names of this module so that pytest finds them here.
orisun = client_support.orisun
client = client_support.client


pytestmark = pytest.mark.timeout(120)


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


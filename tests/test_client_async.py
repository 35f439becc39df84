"""The asyncio client (`orisun.client.AsyncClient`) against real servers: the same cases as
tests/test_client.py, through grpc.aio."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from orisun.client import (
    NO_STREAM,
    AlreadyExists,
    AsyncClient,
    BoundaryNotFound,
    EventData,
    InvalidArgument,
    NotFound,
    RetryPolicy,
    Unauthenticated,
    Unavailable,
    WriteResult,
    WrongExpectedVersion,
    query,
)
from orisun.runtime.postgres import EmbeddedPostgres
from orisun.tls import TlsFiles
from tests.client_support import BOUNDARIES, TcpProxy, certificates, unique
from tests.support import (
    ADMIN,
    CHANNEL_OPTIONS,
    ServerThread,
    free_port,
    fresh_database,
    running_server,
    server_settings,
    shared_tmpdir,
)

pytestmark = pytest.mark.timeout(120)
__all__ = ["certificates"]  # the module-scoped fixture of tests/client_support.py, shared with tests/test_client.py


@pytest.fixture(scope="module")
def orisun(postgres: EmbeddedPostgres) -> Iterator[ServerThread]:
    with running_server(postgres.conninfo, "test_client_async", boundaries=BOUNDARIES) as server:
        yield server


def connect(address: str, **overrides: Any) -> AsyncClient:
    settings: dict[str, Any] = {"username": ADMIN[0], "password": ADMIN[1], "boundary": "orders",
                                "options": CHANNEL_OPTIONS}
    return AsyncClient(address, **{**settings, **overrides})


def run(orisun: ServerThread, test: Callable[[AsyncClient], Coroutine[Any, Any, None]]) -> None:
    """Run ``test`` with a client of ``orisun`` on a new event loop."""

    async def main() -> None:
        async with connect(orisun.address) as client:
            await test(client)

    asyncio.run(main())


async def eventually(condition: Callable[[], Any], within: float, what: str) -> Any:
    """Poll ``condition`` on the loop until it holds; fail with ``what`` after ``within`` s."""
    deadline = time.monotonic() + within
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.02)
    return result


class Collector:
    """Iterates an async iterator in a task into a list; ``on_item`` may act on each item."""

    def __init__(self, items: AsyncIterator[Any], on_item: Callable[[Any], Awaitable[None]] | None = None) -> None:
        self.items: list[Any] = []
        self.error: BaseException | None = None
        self.task = asyncio.create_task(self._run(items, on_item))

    async def _run(self, items: AsyncIterator[Any], on_item: Callable[[Any], Awaitable[None]] | None) -> None:
        try:
            async for item in items:
                self.items.append(item)
                if on_item is not None:
                    await on_item(item)
        except Exception as exc:
            self.error = exc

    async def wait_count(self, count: int, within: float = 30) -> list[Any]:
        def enough() -> bool:
            if self.error is not None:
                raise AssertionError(f"the iteration failed: {self.error!r}")
            return len(self.items) >= count

        await eventually(enough, within, f"{count} items (have {len(self.items)})")
        return list(self.items)


def test_save_read_and_conflict(orisun: ServerThread) -> None:
    async def test(client: AsyncClient) -> None:
        stream = unique("order")
        events = [EventData("OrderPlaced", {"total": 1}, tags={"tenant": "t1"}), EventData("OrderPaid", {})]
        result = await client.save_events(stream, events, expected_version=NO_STREAM)
        assert result.new_stream_version == 1
        read = [e async for e in client.get_events(stream=stream)]
        assert [e.event_id for e in read] == [e.event_id for e in events]
        assert read[0].json() == {"total": 1} and read[0].tags == (("tenant", "t1"),)
        assert read[1].position == result.log_position
        with pytest.raises(WrongExpectedVersion) as raised:
            await client.save_events(stream, [EventData("OrderPaid", {})], expected_version=5)
        assert (raised.value.expected, raised.value.actual) == (5, 1)

    run(orisun, test)


def test_typed_errors_and_wrong_credentials(orisun: ServerThread) -> None:
    async def test(client: AsyncClient) -> None:
        with pytest.raises(BoundaryNotFound):
            await client.save_events("s", [EventData("E", {})], boundary="nowhere")
        with pytest.raises(InvalidArgument) as invalid:
            [e async for e in client.get_events(page_size=20_000)]
        assert "count" in invalid.value.message
        reused = EventData("E", {})
        await client.save_events(unique("a"), [reused])
        with pytest.raises(AlreadyExists):
            await client.save_events(unique("b"), [reused])
        async with connect(orisun.address, username="nobody-" + uuid.uuid4().hex[:6], password="x") as stranger:
            with pytest.raises(Unauthenticated):
                await stranger.save_events("s", [EventData("E", {})])

    run(orisun, test)


def test_get_events_pages_both_ways(orisun: ServerThread) -> None:
    async def test(client: AsyncClient) -> None:
        tag = unique("batch")
        saved: list[str] = []
        for i in range(4):
            batch = [EventData("Paged", {"i": i}, tags={"batch": tag}) for _ in range(i + 2)]
            await client.save_events(unique("s"), batch)
            saved += [e.event_id for e in batch]  # 14 events
        assert [e.event_id async for e in client.get_events(query={"batch": tag}, page_size=3)] == saved
        assert [e.event_id async for e in client.get_events(query=query({"batch": tag}), page_size=7,
                                                            direction="DESC")] == saved[::-1]

    run(orisun, test)


def test_a_save_whose_answer_was_lost_is_retried_and_stored_once(orisun: ServerThread) -> None:
    proxy = TcpProxy(orisun.app.grpc_port)

    async def test(direct: AsyncClient) -> None:
        async with connect(f"127.0.0.1:{proxy.port}") as client:
            await client.save_events(unique("warm-up"), [EventData("W", {})])
            stream = unique("retried")
            events = [EventData("A", {}), EventData("B", {})]
            proxy.holding.set()
            saving = asyncio.create_task(client.save_events(stream, events, expected_version=NO_STREAM))

            async def stored() -> list[Any]:
                return [e async for e in direct.get_events(stream=stream)]

            deadline = time.monotonic() + 30
            while not await stored():
                assert time.monotonic() < deadline, "the write was not stored"
                await asyncio.sleep(0.02)
            proxy.holding.clear()
            proxy.cut()
            result = await asyncio.wait_for(saving, 60)
            kept = await stored()
            assert [e.event_id for e in kept] == [e.event_id for e in events]
            assert result == WriteResult(kept[-1].position, 1)

    try:
        run(orisun, test)
    finally:
        proxy.close()


def test_subscribe_resumes_across_a_server_restart(postgres: EmbeddedPostgres) -> None:
    with fresh_database(postgres.conninfo, "client_async_restart") as conninfo:
        data_dir = shared_tmpdir("orisun-client-async-restart-")
        settings = server_settings(data_dir, conninfo, grpc_port=free_port(), boundaries=BOUNDARIES)
        servers = [ServerThread(settings).start()]
        patient = RetryPolicy(max_attempts=None, deadline=90)

        async def main() -> None:
            address = servers[0].address
            acknowledged: list[WriteResult] = []
            stop = asyncio.Event()

            async def write(writer: AsyncClient) -> None:
                while not stop.is_set():
                    acknowledged.append(await writer.save_events(unique("w"), [EventData("Written", {})]))

            async with connect(address, retry=patient) as reader, connect(address, retry=patient) as writer:
                async with reader.subscribe(subscriber_name="async-restart") as subscription:
                    events = Collector(subscription)
                    writing = asyncio.create_task(write(writer))
                    await events.wait_count(20)
                    await asyncio.to_thread(servers[0].stop)
                    before = len(acknowledged)
                    servers.append(await asyncio.to_thread(ServerThread(settings).start))
                    await eventually(lambda: len(acknowledged) >= before + 20, 60, "writes after the restart")
                    stop.set()
                    await asyncio.wait_for(writing, 60)
                    last = max(result.log_position for result in acknowledged)
                    await eventually(lambda: events.items and events.items[-1].position >= last, 60, "every event")
                    delivered = [e.position.prepare for e in events.items]
                    assert delivered == list(range(1, len(delivered) + 1)), "a gap or a duplicate"
                    stored = [e.event_id async for e in reader.get_events(page_size=1000)]
                    assert [e.event_id for e in events.items] == stored
                await asyncio.wait_for(events.task, 10)  # closing ends the iteration
                assert events.error is None

        try:
            asyncio.run(main())
        finally:
            for server in servers:
                server.stop()
            shutil.rmtree(data_dir, ignore_errors=True)


def test_closing_the_client_ends_its_subscriptions(orisun: ServerThread) -> None:
    """Not an error: it was a CancelledError out of the iteration."""

    async def main() -> None:
        client = connect(orisun.address)
        await client.save_events(unique("s"), [EventData("E", {})])
        events = Collector(client.subscribe())
        await events.wait_count(1)
        await client.close()
        await asyncio.wait_for(events.task, 10)
        assert events.error is None

    asyncio.run(main())


def test_subscribe_to_stream(orisun: ServerThread) -> None:
    async def test(client: AsyncClient) -> None:
        stream = unique("one")
        await client.save_events(stream, [EventData("E", {}) for _ in range(3)])
        async with client.subscribe_to_stream(stream, after_version=-1) as subscription:
            collector = Collector(subscription)
            assert [e.version for e in await collector.wait_count(3)] == [0, 1, 2]
            await client.save_events(stream, [EventData("E", {})])
            assert [e.version for e in await collector.wait_count(4)] == [0, 1, 2, 3]

    run(orisun, test)


async def probe_until_received(client: AsyncClient, subject: str, received: Callable[[], list[Any]]) -> None:
    deadline = time.monotonic() + 30
    while not any(m.json() == {"probe": True} for m in received()):
        assert time.monotonic() < deadline, "the consumer received no probe"
        await client.publish(subject, {"probe": True})
        await asyncio.sleep(0.05)


def test_publish_subscribe_and_consume_with_acks(orisun: ServerThread) -> None:
    async def test(client: AsyncClient) -> None:
        subject = f"aclient.{uuid.uuid4().hex[:8]}"
        async with client.subscribe_pubsub(subject, unique("listener")) as subscription:
            heard = Collector(subscription)
            await probe_until_received(client, subject, lambda: heard.items)
            sent = await client.publish(subject, {"n": 1}, metadata="m")
            await eventually(lambda: sent in {m.id for m in heard.items}, 30, "the message")
            assert next(m for m in heard.items if m.id == sent).metadata == "m"

        name = unique("worker")
        nacked: set[str] = set()

        async def settle(message: Any) -> None:
            if message.json().get("nack") and message.id not in nacked:
                nacked.add(message.id)
                await message.nack()
            else:
                await message.ack()

        async with client.consume(subject, name, max_in_flight=3) as consumer:
            received = Collector(consumer, settle)
            await probe_until_received(client, subject, lambda: received.items)
            given_back = await client.publish(subject, {"nack": True})
            await eventually(lambda: [m.id for m in received.items].count(given_back) == 2, 30, "a redelivery")
            assert [m.delivery_count for m in received.items if m.id == given_back] == [1, 2]
        await asyncio.wait_for(received.task, 10)
        assert received.error is None
        async with client.consume(subject, name) as consumer:
            later = Collector(consumer, lambda m: m.ack())
            after = await client.publish(subject, {"n": 2})
            assert [m.id for m in await later.wait_count(1)] == [after]  # nothing left unacked before

    run(orisun, test)


def test_tls_with_call_credentials(postgres: EmbeddedPostgres, certificates: tuple[Path, trustme.CA]) -> None:
    directory, _ = certificates
    with running_server(postgres.conninfo, "test_client_async_tls", boundaries=BOUNDARIES,
                        tls=TlsFiles(directory / "chain.pem", directory / "server.key")) as server:

        async def main() -> None:
            tls = {"root_certificates": str(directory / "ca.pem"), "server_name": "orisun.test"}
            async with connect(server.address, **tls) as secure:
                stream = unique("tls")
                await secure.save_events(stream, [EventData("Secure", {})])
                assert [e.event_type async for e in secure.get_events(stream=stream)] == ["Secure"]
            async with connect(server.address, password="wrong", **tls) as wrong:
                with pytest.raises(Unauthenticated):
                    await wrong.save_events(unique("tls"), [EventData("E", {})])
            async with connect(server.address, retry=RetryPolicy(max_attempts=1), timeout=10) as plaintext:
                with pytest.raises(Unavailable):
                    await plaintext.save_events(unique("tls"), [EventData("E", {})])

        asyncio.run(main())


def test_admin_calls(orisun: ServerThread) -> None:
    async def test(client: AsyncClient) -> None:
        count = await client.user_count()
        username = unique("op")
        user = await client.create_user(username, "first-Pass-1", roles=["OPERATIONS"])
        assert await client.user_count() == count + 1
        assert username in {u.username for u in await client.list_users()}
        assert await client.validate_credentials(username, "first-Pass-1") == user
        await client.change_password(user.user_id, "second-Pass-2")
        assert await client.validate_credentials(username, "first-Pass-1") is None
        await client.delete_user(user.user_id)
        assert {"orders", "payments"} <= {b.name for b in await client.list_boundaries()}
        assert (await client.get_boundary("payments")).schema == "payments"
        name = f"ab_{uuid.uuid4().hex[:8]}"
        assert (await client.create_boundary(name)).name == name
        await client.save_events("s", [EventData("E", {})], boundary=name)
        assert await client.event_count(name) == 1
        with pytest.raises(NotFound):
            await client.get_boundary("nowhere")

    run(orisun, test)


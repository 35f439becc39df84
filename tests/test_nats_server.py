"""The embedded nats-server, for real: authentication, JetStream, restarts, stopping."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path

import nats
import nats.errors
import pytest

from orisun.errors import StartupError
from orisun.runtime.nats_server import EmbeddedNats, NatsServerOptions, find_nats_server

PASSWORD = 'p"a$s\\w{o}rd #1'  # JSON and nats-conf special characters on purpose


def server(tmp_path: Path, port: int = 0) -> EmbeddedNats:
    options = NatsServerOptions(
        host="127.0.0.1",
        port=port,
        store_dir=tmp_path / "store",
        max_payload=1024 * 1024,
        username="orisun",
        password=PASSWORD,
    )
    return EmbeddedNats(options, tmp_path / "run")


def gone(pid: int) -> bool:
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


async def eventually(predicate: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def check_secrets(config: Path, pid: int) -> None:
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert PASSWORD.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()


async def _quiet(exc: Exception) -> None:
    pass


def test_finds_the_binary() -> None:
    assert os.access(find_nats_server(), os.X_OK)


@pytest.mark.timeout(30)
def test_authenticated_client_can_publish_subscribe_and_use_jetstream(tmp_path: Path) -> None:
    async def main() -> None:
        embedded = server(tmp_path)
        await embedded.start()
        try:
            assert embedded.port != 0 and embedded.url == f"nats://127.0.0.1:{embedded.port}"
            assert embedded.pid is not None
            check_secrets(tmp_path / "run" / "nats-server.json", embedded.pid)

            client = await embedded.connect()
            try:
                subscription = await client.subscribe("greetings")
                await client.publish("greetings", b"hello")
                assert (await subscription.next_msg(timeout=5)).data == b"hello"

                stream = client.jetstream()
                await stream.add_stream(name="EVENTS", subjects=["events.>"])
                ack = await stream.publish("events.one", b"first")
                assert (await stream.get_msg("EVENTS", ack.seq)).data == b"first"
            finally:
                await client.close()
        finally:
            await embedded.stop()

    asyncio.run(main())


@pytest.mark.timeout(30)
@pytest.mark.parametrize("credentials", [{}, {"user": "orisun", "password": "wrong"}], ids=["none", "wrong"])
def test_clients_without_the_password_are_refused(tmp_path: Path, credentials: dict[str, str]) -> None:
    async def main() -> None:
        embedded = server(tmp_path)
        await embedded.start()
        try:
            with pytest.raises(nats.errors.Error, match="Authorization Violation"):
                await nats.connect(embedded.url, allow_reconnect=False, error_cb=_quiet, **credentials)
        finally:
            await embedded.stop()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_port_in_use_is_a_startup_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StartupError) as info:
            asyncio.run(server(tmp_path, port).start())
    assert str(info.value) == f"ORISUN_NATS_PORT: port {port} on 127.0.0.1 is already in use"


@pytest.mark.timeout(30)
def test_a_killed_server_is_restarted_and_the_client_reconnects(tmp_path: Path) -> None:
    async def main() -> None:
        embedded = server(tmp_path)
        await embedded.start()
        client = await embedded.connect()
        try:
            stream = client.jetstream()
            await stream.add_stream(name="EVENTS", subjects=["events.>"])
            before = await stream.publish("events.one", b"kept")
            first = embedded.pid
            assert first is not None
            os.kill(first, signal.SIGKILL)
            await eventually(lambda: embedded.pid not in (None, first))
            await eventually(lambda: client.is_connected)
            # Both the connection and the JetStream data survived the crash.
            after = await stream.publish("events.two", b"new", timeout=5)
            assert after.seq == before.seq + 1
            assert (await stream.get_msg("EVENTS", before.seq)).data == b"kept"
        finally:
            await client.close()
            await embedded.stop()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_stop_leaves_no_process(tmp_path: Path) -> None:
    async def main() -> None:
        embedded = server(tmp_path)
        await embedded.start()
        pid = embedded.pid
        assert pid is not None
        await embedded.stop()
        assert gone(pid) and embedded.pid is None
        await embedded.stop()  # idempotent
        with socket.socket() as probe:  # and the port is free again
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", embedded.port))

    asyncio.run(main())


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["cancelled", "timed-out"])
def test_a_flush_that_ends_before_its_pong_leaves_the_client_working(tmp_path: Path, how: str) -> None:
    """nats-py answers each PONG by setting the result of the oldest flush's future, also when that
    flush was cancelled (its caller's call was cancelled: a client going away mid-SubscribeToPubSub)
    or timed out; the InvalidStateError then kills the client's read loop and every later request
    times out (seen in a worker under the pub/sub suite). Orisun's client skips such futures."""

    async def main() -> None:
        embedded = server(tmp_path)
        await embedded.start()
        try:
            client = await embedded.connect()
            try:
                if how == "cancelled":
                    flushing = asyncio.ensure_future(client.flush(timeout=5))
                    await asyncio.sleep(0)  # the PING is queued, its future waits in the client
                    flushing.cancel()
                    await asyncio.gather(flushing, return_exceptions=True)
                else:
                    with contextlib.suppress(nats.errors.TimeoutError):
                        await client.flush(timeout=0.000001)  # ends before any PONG can arrive
                for _ in range(3):  # each PONG, the late one included, must leave the client working
                    await client.flush(timeout=5)
                subscription = await client.subscribe("after")
                await client.publish("after", b"still here")
                assert (await subscription.next_msg(timeout=5)).data == b"still here"
                assert client.is_connected
            finally:
                await client.close()
        finally:
            await embedded.stop()

    asyncio.run(main())

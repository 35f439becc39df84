"""The ``orisun`` command as a user runs it: embedded default, restarts, signals, start-up failures."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import nats
import psycopg
import pytest
from loguru import logger
from nats.errors import NoServersError

from orisun.config import available_cpus
from orisun.errors import StartupError
from tests.support import (
    OrisunProcess,
    ServerThread,
    alive,
    free_port,
    grpcurl,
    server_settings,
    shared_tmpdir,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def processes() -> Iterator[list[OrisunProcess]]:
    started: list[OrisunProcess] = []
    yield started
    for process in started:
        process.kill()


def run(processes: list[OrisunProcess], env: dict[str, str]) -> OrisunProcess:
    process = OrisunProcess(env)
    processes.append(process)
    return process


def test_embedded_default_serves_stops_cleanly_and_keeps_its_data(
    processes: list[OrisunProcess], data_dir: Path
) -> None:
    grpc_port = free_port()
    # Nothing configured but where to keep data and which ports to use on this shared machine.
    env = {"ORISUN_DATA_DIR": str(data_dir), "ORISUN_GRPC_PORT": str(grpc_port), "ORISUN_NATS_PORT": str(free_port()),
           "ORISUN_ADMIN_PORT": "0"}
    first = run(processes, env)
    first.wait_serving()
    assert "default password" in first.output  # the loud warning
    assert f"localhost:{grpc_port} list" in first.output  # how to call it

    listed = grpcurl(f"127.0.0.1:{grpc_port}", "list")
    assert listed.returncode == 0, listed.stderr
    assert "eventstore.EventStore" in listed.stdout.split()

    match = re.search(r"Embedded PostgreSQL listening on 127\.0\.0\.1:(\d+)", first.output)
    assert match, first.output
    password = (data_dir / "postgres.password").read_text().strip()
    conninfo = f"host=127.0.0.1 port={match[1]} user=orisun password={password} dbname=orisun"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("CREATE TABLE orisun_admin.marker (note text)")
        conn.execute("INSERT INTO orisun_admin.marker VALUES ('kept')")
        admin_id = conn.execute("SELECT id FROM orisun_admin.users WHERE username = 'admin'").fetchone()

    children = first.children()
    # nats-server, postgres and, unset ORISUN_WORKERS meaning one per CPU, that many workers
    # (one CPU: this process serves, without workers).
    workers = available_cpus() if available_cpus() > 1 else 0
    assert len(children) == 2 + workers, first.output
    assert len(first.workers()) == workers, first.output
    first.proc.send_signal(signal.SIGTERM)
    assert first.wait_exit() == 0, first.output
    wait_for(lambda: not any(alive(pid) for pid in children), 10, "the children to be gone")
    assert "Orisun stopped" in first.output

    second = run(processes, {**env, "ORISUN_NATS_PORT": str(free_port()), "ORISUN_ADMIN_PORT": "0"})
    second.wait_serving()
    match = re.search(r"Embedded PostgreSQL listening on 127\.0\.0\.1:(\d+)", second.output)
    assert match
    conninfo = f"host=127.0.0.1 port={match[1]} user=orisun password={password} dbname=orisun"
    with psycopg.connect(conninfo) as conn:
        assert conn.execute("SELECT note FROM orisun_admin.marker").fetchall() == [("kept",)]
        assert conn.execute("SELECT id FROM orisun_admin.users WHERE username = 'admin'").fetchone() == admin_id
    second.proc.send_signal(signal.SIGINT)
    assert second.wait_exit() == 0, second.output


def test_unreachable_postgres_exits_1_with_a_clear_message(processes: list[OrisunProcess], data_dir: Path) -> None:
    process = run(
        processes,
        {
            "ORISUN_DATA_DIR": str(data_dir),
            "ORISUN_GRPC_PORT": str(free_port()),
            "ORISUN_NATS_PORT": str(free_port()), "ORISUN_ADMIN_PORT": "0",
            "ORISUN_PG_HOST": "127.0.0.1",
            "ORISUN_PG_PORT": str(free_port()),
            "ORISUN_PG_STARTUP_TIMEOUT": "2s",
        },
    )
    assert process.wait_exit(30) == 1
    assert "unreachable after 2s" in process.output
    assert "Traceback" not in process.output


@pytest.mark.parametrize("variable", ["ORISUN_NATS_PORT", "ORISUN_GRPC_PORT"])
def test_a_port_in_use_exits_1_naming_the_variable(
    processes: list[OrisunProcess], data_dir: Path, database: str, variable: str
) -> None:
    params = psycopg.conninfo.conninfo_to_dict(database)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            "ORISUN_DATA_DIR": str(data_dir),
            "ORISUN_GRPC_HOST": "127.0.0.1",
            "ORISUN_GRPC_PORT": str(free_port()),
            "ORISUN_NATS_PORT": str(free_port()), "ORISUN_ADMIN_PORT": "0",
            "ORISUN_PG_HOST": str(params["host"]),
            "ORISUN_PG_PORT": str(params["port"]),
            "ORISUN_PG_USER": str(params["user"]),
            "ORISUN_PG_PASSWORD": str(params["password"]),
            "ORISUN_PG_NAME": str(params["dbname"]),
            variable: str(port),
        }
        process = run(processes, env)
        assert process.wait_exit(60) == 1, process.output
    assert variable in process.output
    assert "in use" in process.output
    assert "Traceback" not in process.output


def test_nats_refuses_clients_without_credentials(server: ServerThread) -> None:
    nats_server = server.app.nats
    assert nats_server is not None

    async def connect(**credentials: str) -> None:
        client = await nats.connect(
            nats_server.url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2, **credentials
        )
        await client.close()

    with pytest.raises((NoServersError, nats.errors.Error, OSError)):
        asyncio.run(connect())
    with pytest.raises((NoServersError, nats.errors.Error, OSError)):
        asyncio.run(connect(user=server.settings.nats_username, password="wrong"))


PHASES = ["run-dir", "nats", "postgres", "database", "users", "live-feed", "pubsub", "grpc", "monitor", "dashboard"]


@pytest.mark.parametrize(("failing", "error"), [
    ("database", "ORISUN_PG"),  # a database that refuses connections
    ("grpc", "ORISUN_GRPC_PORT"),  # a gRPC address it cannot bind
])
def test_a_failed_start_leaves_nothing_running(data_dir: Path, database: str, failing: str, error: str) -> None:
    """A phase that fails stops the phases started before it, in reverse, and no child survives."""
    if failing == "database":
        settings = server_settings(data_dir, f"host=127.0.0.1 port={free_port()} user=nobody dbname=nothing",
                                   pg_startup_timeout=2.0)
    else:
        settings = server_settings(data_dir, database, grpc_host="256.0.0.1")
    server = ServerThread(settings)
    phases: list[str] = []
    sink = logger.add(lambda message: phases.append(message.record["message"]), level="DEBUG",
                      filter=lambda record: " phase " in record["message"])
    try:
        with pytest.raises(StartupError, match=error):
            server.start()
    finally:
        logger.remove(sink)
    started = PHASES[:PHASES.index(failing)]
    assert [m for m in phases if m.startswith("Started phase")] == [f"Started phase {p}" for p in started]
    assert [m for m in phases if m.startswith("Stopped phase")] == [f"Stopped phase {p}" for p in reversed(started)]
    nats_server = server.app.nats
    assert nats_server is not None
    assert nats_server.pid is None or not alive(nats_server.pid)
    assert server.app._run_dir is not None and not server.app._run_dir.exists()
    server.stop()


def test_a_child_that_keeps_dying_stops_orisun_with_status_1(
    processes: list[OrisunProcess], data_dir: Path, database: str
) -> None:
    """Never serve half-alive: NATS is restarted a few times, then Orisun gives up and exits 1."""
    params = psycopg.conninfo.conninfo_to_dict(database)
    process = run(processes, {
        "ORISUN_DATA_DIR": str(data_dir), "ORISUN_GRPC_HOST": "127.0.0.1", "ORISUN_GRPC_PORT": str(free_port()),
        "ORISUN_NATS_PORT": str(free_port()), "ORISUN_ADMIN_PORT": "0", "ORISUN_PG_HOST": str(params["host"]),
        "ORISUN_PG_PORT": str(params["port"]), "ORISUN_PG_USER": str(params["user"]),
        "ORISUN_PG_PASSWORD": str(params["password"]), "ORISUN_PG_NAME": str(params["dbname"]),
    })
    process.wait_serving()
    killed: set[int] = set()

    def kill_nats() -> bool:
        if process.proc.poll() is not None:
            return True
        for pid in process.children():
            # Only a nats-server that Orisun reported up: one killed while starting is a failed
            # restart, which ends Orisun at once and would not exercise the restart count.
            reported_up = re.search(rf"nats-server (re)?started \(pid {pid}\)", process.output)
            if pid not in killed and alive(pid) and reported_up:
                killed.add(pid)
                os.kill(pid, signal.SIGKILL)
        return False

    wait_for(kill_nats, 60, "Orisun to give up on nats-server")
    assert process.wait_exit() == 1, process.output
    assert len(killed) >= 6, process.output
    assert "restarting nats-server" in process.output
    assert "Stopping Orisun" in process.output


def test_a_sigkilled_orisuns_scratch_dir_is_removed_at_the_next_start(
    processes: list[OrisunProcess], data_dir: Path, tmp_path: Path
) -> None:
    """The scratch dir holds the nats-server config with its passwords; a SIGKILLed Orisun cannot
    remove it, so the next start on the machine does (and leaves a running one's alone)."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {"ORISUN_DATA_DIR": str(data_dir), "ORISUN_GRPC_PORT": str(free_port()), "ORISUN_NATS_PORT": str(free_port()),
           "ORISUN_ADMIN_PORT": "0", "TMPDIR": str(tmpdir)}
    killed = run(processes, env)
    killed.wait_serving()
    left = sorted(p.name for p in tmpdir.glob("orisun-run-*"))
    assert len(left) == 1 and left[0].startswith(f"orisun-run-{killed.proc.pid}-"), left
    assert (tmpdir / left[0] / "nats-server.json").is_file()
    children = killed.children()
    killed.proc.kill()
    killed.wait_exit()
    wait_for(lambda: not any(alive(pid) for pid in children), 10, "the killed one's children to go")

    # Another Orisun, still running, keeps its own.
    other_data = shared_tmpdir("orisun-test-other-")
    running = run(processes, {**env, "ORISUN_DATA_DIR": str(other_data), "ORISUN_GRPC_PORT": str(free_port()),
                              "ORISUN_NATS_PORT": str(free_port())})
    running.wait_serving()
    assert not (tmpdir / left[0]).exists(), "the killed process's scratch dir (with passwords) is still there"
    mine = [p for p in tmpdir.glob("orisun-run-*") if p.name.startswith(f"orisun-run-{running.proc.pid}-")]
    assert len(mine) == 1
    third = run(processes, {**env, "ORISUN_GRPC_PORT": str(free_port()), "ORISUN_NATS_PORT": str(free_port())})
    third.wait_serving()
    assert mine[0].exists(), "a running Orisun's scratch dir was removed"
    for process in (third, running):
        process.proc.send_signal(signal.SIGTERM)
        assert process.wait_exit() == 0, process.output
    assert list(tmpdir.glob("orisun-run-*")) == []
    shutil.rmtree(other_data, ignore_errors=True)

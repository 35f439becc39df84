"""Fixtures: one real PostgreSQL for the session (the embedded launcher, as unprivileged user when
root), a fresh database per server, and real Orisun servers on free ports."""

from __future__ import annotations

import os

# As the orisun command does (orisun/cli.py), before anything imports grpc: gRPC's fork handlers
# can abort a child forked while other threads use gRPC, and the servers these tests host in
# this process fork their nats-server and postgres children.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orisun.runtime.postgres import EmbeddedPostgres
from tests.support import LoopThread, ServerThread, fresh_database, server_settings, shared_tmpdir

CHROMIUM = Path("/usr/bin/chromium")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the executable's tests (marked ``executable``) after all others: they build it first,
    which takes a minute, and should only be paid for once the rest is known to pass."""
    items.sort(key=lambda item: item.get_closest_marker("executable") is not None)  # stable sort
    if any(item.get_closest_marker("browser") for item in items):
        _install_chromium()


def _install_chromium() -> None:
    """The browser tests drive Debian's Chromium. As root on Debian, install it when missing (as
    .ci/run does), here rather than in a test, whose timeout a download could exceed; elsewhere
    the tests fail saying how to install it."""
    if CHROMIUM.exists() or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return
    print(f"\n{CHROMIUM} is missing: installing Debian's chromium for the browser tests (apt-get)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        subprocess.run(command, env=env, stdout=subprocess.DEVNULL, check=False, timeout=900)


@pytest.fixture(scope="session")
def postgres() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL server for the whole session, in its own temp dir, stopped at the end."""
    data_dir = shared_tmpdir("orisun-test-pg-")
    server = EmbeddedPostgres(data_dir)
    loop = LoopThread("test-postgres")
    loop.call(server.start(), timeout=60)
    try:
        yield server
    finally:
        loop.call(server.stop(), timeout=60)
        loop.close()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def database(postgres: EmbeddedPostgres) -> Iterator[str]:
    """The conninfo of a new, empty database, dropped after the test."""
    with fresh_database(postgres.conninfo) as conninfo:
        yield conninfo


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = shared_tmpdir("orisun-test-data-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def start_server(database: str, data_dir: Path) -> Iterator[Callable[..., ServerThread]]:
    """Start real Orisun servers (settings overridable); all are stopped after the test."""
    servers: list[ServerThread] = []

    def start(**overrides: Any) -> ServerThread:
        settings = server_settings(data_dir, database, **overrides)
        server = ServerThread(settings)
        servers.append(server)
        return server.start()

    yield start
    for server in reversed(servers):
        server.stop()


@pytest.fixture
def server(start_server: Callable[..., ServerThread]) -> ServerThread:
    return start_server()

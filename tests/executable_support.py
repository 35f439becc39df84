"""Running the one-file executable as a user runs it, for tests/test_executable.py: ``ExeProcess`` (a
started executable: its output, its process tree, a clean stop), the ``scratch`` and ``launch``
fixtures, ports, directories and environments, and the brief's subscriptions through grpcurl.
The build itself stays in tests/test_executable.py (its ``executable`` fixture builds once for
that module).

The test files bind the fixtures here (`launch`, `scratch`) to module names of their own, so that
pytest finds them there (importing a fixture that a test takes as a parameter is a lint error,
F811).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict

from tests.brief import BRIEF_SUBSCRIBE_TO_EVENTS, BRIEF_SUBSCRIBE_TO_PUBSUB
from tests.support import GrpcurlStream, grpcurl, shared_tmpdir, wait_for

STOP_TIMEOUT = 60.0


# --- Running it ----------------------------------------------------------------------------------


def start_time(pid: int) -> int | None:
    """The start time of a running (not zombie) process, to tell it from a later one with its pid."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


def descendants(pid: int) -> dict[int, int]:
    """{pid: start time} of every process below ``pid``."""
    found: dict[int, int] = {}
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            pids = [int(p) for p in children.read_text().split()]
        except OSError:
            continue
        for child in pids:
            started = start_time(child)
            if started is not None:
                found[child] = started
                found.update(descendants(child))
    return found


class ExeProcess:
    """The executable running with ``env``, its stdout and stderr in ``log``."""

    def __init__(self, exe: Path, env: dict[str, str], log: Path, user: str | None = None,
                 new_session: bool = False) -> None:
        self.log = log
        self.new_session = new_session
        self.tree: dict[int, int] = {}
        options: dict[str, Any] = {}
        if user is not None:
            entry = pwd.getpwnam(user)
            options = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        with log.open("ab") as out:
            self.proc = subprocess.Popen([str(exe)], env=env, cwd=env["HOME"], stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=new_session, **options)
        self.address = ""

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, lines: int = 60) -> str:
        return "--- executable's log (tail) ---\n" + "\n".join(self.output().splitlines()[-lines:])

    def wait_serving(self, timeout: float = 120) -> str:
        """Wait for ``serving gRPC on HOST:PORT``; the address to call it on."""
        def ready() -> bool:
            return "serving gRPC on" in self.output() or self.proc.poll() is not None

        try:
            wait_for(ready, timeout, "the executable to serve")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.tail()}") from None
        match = re.search(r"serving gRPC on (\S+):(\d+)", self.output())
        assert self.proc.poll() is None and match, f"exited with {self.proc.returncode}\n{self.tail()}"
        self.record_tree()
        self.address = f"127.0.0.1:{match[2]}"
        return self.address

    def record_tree(self) -> None:
        if self.proc.poll() is None:
            self.tree.update({self.proc.pid: start_time(self.proc.pid) or 0, **descendants(self.proc.pid)})

    def survivors(self) -> list[str]:
        """The recorded processes still running, as "pid (name)"."""
        running = []
        for pid, started in self.tree.items():
            try:
                if started and start_time(pid) == started:
                    running.append(f"{pid} ({Path(f'/proc/{pid}/comm').read_text().strip()})")
            except OSError:
                continue  # gone meanwhile
        return running

    def stop(self, signum: signal.Signals = signal.SIGTERM, group: bool = False) -> int:
        """Send ``signum`` (to the whole process group if ``group``); the exit status."""
        self.record_tree()
        assert len(self.tree) >= 3, f"expected the bootloader, Orisun and its children: {self.tree}\n{self.tail()}"
        if group:
            os.killpg(self.proc.pid, signum)
        else:
            self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {STOP_TIMEOUT}s after {signum.name}\n{self.tail()}") from None

    def assert_nothing_left(self, tmpdir: Path) -> None:
        try:
            wait_for(lambda: not self.survivors(), 10, "every process of the executable to be gone")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: still running {self.survivors()}\n{self.tail()}") from None
        left = sorted(p.name for p in tmpdir.iterdir() if p.name.startswith(("_MEI", "orisun-run-")))
        assert left == [], f"left in TMPDIR {tmpdir}: {left}\n{self.tail()}"

    def kill(self) -> None:
        """Last resort cleanup: SIGKILL it and whatever it started that still runs."""
        if self.proc.poll() is None:
            self.record_tree()
            if self.new_session:
                os.killpg(self.proc.pid, signal.SIGKILL)
            else:
                self.proc.kill()
            self.proc.wait(timeout=30)
        for pid, started in self.tree.items():
            if started and start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def call(self, method: str, body: str) -> Any:
        """Run the real grpcurl with admin's credentials; the parsed answer (asserting success)."""
        result = grpcurl(self.address, f"eventstore.EventStore/{method}", data=body)
        assert result.returncode == 0, f"{method}: {result.stderr}\n{self.tail()}"
        return json.loads(result.stdout)


Launch = Callable[..., ExeProcess]


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A temp dir (0755, under /tmp) for the test's data dirs, TMPDIRs and logs."""
    path = shared_tmpdir("orisun-exe-test-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def launch(scratch: Path) -> Iterator[Launch]:
    """Start the executable; every process started is killed after the test if still running."""
    started: list[ExeProcess] = []

    def start(exe: Path, env: dict[str, str], **options: Any) -> ExeProcess:
        process = ExeProcess(exe, env, scratch / f"orisun-{len(started)}.log", **options)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


def user_env(home: Path, tmpdir: Path, **orisun: str) -> dict[str, str]:
    """A user's environment: no ORISUN_* variable but those given."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "TMPDIR": str(tmpdir), **orisun}


def make_dir(path: Path, owner: str | None = None) -> Path:
    path.mkdir(mode=0o755)
    if owner is not None:
        entry = pwd.getpwnam(owner)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def pg_env(conninfo: str) -> dict[str, str]:
    """The brief's ORISUN_PG_* variables, pointing at the database of ``conninfo``."""
    params = conninfo_to_dict(conninfo)
    return {"ORISUN_PG_HOST": "localhost", "ORISUN_PG_PORT": str(params["port"]),
            "ORISUN_PG_USER": str(params["user"]), "ORISUN_PG_PASSWORD": str(params["password"]),
            "ORISUN_PG_NAME": str(params["dbname"])}


def save_body(boundary: str, stream: str, types: list[str], expected_version: int = -1) -> tuple[str, list[str]]:
    """A SaveEvents body of events of ``types``, and their ids."""
    ids = [str(uuid.uuid4()) for _ in types]
    events = [{"event_id": i, "event_type": t, "data": json.dumps({"n": n}), "tags": [{"key": "k", "value": "v"}]}
              for n, (i, t) in enumerate(zip(ids, types, strict=True))]
    body = {"boundary": boundary, "stream": {"name": stream, "expected_version": expected_version}, "events": events}
    return json.dumps(body), ids


# --- 4. Standalone mode: the brief's command line and examples, and a restart --------------------


def subscribe_to_events(process: ExeProcess) -> list[str]:
    """The brief's SubscribeToEvents example: history, then live events; the ids received."""
    body, before = save_body("payments", "payment-1", ["PaymentInitiated", "OrderCreated", "PaymentAuthorized"])
    process.call("SaveEvents", body)
    stream = GrpcurlStream(process.address, "eventstore.EventStore/SubscribeToEvents", BRIEF_SUBSCRIBE_TO_EVENTS)
    try:
        def received(count: int) -> bool:
            stream.check()
            return len(stream.objects) >= count

        wait_for(lambda: received(2), 30, "the history of the brief's subscription")
        body, after = save_body("payments", "payment-1", ["PaymentFailed", "PaymentSettled"], expected_version=2)
        process.call("SaveEvents", body)
        wait_for(lambda: received(3), 30, "the live event of the brief's subscription")
        got = [o["event_id"] for o in stream.objects]
        assert got == [before[0], before[2], after[0]], process.tail()
        return got
    finally:
        stream.close()


def subscribe_to_pubsub(process: ExeProcess) -> None:
    """The brief's SubscribeToPubSub example receives what is published on its subject."""
    message = {"subject": "inventory.updates", "data": '{"sku": "SKU-1", "quantity_change": -1}'}
    stream = GrpcurlStream(process.address, "eventstore.EventStore/SubscribeToPubSub", BRIEF_SUBSCRIBE_TO_PUBSUB)
    try:
        def delivered() -> bool:  # a consumer gets what is published after it subscribed: publish until it has
            stream.check()
            assert process.call("PublishToPubSub", json.dumps(message)) == {}
            return bool(stream.objects)

        wait_for(delivered, 30, "a message in the brief's pub/sub subscription")
        for received in stream.objects:
            assert received["message"].pop("id"), received
            assert received == {"message": message}
    finally:
        stream.close()


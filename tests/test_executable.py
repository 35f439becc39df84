"""The one-file executable (``python build.py``) as a user runs it: built once for the module, then
started with no configuration, with the brief's "Standalone Mode" and "Clustered Mode" command
lines, and stopped with SIGTERM or a Ctrl-C to its process group. The brief's grpcurl examples run
verbatim against it with the real grpcurl."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict

import build
from orisun.runtime.postgres import EmbeddedPostgres
from orisun.runtime.workers import WORKER_FLAG
from tests.brief import (
    BRIEF_GET_EVENTS,
    BRIEF_PUBLISH,
    BRIEF_SAVE_EVENTS,
    BRIEF_SUBSCRIBE_TO_EVENTS,
    BRIEF_SUBSCRIBE_TO_PUBSUB,
)
from tests.support import (
    GrpcurlStream,
    children_of,
    command_line,
    fresh_database,
    grpcurl,
    shared_tmpdir,
    wait_for,
)

pytestmark = [pytest.mark.executable, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parent.parent
NAME = build.executable_name(*build.host_target())
SCHEMAS = "users:test2,orders,payments,public"  # the boundaries the brief's examples use
SAVE_EXPECTED_RESULT = {"log_position": {"commit_position": "2", "prepare_position": "2"}, "new_stream_version": "1"}
STOP_TIMEOUT = 60.0


# --- The build -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def executable() -> Iterator[Path]:
    """``python build.py exe`` into a temp dir, once for the module; the executable."""
    tmp = shared_tmpdir("orisun-exe-build-")
    try:
        result = subprocess.run(
            [sys.executable, str(ROOT / "build.py"), "exe", "--dist", str(tmp / "dist"), "--work", str(tmp / "work")],
            cwd=ROOT, capture_output=True, text=True, timeout=280, check=False,
        )
        assert result.returncode == 0, f"build.py exe failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        yield tmp / "dist" / NAME
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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


# --- 1. The build output -------------------------------------------------------------------------


def test_build_writes_the_executable_and_its_checksum(executable: Path) -> None:
    assert executable.is_file()
    assert executable.stat().st_mode & 0o111 == 0o111, oct(executable.stat().st_mode)
    assert executable.read_bytes()[:4] == b"\x7fELF"
    checksum = executable.with_name(f"{NAME}.sha256")
    digest = hashlib.sha256(executable.read_bytes()).hexdigest()
    assert checksum.read_text(encoding="ascii") == f"{digest}  {NAME}\n"
    if shutil.which("sha256sum"):
        verified = subprocess.run(["sha256sum", "-c", checksum.name], cwd=executable.parent, capture_output=True,
                                  text=True, timeout=60, check=False)
        assert verified.returncode == 0, verified.stdout + verified.stderr


def test_build_refuses_a_foreign_platform() -> None:
    foreign = next(t for t in (("windows", "amd64"), *build.TARGETS) if t != build.host_target())
    result = subprocess.run([sys.executable, str(ROOT / "build.py"), *foreign], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "own runner" in lines[0], result.stderr


# --- 2. The command line -------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["--version", "--help"])
def test_version_and_help_match_the_orisun_command(executable: Path, option: str) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root"), "COLUMNS": "100"}
    ran = subprocess.run([str(executable), option], env=env, capture_output=True, text=True, timeout=60, check=False)
    module = subprocess.run([sys.executable, "-m", "orisun", option], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    assert (module.returncode, module.stderr) == (0, ""), module.stderr
    assert (ran.returncode, ran.stderr) == (0, ""), ran.stderr
    assert ran.stdout == module.stdout
    assert ran.stdout.startswith("orisun " if option == "--version" else "usage: orisun ")


# --- 3. No configuration: the embedded default, as an unprivileged user --------------------------


def test_no_configuration_runs_the_embedded_default_as_an_unprivileged_user(
    executable: Path, launch: Launch, scratch: Path
) -> None:
    for host, port, variable in (("0.0.0.0", 50051, "ORISUN_GRPC_PORT"), ("127.0.0.1", 4222, "ORISUN_NATS_PORT"),
                                 ("0.0.0.0", 8991, "ORISUN_ADMIN_PORT")):
        if port_in_use(host, port):
            pytest.skip(f"port {port} (the default {variable}) is in use on this machine")
    exe = make_dir(scratch / "bin") / NAME
    shutil.copy2(executable, exe)
    exe.chmod(0o755)
    home, tmpdir = make_dir(scratch / "home", "nobody"), make_dir(scratch / "tmp", "nobody")

    process = launch(exe, user_env(home, tmpdir), user="nobody")
    process.wait_serving()
    output = process.output()
    assert "serving gRPC on 0.0.0.0:50051" in output, process.tail()
    assert "NATS JetStream listening on nats://127.0.0.1:4222" in output, process.tail()
    assert "Admin dashboard on http://localhost:8991/" in output, process.tail()
    with urllib.request.urlopen("http://127.0.0.1:8991/login", timeout=10) as login_page:  # served from the bundle
        assert login_page.status == 200 and b"<html" in login_page.read().lower()
    data_dir = home / ".local" / "share" / "orisun"
    assert (data_dir / "postgres").is_dir() and any((data_dir / "bin").iterdir()), process.tail()

    listed = grpcurl("127.0.0.1:50051", "list")
    assert listed.returncode == 0 and "eventstore.EventStore" in listed.stdout.split(), listed.stderr
    # No boundary configured but the admin one: the brief's example on `users` is refused.
    refused = grpcurl(process.address, "eventstore.EventStore/SaveEvents", data=BRIEF_SAVE_EVENTS)
    assert refused.returncode != 0 and "NotFound" in refused.stderr and "users" in refused.stderr, refused.stderr
    body, ids = save_body("orisun_admin", "exe-1", ["Pinged"])
    assert process.call("SaveEvents", body) == {"log_position": {"commit_position": "1", "prepare_position": "1"}}
    read = process.call("GetEvents", '{"boundary": "orisun_admin", "stream": {"name": "exe-1"}}')
    assert [(e["event_id"], e["event_type"], e["data"]) for e in read["events"]] == [(ids[0], "Pinged", '{"n": 0}')]

    assert process.stop(signal.SIGTERM) == 0, process.tail()
    process.assert_nothing_left(tmpdir)


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


def test_standalone_mode_serves_the_brief_examples_and_keeps_events_across_restarts(
    executable: Path, launch: Launch, scratch: Path, postgres: EmbeddedPostgres
) -> None:
    with fresh_database(postgres.conninfo, "test_exe") as conninfo:
        tmpdir = make_dir(scratch / "tmp")
        # The brief's Standalone Mode, in its order; ORISUN_DATA_DIR keeps the NATS store in the test's dir.
        # With two worker processes serving gRPC (ORISUN_WORKERS), whatever this machine's CPUs.
        env = user_env(Path.home(), tmpdir, **pg_env(conninfo), ORISUN_PG_SCHEMAS=SCHEMAS,
                       ORISUN_GRPC_PORT=str(free_port()), ORISUN_NATS_PORT=str(free_port()), ORISUN_ADMIN_PORT="0",
                       ORISUN_DATA_DIR=str(make_dir(scratch / "data")), ORISUN_WORKERS="2")
        first = launch(executable, env)
        first.wait_serving()
        workers = [pid for pid in first.tree if WORKER_FLAG in command_line(pid)]
        assert len(workers) == 2, f"{first.tree}\n{first.tail()}"
        # The workers run from the folder the bootloader unpacked for the supervisor: one only.
        assert len([p for p in tmpdir.iterdir() if p.name.startswith("_MEI")]) == 1, list(tmpdir.iterdir())
        # ... and run Orisun directly: the supervisor (the bootloader's child) is their parent, no
        # bootloader of their own in between.
        assert all(pid in children_of(supervisor) for supervisor in children_of(first.proc.pid)
                   for pid in workers), f"{first.tree}\n{first.tail()}"
        assert first.call("SaveEvents", BRIEF_SAVE_EVENTS) == SAVE_EXPECTED_RESULT
        user_stream = '{"boundary": "users", "stream": {"name": "user-1234"}}'
        users = first.call("GetEvents", user_stream)
        assert [(e["event_id"], e["event_type"], e["position"]["prepare_position"]) for e in users["events"]] == [
            ("0191b93c-5f3c-75c8-92ce-5a3300709178", "UserRegistered", "1"),
            ("0191b93c-5f3c-75c8-92ce-5a3300709179", "UserProfileCompleted", "2"),
        ], first.tail()

        # The brief's GetEvents reads order-789 after position {1000, 999}: fill `orders` up to 1000 first.
        filler, _ = save_body("orders", "order-filler", ["OrderCreated"] * 1000)
        assert first.call("SaveEvents", filler)["log_position"] == {"commit_position": "1000",
                                                                    "prepare_position": "1000"}
        order, order_ids = save_body("orders", "order-789", ["OrderCreated", "ItemAdded", "PaymentProcessed",
                                                             "OrderShipped"])
        first.call("SaveEvents", order)
        orders = first.call("GetEvents", BRIEF_GET_EVENTS)
        assert [(e["event_id"], e["stream_id"], e["position"]["prepare_position"]) for e in orders["events"]] == [
            (order_ids[0], "order-789", "1001"), (order_ids[2], "order-789", "1003"),
            (order_ids[3], "order-789", "1004")], first.tail()

        subscribed = subscribe_to_events(first)
        assert first.call("PublishToPubSub", BRIEF_PUBLISH) == {}
        subscribe_to_pubsub(first)
        assert first.stop(signal.SIGTERM) == 0, first.tail()
        first.assert_nothing_left(tmpdir)

        second = launch(executable, env)
        second.wait_serving()
        assert second.call("GetEvents", user_stream) == users
        assert second.call("GetEvents", BRIEF_GET_EVENTS) == orders
        # What the subscription received is what the brief's query reads after the restart.
        query = {"boundary": "payments", "query": json.loads(BRIEF_SUBSCRIBE_TO_EVENTS)["query"]}
        assert [e["event_id"] for e in second.call("GetEvents", json.dumps(query))["events"]] == subscribed
        assert second.stop(signal.SIGTERM) == 0, second.tail()
        second.assert_nothing_left(tmpdir)


# --- 5. Clustered mode: the brief's command line, three times --------------------------------------


def test_clustered_mode_command_lines_form_a_cluster_and_serve(
    executable: Path, launch: Launch, scratch: Path, postgres: EmbeddedPostgres
) -> None:
    """The brief's Clustered Mode example is one node of three (cluster port 6222, routes to 6333
    and 6334): run the three, each with the brief's variables and its own ports."""
    wanted = (6222, 6333, 6334)
    ports = list(wanted) if not any(port_in_use("127.0.0.1", p) for p in wanted) else [free_port() for _ in wanted]
    with fresh_database(postgres.conninfo, "test_exe") as conninfo:
        tmpdir = make_dir(scratch / "tmp")
        nodes = []
        for n, port in enumerate(ports):
            routes = ",".join(f"nats://localhost:{other}" for other in ports if other != port)
            env = user_env(
                Path.home(), tmpdir, **pg_env(conninfo), ORISUN_PG_SCHEMAS="public",
                ORISUN_GRPC_PORT=str(free_port()), ORISUN_NATS_PORT=str(free_port()), ORISUN_ADMIN_PORT="0",
                ORISUN_NATS_CLUSTER_ENABLED="true", ORISUN_NATS_CLUSTER_NAME="orisun-cluster",
                ORISUN_NATS_CLUSTER_HOST="localhost", ORISUN_NATS_CLUSTER_PORT=str(port),
                ORISUN_NATS_CLUSTER_USERNAME="nats", ORISUN_NATS_CLUSTER_PASSWORD="your_cluster_password",
                ORISUN_NATS_CLUSTER_ROUTES=routes, ORISUN_DATA_DIR=str(make_dir(scratch / f"data-{n}")),
            )
            nodes.append(launch(executable, env))
        for node in nodes:  # a node serves once a majority of the cluster is up
            node.wait_serving()
        listed = grpcurl(nodes[0].address, "list")
        assert listed.returncode == 0 and "eventstore.EventStore" in listed.stdout.split(), listed.stderr
        body, ids = save_body("public", "clustered-1", ["Pinged"])
        assert nodes[1].call("SaveEvents", body) == {"log_position": {"commit_position": "1", "prepare_position": "1"}}
        read = nodes[2].call("GetEvents", '{"boundary": "public", "stream": {"name": "clustered-1"}}')
        assert [e["event_id"] for e in read["events"]] == ids
        for node in nodes:
            assert node.stop(signal.SIGTERM) == 0, node.tail()
        for node in nodes:
            node.assert_nothing_left(tmpdir)


# --- 6. Ctrl-C: SIGINT to the whole process group ------------------------------------------------


def test_ctrl_c_to_the_process_group_stops_cleanly(executable: Path, launch: Launch, scratch: Path) -> None:
    """As root with ORISUN_DATA_DIR and the embedded PostgreSQL (which then runs as nobody)."""
    tmpdir, data_dir = make_dir(scratch / "tmp"), make_dir(scratch / "data")
    env = user_env(Path.home(), tmpdir, ORISUN_DATA_DIR=str(data_dir), ORISUN_GRPC_PORT=str(free_port()),
                   ORISUN_NATS_PORT=str(free_port()), ORISUN_ADMIN_PORT="0")
    process = launch(executable, env, new_session=True)
    process.wait_serving()
    body, _ = save_body("orisun_admin", "ctrl-c", ["Pinged"])
    assert process.call("SaveEvents", body) == {"log_position": {"commit_position": "1", "prepare_position": "1"}}
    assert (data_dir / "postgres").stat().st_uid == pwd.getpwnam("nobody").pw_uid
    assert process.stop(signal.SIGINT, group=True) == 0, process.tail()
    assert "Orisun stopped" in process.output(), process.tail()
    process.assert_nothing_left(tmpdir)


# --- 7. SIGKILL to the executable's pid, and the release workflow's smoke test ---------------------


def test_sigkill_of_the_executable_stops_orisun_and_its_children(
    executable: Path, launch: Launch, scratch: Path
) -> None:
    """The pid a user (or docker, or systemd) holds is PyInstaller's bootloader; Orisun runs in its
    child. A SIGKILL there cannot be forwarded: Orisun must notice and stop by itself, cleanly."""
    tmpdir, data_dir = make_dir(scratch / "tmp"), make_dir(scratch / "data")
    env = user_env(Path.home(), tmpdir, ORISUN_DATA_DIR=str(data_dir), ORISUN_GRPC_PORT=str(free_port()),
                   ORISUN_NATS_PORT=str(free_port()), ORISUN_ADMIN_PORT="0")
    process = launch(executable, env)
    process.wait_serving()
    body, ids = save_body("orisun_admin", "sigkill", ["Pinged"])
    process.call("SaveEvents", body)
    assert process.stop(signal.SIGKILL) == -signal.SIGKILL
    process.assert_nothing_left(tmpdir)
    assert "Orisun stopped" in process.output(), process.tail()  # a clean stop, not a crash

    again = launch(executable, env)
    again.wait_serving()
    read = again.call("GetEvents", '{"boundary": "orisun_admin", "stream": {"name": "sigkill"}}')
    assert [e["event_id"] for e in read["events"]] == ids
    assert again.stop(signal.SIGTERM) == 0, again.tail()


def test_the_release_smoke_test_passes(executable: Path) -> None:
    # What .github/workflows/release.yml runs on every platform, run here on this one.
    result = subprocess.run([sys.executable, str(ROOT / "packaging" / "smoke.py"), str(executable)], cwd=ROOT,
                            capture_output=True, text=True, timeout=280, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "smoke test passed" in result.stdout

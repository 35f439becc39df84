"""The one-file executable (``python build.py``) as a user runs it: built once for the module, then
started with no configuration, with the brief's "Standalone Mode" and "Clustered Mode" command
lines, and stopped with SIGTERM or a Ctrl-C to its process group. The brief's grpcurl examples run
verbatim against it with the real grpcurl. How it is run: tests/executable_support.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import build
from orisun.runtime.postgres import EmbeddedPostgres
from orisun.runtime.workers import WORKER_FLAG
from tests import executable_support
from tests.brief import BRIEF_GET_EVENTS, BRIEF_PUBLISH, BRIEF_SAVE_EVENTS, BRIEF_SUBSCRIBE_TO_EVENTS
from tests.executable_support import (
    Launch,
    free_port,
    make_dir,
    pg_env,
    port_in_use,
    save_body,
    subscribe_to_events,
    subscribe_to_pubsub,
    user_env,
)
from tests.support import children_of, command_line, fresh_database, grpcurl, shared_tmpdir

# Fixtures of tests/executable_support.py, bound to names of this module so that pytest finds them here.
scratch = executable_support.scratch
launch = executable_support.launch


pytestmark = [pytest.mark.executable, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parent.parent
NAME = build.executable_name(*build.host_target())
SCHEMAS = "users:test2,orders,payments,public"  # the boundaries the brief's examples use
SAVE_EXPECTED_RESULT = {"log_position": {"commit_position": "2", "prepare_position": "2"}, "new_stream_version": "1"}


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


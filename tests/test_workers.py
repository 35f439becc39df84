"""Worker processes (``ORISUN_WORKERS``): a supervisor and its workers on one gRPC port, their
lifecycle:

- the variable: invalid values exit 2 with one line naming it; a port in use (even by a listener
  that allows SO_REUSEPORT) exits 1 naming ORISUN_GRPC_PORT, with nothing left running;
- SIGTERM drains every worker, exits 0 and leaves no process behind; one feed publisher per
  boundary across the node;
- a worker SIGKILLed under load is restarted; no acknowledged event is lost and subscribers that
  resume from their last position get every event once, in order.

Every guarantee across workers is in tests/test_workers_guarantees.py; shared fixtures and helpers
in tests/workers_support.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from tests import workers_support
from tests.support import CHANNEL_OPTIONS, OrisunProcess, ServerThread, alive, connections, free_port, grpcurl, wait_for
from tests.workers_support import AUTH, BOUNDARY, channel, read_all, save, worker_pids

# Fixtures of tests/workers_support.py, bound to names of this module so that pytest finds them here.
node = workers_support.node


pytestmark = pytest.mark.timeout(120)


# --- The variable and the port -------------------------------------------------------------------


@pytest.mark.parametrize("stdin", [b"", b"not the supervisor's instructions\n"], ids=["empty", "garbage"])
def test_worker_flag_run_by_hand_exits_2_with_one_line(stdin: bytes) -> None:
    """--worker is the supervisor's; run by hand, it says so instead of a traceback."""
    done = subprocess.run([sys.executable, "-m", "orisun", "--worker"], input=stdin, capture_output=True, timeout=60)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "--worker" in lines[0] and "Traceback" not in lines[0], done.stderr


def external_pg_env(conninfo: str) -> dict[str, str]:
    params = conninfo_to_dict(conninfo)
    return {"ORISUN_PG_HOST": str(params["host"]), "ORISUN_PG_PORT": str(params["port"]),
            "ORISUN_PG_USER": str(params["user"]), "ORISUN_PG_PASSWORD": str(params.get("password", "")),
            "ORISUN_PG_NAME": str(params["dbname"])}


@pytest.mark.parametrize("reuse_port", [False, True], ids=["plain-listener", "reuseport-listener"])
def test_a_grpc_port_in_use_exits_1_naming_the_variable_and_leaves_nothing(
    database: str, data_dir: Path, reuse_port: bool
) -> None:
    """A listener that allows SO_REUSEPORT (as the workers' do) would share the port with the
    workers without an error; the supervisor's check still refuses it."""
    with socket.socket() as taken:
        if reuse_port:
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**external_pg_env(database), "ORISUN_DATA_DIR": str(data_dir), "ORISUN_WORKERS": "2",
               "ORISUN_GRPC_HOST": "127.0.0.1", "ORISUN_GRPC_PORT": str(port), "ORISUN_NATS_PORT": "0",
               "ORISUN_ADMIN_PORT": "0"}
        process = OrisunProcess(env)
        try:
            assert process.wait_exit(60) == 1, process.output
        finally:
            process.kill()
        assert "ORISUN_GRPC_PORT" in process.output and "in use" in process.output, process.output
        assert "Traceback" not in process.output
        assert not process.children(), "processes left behind"
        assert "worker" not in process.output, "workers started although the port is taken"


def test_sigterm_drains_every_worker_exits_0_and_leaves_nothing(database: str, data_dir: Path) -> None:
    port = free_port()
    env = {**external_pg_env(database), "ORISUN_DATA_DIR": str(data_dir), "ORISUN_WORKERS": "2",
           "ORISUN_PG_SCHEMAS": "orders", "ORISUN_GRPC_HOST": "127.0.0.1", "ORISUN_GRPC_PORT": str(port),
           "ORISUN_NATS_PORT": "0", "ORISUN_ADMIN_PORT": "0"}
    process = OrisunProcess(env)
    try:
        process.wait_serving()
        workers = process.workers()
        assert len(workers) == 2, process.output
        children = process.children()
        assert len(children) == 3, process.output  # nats-server and the two workers (PostgreSQL is external)
        listed = grpcurl(f"127.0.0.1:{port}", "list")
        assert listed.returncode == 0 and "eventstore.EventStore" in listed.stdout, listed.stderr
        # One feed publisher per boundary for the whole node (the supervisor's: it starts first).
        for boundary in ("orders", "orisun_admin"):
            assert process.output.count(f"now publishes the live feed of boundary '{boundary}'") == 1, process.output
        # Writes go on until the stop: each is acknowledged (then stored) or refused, none half-done.
        writing = PlainWriter(f"127.0.0.1:{port}")
        writing.start()
        wait_for(lambda: len(writing.acknowledged) >= 20, 30, "the writer to get going")
        # A subscription stays open through the stop: it is ended, not waited for.
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as open_channel:
            call = pb_grpc.EventStoreStub(open_channel).SubscribeToEvents(
                pb.CatchUpSubscribeToEventStoreRequest(boundary="orders"), metadata=AUTH, timeout=60)
            wait_for(lambda: sum(connections(workers, port).values()) >= 1, 10, "the subscription to connect")
            process.proc.send_signal(signal.SIGTERM)
            assert process.wait_exit(60) == 0, process.output
            with pytest.raises(grpc.RpcError):  # it ends with an error after what it received
                for _ in call:
                    pass
        wait_for(lambda: not any(alive(pid) for pid in children), 10, "every child to be gone")
        writing.join(30)
        with psycopg.connect(database) as conn:
            stored = {str(row[0]) for row in conn.execute("SELECT event_id FROM orders.events")}
        assert set(writing.acknowledged) <= stored, "an acknowledged write was lost in the stop"
        for index in (1, 2):
            assert f"worker {index} stopped (exit code 0)" in process.output, process.output
        assert "Orisun stopped" in process.output
    finally:
        process.kill()


def test_a_worker_that_keeps_dying_stops_orisun_with_status_1(database: str, data_dir: Path) -> None:
    """The same budget as nats-server and PostgreSQL: restarted 5 times within a minute, then Orisun
    stops rather than serve with fewer workers than asked for."""
    env = {**external_pg_env(database), "ORISUN_DATA_DIR": str(data_dir), "ORISUN_WORKERS": "2",
           "ORISUN_GRPC_HOST": "127.0.0.1", "ORISUN_GRPC_PORT": str(free_port()), "ORISUN_NATS_PORT": "0",
           "ORISUN_ADMIN_PORT": "0"}
    process = OrisunProcess(env)
    try:
        process.wait_serving()
        killed: set[int] = set()
        while process.proc.poll() is None:
            for pid in process.workers():
                if pid not in killed:
                    killed.add(pid)
                    os.kill(pid, signal.SIGKILL)
            wait_for(lambda: process.proc.poll() is not None or set(process.workers()) - killed, 30,
                     f"a new worker or the end ({len(killed)} killed)\n{process.output}")
        assert process.wait_exit() == 1, process.output
        assert "exited 6 times within 60 s" in process.output, process.output
        assert len(killed) <= 12, f"{len(killed)} kills: the budget is per worker, 5 restarts each"
        assert not process.children(), "processes left behind"
    finally:
        process.kill()


# --- A worker killed under load --------------------------------------------------------------------


class PlainWriter(threading.Thread):
    """Appends one event at a time to boundary orders until its calls fail (the server stopped)."""

    def __init__(self, address: str) -> None:
        super().__init__(name="plain-writer", daemon=True)
        self.address = address
        self.acknowledged: list[str] = []

    def run(self) -> None:
        with grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS) as each:
            stub = pb_grpc.EventStoreStub(each)
            while True:
                event_id = str(uuid.uuid4())
                request = pb.SaveEventsRequest(
                    boundary="orders", stream=pb.SaveStreamQuery(name="stop-writer", expected_version=-2),
                    events=[pb.EventToSave(event_id=event_id, event_type="Stopping", data="{}")])
                try:
                    stub.SaveEvents(request, metadata=AUTH, timeout=30)
                except grpc.RpcError:
                    return
                self.acknowledged.append(event_id)


class Writer(threading.Thread):
    """Appends one event at a time to its own stream until stopped; retries an ambiguous call
    exactly (an idempotent retry); records what was acknowledged."""

    def __init__(self, server: ServerThread, index: int) -> None:
        super().__init__(name=f"writer-{index}", daemon=True)
        self.server = server
        self.stream = f"load-{index}-{uuid.uuid4().hex[:6]}"
        self.acknowledged: list[str] = []
        self.retries = 0
        self.stopping = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            self.failure = exc

    def _run(self) -> None:
        each = channel(self.server)
        version = -1
        while not self.stopping.is_set():
            event_id = str(uuid.uuid4())
            while True:
                try:
                    save(pb_grpc.EventStoreStub(each), self.stream, version, event_id)
                    break
                except grpc.RpcError as exc:
                    if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                                          grpc.StatusCode.UNKNOWN):
                        raise
                    self.retries += 1
                    each.close()
                    each = channel(self.server)
            self.acknowledged.append(event_id)
            version += 1
        each.close()


class Follower(threading.Thread):
    """SubscribeToEvents from the start; when its call fails, subscribes again after the last
    event it received, as a client resuming from its checkpoint does."""

    def __init__(self, server: ServerThread, index: int) -> None:
        super().__init__(name=f"follower-{index}", daemon=True)
        self.server = server
        self.events: list[pb.Event] = []
        self.lock = threading.Lock()
        self.resumed = 0
        self.stopping = threading.Event()
        self.call: Any = None

    def received(self) -> list[pb.Event]:
        with self.lock:
            return list(self.events)

    def run(self) -> None:
        while not self.stopping.is_set():
            each = channel(self.server)
            with self.lock:
                after = self.events[-1].position if self.events else None
            self.call = pb_grpc.EventStoreStub(each).SubscribeToEvents(
                pb.CatchUpSubscribeToEventStoreRequest(boundary=BOUNDARY, position=after), metadata=AUTH, timeout=100)
            try:
                for event in self.call:
                    with self.lock:
                        self.events.append(event)
            except grpc.RpcError:
                if not self.stopping.is_set():
                    self.resumed += 1
            finally:
                each.close()

    def stop(self) -> None:
        self.stopping.set()
        if self.call is not None:
            self.call.cancel()
        self.join(10)


def test_a_worker_killed_under_load_is_restarted_and_nothing_is_lost(node: ServerThread) -> None:
    stub_channel = channel(node)
    stub = pb_grpc.EventStoreStub(stub_channel)
    start = read_all(stub)
    followers = [Follower(node, i) for i in range(4)]
    writers = [Writer(node, i) for i in range(4)]
    for thread in (*followers, *writers):
        thread.start()
    try:
        total = lambda: sum(len(w.acknowledged) for w in writers)  # noqa: E731
        wait_for(lambda: total() >= 40, 30, "the writers to get going")
        port = node.app.grpc_port
        before = worker_pids(node)
        served = connections(before, port)
        victim = max(served, key=lambda pid: served[pid])
        assert served[victim] > 0, served
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: victim not in worker_pids(node) and len(worker_pids(node)) == 2, 30,
                 "the killed worker to be replaced")
        wait_for(lambda: node.app.workers is not None and node.app.workers.running == 2, 30, "two workers running")
        after_kill = total()
        wait_for(lambda: total() >= after_kill + 40, 30, "writes to go on after the restart")
    finally:
        for writer in writers:
            writer.stopping.set()
        for writer in writers:
            writer.join(30)
    for writer in writers:
        assert writer.failure is None, f"{writer.name}: {writer.failure!r}"
    assert sum(w.retries for w in writers) + sum(f.resumed for f in followers) > 0, "nothing noticed the kill"

    stored = read_all(stub)
    new = stored[len(start):]
    ids = [e.event_id for e in new]
    assert len(ids) == len(set(ids)), "an event stored twice"
    acknowledged = {i for w in writers for i in w.acknowledged}
    assert acknowledged <= set(ids), f"{len(acknowledged - set(ids))} acknowledged events lost"
    positions = [e.position.prepare_position for e in stored]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    try:
        for follower in followers:
            wait_for(lambda f=follower: len(f.received()) >= len(stored), 30, f"{follower.name} to catch up")
            got = [(e.event_id, e.position.prepare_position) for e in follower.received()]
            assert got == [(e.event_id, e.position.prepare_position) for e in stored], (
                f"{follower.name} (resumed {follower.resumed} times) differs from the log")
    finally:
        for follower in followers:
            follower.stop()
        stub_channel.close()


"""Worker processes (``ORISUN_WORKERS``): a supervisor and its workers on one gRPC port.

- the variable: invalid values exit 2 with one line naming it; a port in use (even by a listener
  that allows SO_REUSEPORT) exits 1 naming ORISUN_GRPC_PORT, with nothing left running;
- SIGTERM drains every worker, exits 0 and leaves no process behind; one feed publisher per
  boundary across the node;
- every guarantee across workers: calls spread over them, subscriber_name is exclusive, a changed
  password is refused by every worker, the dashboard counts every worker's subscribers;
- a worker SIGKILLed under load is restarted; no acknowledged event is lost and subscribers that
  resume from their last position get every event once, in order.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from orisun.runtime.postgres import EmbeddedPostgres
from tests.support import (
    CHANNEL_OPTIONS,
    OrisunProcess,
    ServerThread,
    alive,
    auth_metadata,
    connections,
    free_port,
    grpcurl,
    running_server,
    wait_for,
)
from tests.test_dashboard_http import Client, logged_in

pytestmark = pytest.mark.timeout(120)

BOUNDARY = "work"
BOUNDARIES = {"orisun_admin": "orisun_admin", BOUNDARY: "work_store"}
AUTH = auth_metadata()


@pytest.fixture(scope="module")
def node(postgres: EmbeddedPostgres) -> Iterator[ServerThread]:
    """A supervisor with two workers, for the whole module."""
    with running_server(postgres.conninfo, "test_workers", boundaries=BOUNDARIES, workers=2) as server:
        yield server


def worker_pids(server: ServerThread) -> list[int]:
    assert server.app.workers is not None
    return [pid for pid in server.app.workers.pids if pid is not None]


def channel(server: ServerThread) -> grpc.Channel:
    return grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS)


def on_every_worker(server: ServerThread, tries: int = 40) -> list[grpc.Channel]:
    """Channels (each its own connection), opened until every worker serves at least one."""
    opened: list[grpc.Channel] = []
    pids = worker_pids(server)
    for _ in range(tries):
        each = channel(server)
        grpc.channel_ready_future(each).result(timeout=10)
        opened.append(each)
        if all(count > 0 for count in connections(pids, server.app.grpc_port).values()):
            return opened
    raise AssertionError(f"{tries} connections did not reach every worker: {connections(pids, server.app.grpc_port)}")


def save(stub: pb_grpc.EventStoreStub, stream: str, expected: int, *event_ids: str) -> pb.WriteResult:
    request = pb.SaveEventsRequest(
        boundary=BOUNDARY, stream=pb.SaveStreamQuery(name=stream, expected_version=expected),
        events=[pb.EventToSave(event_id=i, event_type="Worked", data='{"n": 1}') for i in event_ids])
    result: pb.WriteResult = stub.SaveEvents(request, metadata=AUTH, timeout=30)
    return result


def read_all(stub: pb_grpc.EventStoreStub) -> list[pb.Event]:
    events: list[pb.Event] = []
    position = pb.Position(commit_position=0, prepare_position=0)
    while True:
        page = stub.GetEvents(pb.GetEventsRequest(boundary=BOUNDARY, from_position=position, count=1000,
                                                  direction=pb.ASC), metadata=AUTH, timeout=30).events
        events += [e for e in page if (e.position.commit_position, e.position.prepare_position) >
                   (position.commit_position, position.prepare_position)]
        if len(page) < 1000:
            return events
        position = page[-1].position


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


# --- Every guarantee across workers --------------------------------------------------------------


def test_calls_spread_over_every_worker_and_see_one_log(node: ServerThread) -> None:
    """Writes through connections to both workers form one dense log that both serve."""
    channels = on_every_worker(node)
    try:
        stubs = [pb_grpc.EventStoreStub(each) for each in channels]
        stream = f"spread-{uuid.uuid4().hex[:8]}"
        for version, stub in enumerate(stubs * 3):
            save(stub, stream, version - 1, str(uuid.uuid4()))
        logs = [[(e.stream_id, e.version) for e in read_all(stub) if e.stream_id == stream] for stub in stubs]
        assert all(log == [(stream, v) for v in range(len(stubs) * 3)] for log in logs), logs
    finally:
        for each in channels:
            each.close()


def test_a_subscriber_name_is_exclusive_across_workers(node: ServerThread) -> None:
    channels = on_every_worker(node)
    name = f"exclusive-{uuid.uuid4().hex[:8]}"
    calls: list[Any] = []
    try:
        request = pb.CatchUpSubscribeToEventStoreRequest(boundary=BOUNDARY, subscriber_name=name)
        first = pb_grpc.EventStoreStub(channels[0]).SubscribeToEvents(request, metadata=AUTH, timeout=60)
        calls.append(first)
        save(pb_grpc.EventStoreStub(channels[0]), f"x-{name}", -1, str(uuid.uuid4()))
        next(first)  # it holds the name now
        for each in channels[1:]:  # one of them is on the other worker
            second = pb_grpc.EventStoreStub(each).SubscribeToEvents(request, metadata=AUTH, timeout=60)
            calls.append(second)
            with pytest.raises(grpc.RpcError) as refused:
                next(second)
            assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS, refused.value.details()
    finally:
        for call in calls:
            call.cancel()
        for each in channels:
            each.close()


def test_a_changed_password_is_refused_by_every_worker(node: ServerThread) -> None:
    username, old, new = f"w{uuid.uuid4().hex[:8]}", "old-password-1", "new-password-2"
    users = node.app.users
    assert users is not None
    node.call(users.create("Worker test", username, old, []))
    channels = on_every_worker(node)
    try:
        request = pb.GetEventsRequest(boundary=BOUNDARY, count=1, direction=pb.ASC)
        for each in channels:  # every worker now has the old password in its cache
            pb_grpc.EventStoreStub(each).GetEvents(request, metadata=auth_metadata(username, old), timeout=30)
        node.call(users.change_password(username, new))

        refused: set[int] = set()

        def refused_everywhere() -> bool:
            # Each channel is asked until it refuses once: every refusal is a failed login, and
            # asking again would only bring the login throttle on.
            for index, each in enumerate(channels):
                if index in refused:
                    continue
                try:
                    pb_grpc.EventStoreStub(each).GetEvents(request, metadata=auth_metadata(username, old), timeout=30)
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAUTHENTICATED, exc.details()
                    refused.add(index)
                    continue
                return False
            return True

        wait_for(refused_everywhere, 10, "every worker to refuse the old password")

        def accepted(each: grpc.Channel) -> bool:
            # Those refusals may have throttled the username for a moment (node-wide, as intended):
            # the new password is then accepted once the throttle's wait is over.
            try:
                pb_grpc.EventStoreStub(each).GetEvents(request, metadata=auth_metadata(username, new), timeout=30)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAUTHENTICATED and "too many failed logins" in str(exc.details())
                return False
            return True

        for each in channels:
            wait_for(lambda each=each: accepted(each), 30, "the new password to be accepted")
    finally:
        for each in channels:
            each.close()


def by_worker(server: ServerThread, tries: int = 40) -> dict[int, grpc.Channel]:
    """A channel (its own connection) to each worker, by the worker's pid."""
    pids, port = worker_pids(server), server.app.grpc_port
    found: dict[int, grpc.Channel] = {}
    for _ in range(tries):
        before = connections(pids, port)
        each = channel(server)
        grpc.channel_ready_future(each).result(timeout=10)
        after = connections(pids, port)
        pid = next((p for p in pids if after[p] > before[p]), None)
        if pid is not None and pid not in found:
            found[pid] = each
            if len(found) == len(pids):
                return found
        else:
            each.close()
    raise AssertionError(f"{tries} connections did not reach every worker")


def test_failed_logins_are_throttled_across_every_worker_and_the_dashboard(postgres: EmbeddedPostgres) -> None:
    """Guesses spread over the workers go no faster than sent to one: five failures on one worker
    throttle new logins from that address on every worker and on the dashboard."""
    with running_server(postgres.conninfo, "test_worker_logins", boundaries=BOUNDARIES, workers=2) as server:
        users = server.app.users
        assert users is not None
        # Users never signed in: a login of theirs takes the full check, where the throttle applies.
        fresh = [(f"fresh{i}", f"fresh-password-{i}") for i in range(12)]
        for username, password in [("victim", "victim-password"), *fresh]:
            server.call(users.create("Worker test", username, password, []))
        channels = by_worker(server)
        guessed, *others = channels.values()
        request = pb.GetEventsRequest(boundary=BOUNDARY, count=1, direction=pb.ASC)
        for attempt in range(5):
            with pytest.raises(grpc.RpcError) as refused:
                pb_grpc.EventStoreStub(guessed).GetEvents(request, metadata=auth_metadata("victim", f"guess-{attempt}"),
                                                          timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "too many" not in (refused.value.details() or ""), "throttled before the fifth failure"

        unused = iter(fresh)

        def throttled_on(each: grpc.Channel) -> bool:
            username, password = next(unused)  # a success would cache that user: use each only once
            try:
                pb_grpc.EventStoreStub(each).GetEvents(request, metadata=auth_metadata(username, password), timeout=30)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAUTHENTICATED, exc.details()
                return "too many failed logins" in (exc.details() or "")
            return False

        for each in others:
            wait_for(lambda each=each: throttled_on(each), 5, "the other worker to throttle logins from the address")
        username, password = next(unused)
        client = Client(server.dashboard_url)
        wait_for(lambda: client.login(username, password).status == 429, 5, "the dashboard to throttle the address")
        for each in channels.values():
            each.close()


def test_the_dashboard_counts_the_subscribers_of_every_worker(node: ServerThread) -> None:
    channels = on_every_worker(node)
    names = [f"dash-{i}-{uuid.uuid4().hex[:6]}" for i in range(len(channels))]
    calls = [pb_grpc.EventStoreStub(each).SubscribeToEvents(
        pb.CatchUpSubscribeToEventStoreRequest(boundary=BOUNDARY, subscriber_name=name), metadata=AUTH, timeout=60)
        for each, name in zip(channels, names, strict=True)]
    try:
        client = logged_in(node)

        def listed() -> set[str]:
            body = client.get("/api/subscriptions").body
            return {each["subscriber_name"] for each in body["subscriptions"] if each["boundary"] == BOUNDARY}

        wait_for(lambda: set(names) <= listed(), 20, "every worker's subscriptions on the dashboard")

        def counted() -> int:
            overview = client.get("/api/overview").body
            return int(next(b["subscribers"] for b in overview["boundaries"] if b["boundary"] == BOUNDARY))

        wait_for(lambda: counted() == len(names), 20, f"{len(names)} live subscribers in the overview")
    finally:
        for call in calls:
            call.cancel()
        for each in channels:
            each.close()


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

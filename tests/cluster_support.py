"""The cluster harness shared by tests/test_cluster*.py (issue #7): three ``python -m orisun`` nodes on
one PostgreSQL, their nats-servers in one cluster (ORISUN_NATS_CLUSTER_*), on free ports of this
machine.

Each node logs to its own file; failures show the tails. The ``cluster`` fixture ends every reader
and writer, then every node (SIGTERM, then SIGKILL), and removes the nodes' directories.

The test files bind the fixtures here (`cluster`) to module names of their own, so that pytest finds
them there (importing a fixture that a test takes as a parameter is a lint error, F811).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from psycopg.conninfo import conninfo_to_dict

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from orisun.runtime.postgres import EmbeddedPostgres
from tests.support import auth_metadata, free_port, fresh_database, shared_tmpdir, wait_for
from tests.test_concurrency import Write

BOUNDARY = "orders"
AUTH = auth_metadata()
CLUSTER_USER, CLUSTER_PASSWORD = "orisun-route", "cluster-secret-1"
CALL_TIMEOUT = 5.0  # per unary call: one to a dead node fails at once, a hung one within this
STREAM_DEADLINE = 300.0  # no streaming call outlives its test
DELIVERY_TIMEOUT = 60.0
SERVING = "serving gRPC on"


# Every channel has its own connections, as separate clients would: a channel to a restarted node
# must not inherit a shared connection's back-off from before the restart.
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]


def free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


class Node:
    """One ``python -m orisun`` with its env (data dir included); each start logs to a new file."""

    def __init__(self, name: str, env: dict[str, str], root: Path) -> None:
        self.name, self.env, self.root = name, env, root
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path, self.starts = root / f"{name}-0.log", 0
        self.address = f"127.0.0.1:{env['ORISUN_GRPC_PORT']}"

    def start(self) -> Node:
        self.starts += 1
        self.log_path = self.root / f"{self.name}-{self.starts}.log"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("ORISUN_")}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "orisun"], env={**clean, **self.env}, stdout=log,
                                         stderr=subprocess.STDOUT)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, lines: int = 30) -> str:
        return f"--- {self.log_path.name} (last {lines} lines) ---\n" + "\n".join(self.log().splitlines()[-lines:])

    def exited(self) -> bool:
        return self.proc is None or self.proc.poll() is not None

    def wait_serving(self, timeout: float = 120) -> None:
        wait_for(lambda: SERVING in self.log() or self.exited(), timeout, f"{self.name} to serve\n{self.tail()}")
        assert not self.exited(), f"{self.name} exited with {self.proc and self.proc.returncode}\n{self.tail()}"

    def stop(self) -> None:
        """SIGTERM, then SIGKILL: this node's own process only."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


Opener = Callable[[pb_grpc.EventStoreStub, list[Any]], Any]


class Reader:
    """A server-streaming call, opened by ``opener(stub, items so far)``, read by a thread into
    ``received`` (arrival time, item). On an error it reopens the call, on the next of ``addresses``
    (staying on the last) if the node was UNAVAILABLE; with ``failover`` off it stops and keeps the error."""

    def __init__(self, label: str, addresses: Sequence[str], opener: Opener, failover: bool) -> None:
        self.label, self.addresses, self._opener, self.failover = label, list(addresses), opener, failover
        self.received: list[tuple[float, Any]] = []
        self.errors: list[tuple[float, str, str]] = []  # (when, address, status)
        self.resumed_at: list[float] = []  # the first arrival after each reconnection
        self.error: str | None = None  # why it stopped, with failover off
        self._lock, self._closing, self._call = threading.Lock(), threading.Event(), None
        self._thread = threading.Thread(target=self._run, name=f"reader-{label}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        index = 0
        while not self._closing.is_set():
            address, status, code = self.addresses[index], "the call ended without an error", None
            channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
            try:
                with self._lock:
                    self._call = call = self._opener(pb_grpc.EventStoreStub(channel), self.items())  # type: ignore[no-untyped-call]
                if self._closing.is_set():
                    call.cancel()
                for n, item in enumerate(call):
                    now = time.monotonic()
                    if n == 0 and self.errors:
                        self.resumed_at.append(now)
                    self.received.append((now, item))
            except grpc.RpcError as exc:
                status, code = f"{exc.code()} {exc.details()}", exc.code()
            finally:
                channel.close()
            if self._closing.is_set():
                return
            self.errors.append((time.monotonic(), address, status))
            if not self.failover:
                self.error = status
                return
            if code == grpc.StatusCode.UNAVAILABLE:  # that node is gone: on to the next
                index = min(index + 1, len(self.addresses) - 1)
            self._closing.wait(0.1)  # back off before reconnecting

    def items(self) -> list[Any]:
        return [item for _, item in self.received]

    def ids(self) -> list[str]:
        return [response.message.id for response in self.items()]

    def stopped(self) -> bool:
        return not self._thread.is_alive()

    def close(self) -> None:
        self._closing.set()
        with self._lock:
            if self._call is not None:
                self._call.cancel()
        self._thread.join(timeout=10)


class Cluster:
    """Three nodes sharing one database and one NATS cluster, every port chosen up front."""

    def __init__(self, conninfo: str, size: int = 3) -> None:
        pg = conninfo_to_dict(conninfo)
        self.pg_env = {"ORISUN_PG_HOST": str(pg["host"]), "ORISUN_PG_PORT": str(pg["port"]),
                       "ORISUN_PG_USER": str(pg["user"]), "ORISUN_PG_PASSWORD": str(pg.get("password", "")),
                       "ORISUN_PG_NAME": str(pg["dbname"])}
        self.root = shared_tmpdir("orisun-test-cluster-")
        ports = free_ports(3 * size)
        self.routes = [f"nats://127.0.0.1:{p}" for p in ports[2 * size:]]
        self.nodes = [self.node("abc"[i], ports[2 * i:2 * i + 2], ports[2 * size + i], self.routes)
                      for i in range(size)]
        self.closers: list[Callable[[], None]] = []
        self._channels: dict[str, grpc.Channel] = {}

    def node(self, name: str, ports: list[int], cluster_port: int, routes: list[str],
             password: str = CLUSTER_PASSWORD, timeout: str = "30s") -> Node:
        env = {**self.pg_env, "ORISUN_PG_SCHEMAS": BOUNDARY, "ORISUN_DATA_DIR": str(self.root / f"{name}-data"),
               "ORISUN_GRPC_HOST": "127.0.0.1", "ORISUN_GRPC_PORT": str(ports[0]), "ORISUN_NATS_PORT": str(ports[1]),
               "ORISUN_ADMIN_PORT": "0", "ORISUN_SHUTDOWN_TIMEOUT": "2s", "ORISUN_PUBSUB_ACK_WAIT": "5s",
               "ORISUN_NATS_CLUSTER_ENABLED": "true", "ORISUN_NATS_CLUSTER_NAME": "orisun-test",
               "ORISUN_NATS_CLUSTER_HOST": "127.0.0.1", "ORISUN_NATS_CLUSTER_PORT": str(cluster_port),
               "ORISUN_NATS_CLUSTER_USERNAME": CLUSTER_USER, "ORISUN_NATS_CLUSTER_PASSWORD": password,
               "ORISUN_NATS_CLUSTER_ROUTES": ",".join(routes), "ORISUN_NATS_CLUSTER_TIMEOUT": timeout,
               "TMPDIR": str(self.root)}  # a SIGKILLed node leaves its scratch dir: removed with the root
        return Node(name, env, self.root)

    def start(self) -> float:
        """Start all nodes at once (none can finish alone: JetStream needs a quorum); seconds taken."""
        began = time.monotonic()
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            node.wait_serving()
        return time.monotonic() - began

    def stub(self, node: Node) -> pb_grpc.EventStoreStub:
        if node.address not in self._channels:
            self._channels[node.address] = grpc.insecure_channel(node.address, options=CHANNEL_OPTIONS)
        return pb_grpc.EventStoreStub(self._channels[node.address])  # type: ignore[no-untyped-call]

    def reconnect(self, node: Node) -> None:
        """A new channel to a restarted node (the old one may still be backing off)."""
        channel = self._channels.pop(node.address, None)
        if channel is not None:
            channel.close()

    def follow(self, label: str, nodes: Sequence[Node], name: str = "", failover: bool = False) -> Reader:
        """SubscribeToEvents from the start; a reconnection resumes after the last event received."""

        def opener(stub: pb_grpc.EventStoreStub, events: list[pb.Event]) -> Any:
            request = pb.CatchUpSubscribeToEventStoreRequest(boundary=BOUNDARY, subscriber_name=name)
            if events:
                request.position.CopyFrom(events[-1].position)
            return stub.SubscribeToEvents(request, metadata=AUTH, timeout=STREAM_DEADLINE)

        reader = Reader(label, [n.address for n in nodes], opener, failover)
        self.closers.append(reader.close)
        return reader

    def consume(self, label: str, nodes: Sequence[Node], subject: str, name: str, failover: bool = False) -> Reader:
        request = pb.SubscribeRequest(subject=subject, consumer_name=name)
        reader = Reader(label, [n.address for n in nodes], lambda stub, _: stub.SubscribeToPubSub(
            request, metadata=AUTH, timeout=STREAM_DEADLINE), failover)
        self.closers.append(reader.close)
        return reader

    def close(self) -> None:
        for close in reversed(self.closers):
            close()
        for channel in self._channels.values():
            channel.close()
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def cluster(postgres: EmbeddedPostgres) -> Iterator[Cluster]:
    with fresh_database(postgres.conninfo, "test_cluster") as conninfo:
        nodes = Cluster(conninfo)
        try:
            yield nodes
        finally:
            nodes.close()


def get_all(cluster: Cluster, node: Node) -> list[pb.Event]:
    events: list[pb.Event] = []
    while True:
        request = pb.GetEventsRequest(boundary=BOUNDARY, count=10_000, direction=pb.ASC)
        if events:
            request.last_retrieved_position.CopyFrom(events[-1].position)
        got = cluster.stub(node).GetEvents(request, metadata=AUTH, timeout=30).events
        events.extend(got)
        if len(got) < 10_000:
            return events


def save(cluster: Cluster, node: Node, write: Write) -> Write:
    write.result = cluster.stub(node).SaveEvents(write.request(BOUNDARY), metadata=AUTH, timeout=CALL_TIMEOUT)
    return write


def keys(events: Sequence[pb.Event]) -> list[tuple[int, int, str]]:
    return [(e.position.prepare_position, e.position.commit_position, e.event_id) for e in events]


def tails(nodes: Sequence[Node]) -> str:
    return "\n".join(node.tail() for node in nodes)


def expect(follower: Reader, expected: list[pb.Event], nodes: Sequence[Node]) -> None:
    """Wait until ``follower`` has the last expected event, then compare everything it received."""
    head = expected[-1].position.prepare_position

    def caught_up() -> bool:
        assert follower.error is None, f"{follower.label} failed: {follower.error}\n{tails(nodes)}"
        got = follower.items()
        return bool(got) and got[-1].position.prepare_position >= head

    with contextlib.suppress(AssertionError):  # a timeout: the comparison below says what is missing
        wait_for(caught_up, DELIVERY_TIMEOUT, f"{follower.label} to reach position {head}")
    got = follower.items()
    positions = [e.position.prepare_position for e in got]
    assert follower.error is None, f"{follower.label} failed: {follower.error}\n{tails(nodes)}"
    assert keys(got) == keys(expected), (
        f"{follower.label}: received {len(got)} events, expected {len(expected)}, "
        f"{len(positions) - len(set(positions))} repeated; reconnections {follower.errors}\n{tails(nodes)}")


def publish(stub: pb_grpc.EventStoreStub, subject: str, message_id: str, data: str = '{"n": 0}') -> None:
    stub.PublishToPubSub(pb.PublishRequest(id=message_id, subject=subject, data=data), metadata=AUTH,
                         timeout=CALL_TIMEOUT)


def establish(stub: pb_grpc.EventStoreStub, subject: str, consumers: Sequence[Reader], nodes: Sequence[Node]
              ) -> set[str]:
    """Publish probes until every consumer has received one (a new consumer gets only what is
    published after it exists); the probe ids."""
    probes: set[str] = set()
    deadline = time.monotonic() + 30
    while not all(set(c.ids()) & probes for c in consumers):
        assert time.monotonic() < deadline, f"not established: {[c.label for c in consumers]}\n{tails(nodes)}"
        for consumer in consumers:
            assert consumer.error is None, f"{consumer.label} failed: {consumer.error}\n{tails(nodes)}"
        probe = str(uuid.uuid4())
        publish(stub, subject, probe, "probe")
        probes.add(probe)
        round_end = time.monotonic() + 0.5  # then the next probe, for those still waiting
        while time.monotonic() < round_end and not any(probe in c.ids() for c in consumers):
            time.sleep(0.01)
    return probes


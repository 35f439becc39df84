"""Failures on a real server: PostgreSQL connections killed and PostgreSQL stopped mid-write,
unknown boundaries and bad requests among good ones, and a graceful shutdown with writes in flight.

Outcomes are checked against the store the same way as in test_concurrency (``verify``): whatever
failed, every stored write is complete and contiguous, positions stay dense, and a write retried
with the same event ids after UNAVAILABLE is stored once.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psycopg
import pytest
from psycopg import sql

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from orisun.runtime.postgres import EmbeddedPostgres
from tests.support import CHANNEL_OPTIONS, LoopThread, ServerThread, server_settings, shared_tmpdir, wait_for
from tests.test_concurrency import AMBIGUOUS, AUTH, BOUNDARIES, BOUNDARY, Write, new_events, read_all, save, verify

pytestmark = pytest.mark.timeout(120)

SCHEMA = BOUNDARIES[BOUNDARY]
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
# Each call's gRPC deadline: a call still unanswered then counts as a hang (DEADLINE_EXCEEDED).
CALL_DEADLINE = 8.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class OwnPostgres:
    """A PostgreSQL this test may stop, restart and kill, on a fixed port (so a restart keeps it)."""

    server: EmbeddedPostgres
    loop: LoopThread

    def stop(self) -> None:
        self.loop.call(self.server.stop(), timeout=60)

    def start(self) -> None:
        self.loop.call(self.server.start(), timeout=60)

    def terminate_orisun_backends(self) -> int:
        with psycopg.connect(self.server.conninfo, autocommit=True, connect_timeout=5) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'orisun'"
            ).fetchall()
        return sum(1 for (ok,) in rows if ok)


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    directory = shared_tmpdir("orisun-test-own-pg-")
    loop = LoopThread("own-postgres")
    pg = OwnPostgres(EmbeddedPostgres(directory, port=free_port()), loop)
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()
        loop.close()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def server_on_own_postgres(own_postgres: OwnPostgres, data_dir: Path) -> Iterator[ServerThread]:
    server = ServerThread(server_settings(data_dir, own_postgres.server.conninfo, boundaries=BOUNDARIES))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def stored_events(conninfo: str, schema: str = SCHEMA) -> list[pb.Event]:
    """The boundary's events read straight from PostgreSQL, as GetEvents would return them."""
    query = sql.SQL(
        "SELECT position, commit_position, stream_name, stream_version, event_id::text, event_type, data, metadata, "
        "tags FROM {}.events ORDER BY position"
    ).format(sql.Identifier(schema))
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(query).fetchall()
    return [
        pb.Event(
            position=pb.Position(commit_position=commit, prepare_position=position),
            stream_id=stream, version=version, event_id=event_id, event_type=event_type, data=data,
            metadata=metadata, tags=[pb.Tag(key=k, value=v) for k, v in tags],
        )
        for position, commit, stream, version, event_id, event_type, data, metadata, tags in rows
    ]


async def retrying_writer(
    stub: pb_grpc.EventStoreStub, writer: int, stream: str, exact: bool, log: list[Write], done: Callable[[], bool],
    give_up: float, failures: list[str], phase: Callable[[], str],
) -> None:
    """Writes until ``done()``; a write whose outcome is unknown (UNAVAILABLE, or a deadline
    exceeded) is retried as is (same ids, same expected version) until it succeeds. Every failure
    other than UNAVAILABLE is noted in ``failures`` with the ``phase()`` it happened in."""
    version = -1
    while not done() and time.monotonic() < give_up:
        write = Write(stream, version if exact else -2, new_events(1 + writer % 3, writer), writer)
        log.append(write)
        while True:
            began, during = time.monotonic(), phase()
            await save(stub, write, deadline_s=CALL_DEADLINE)
            if write.result is not None:
                break
            if write.code != UNAVAILABLE:
                failures.append(f"writer {writer} during {during}: {write.code.name} after "
                                f"{time.monotonic() - began:.1f}s: {write.details}")
                assert write.code in AMBIGUOUS, failures[-1]
            if time.monotonic() > give_up:
                return
            await asyncio.sleep(0.05)  # a retry backoff, not a synchronisation
        version = write.result.new_stream_version


async def wait_async(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.01)


def acked(log: list[Write]) -> int:
    return sum(w.result is not None for w in log)


@pytest.mark.timeout(150)
def test_lost_database_connections_and_a_stopped_postgres(
    own_postgres: OwnPostgres, server_on_own_postgres: ServerThread
) -> None:
    server = server_on_own_postgres
    log: list[Write] = []
    read_codes: list[grpc.StatusCode] = []
    stop = threading.Event()
    killed: list[int] = []
    outage: dict[str, float] = {}
    failures: list[str] = []
    phase = ["backends being killed"]

    async def reader(stub: pb_grpc.EventStoreStub) -> None:
        while not stop.is_set():
            during = phase[0]
            try:
                await stub.GetEvents(pb.GetEventsRequest(boundary=BOUNDARY, count=50, direction=pb.DESC),
                                     metadata=AUTH, timeout=CALL_DEADLINE)
                read_codes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as exc:
                read_codes.append(exc.code())
                if exc.code() != UNAVAILABLE:
                    failures.append(f"reader during {during}: {exc.code().name}: {exc.details()}")
                await asyncio.sleep(0.05)  # a retry backoff

    def answers() -> int:
        return len(read_codes) + sum(len(w.attempts) for w in log)

    async def main() -> list[pb.Event]:
        channels = [grpc.aio.insecure_channel(server.address) for _ in range(4)]
        try:
            stubs = [pb_grpc.EventStoreStub(c) for c in channels]
            give_up = time.monotonic() + 100
            tasks = [
                asyncio.create_task(retrying_writer(stubs[w % 4], w, f"shared-{w % 2}" if w < 4 else f"own-{w}",
                                                    exact=w >= 4, log=log, done=stop.is_set, give_up=give_up,
                                                    failures=failures, phase=lambda: phase[0]))
                for w in range(8)
            ]
            tasks.append(asyncio.create_task(reader(stubs[0])))
            try:
                # 1. Kill Orisun's PostgreSQL backends five times while the writers run.
                for _ in range(5):
                    target = acked(log) + 60
                    await wait_async(lambda t=target: acked(log) >= t, 30, "writes between kills")
                    killed.append(await asyncio.to_thread(own_postgres.terminate_orisun_backends))
                # 2. Stop PostgreSQL: calls must answer UNAVAILABLE meanwhile, not hang.
                phase[0] = "backends killed"
                target = acked(log) + 60
                await wait_async(lambda: acked(log) >= target, 30, "writes before stopping PostgreSQL")
                phase[0] = "PostgreSQL stopped"
                await asyncio.to_thread(own_postgres.stop)
                began = time.monotonic()
                before = answers()
                try:
                    # Every writer and the reader answered at least twice (or a hang noted).
                    await wait_async(lambda: answers() >= before + 18 or len(failures) >= 2, 2 * CALL_DEADLINE + 10,
                                     "answers while PostgreSQL is down")
                    outage["answered_in"] = time.monotonic() - began
                finally:
                    stuck = acked(log)
                    phase[0] = "PostgreSQL restarting"
                    await asyncio.to_thread(own_postgres.start)
                    phase[0] = "PostgreSQL back"
                # 3. Back up: the writers' retries succeed again.
                await wait_async(lambda: acked(log) >= stuck + 100, 40, "writes after PostgreSQL is back")
                outage["recovered_in"] = time.monotonic() - began
            finally:
                stop.set()
                await asyncio.gather(*tasks)
            return await read_all(stubs[0])
        finally:
            for channel in channels:
                await channel.close()

    events = asyncio.run(main())
    retried = [w for w in log if len(w.attempts) > 1]
    print(f"{len(log)} writes, {acked(log)} acknowledged, {len(retried)} retried after UNAVAILABLE, "
          f"backends killed {killed}, outage {outage}, reads {len(read_codes)}")
    assert all(k > 0 for k in killed), killed
    assert retried, "no write was interrupted: the faults were not injected"
    assert all(w.result is not None for w in log), "a write never succeeded"
    # Nothing partial, nothing twice, each retry answered with what is stored.
    verify(events, log)
    assert [e.SerializeToString() for e in stored_events(own_postgres.server.conninfo)] == [
        pb.Event(event_id=e.event_id, event_type=e.event_type, data=e.data, metadata=e.metadata, tags=e.tags,
                 position=e.position, stream_id=e.stream_id, version=e.version).SerializeToString()
        for e in events
    ]
    # Every call answered OK or UNAVAILABLE within its deadline: never INTERNAL, never a hang.
    assert failures == [], "\n".join(failures)


@pytest.mark.timeout(90)
def test_unknown_boundary_and_bad_requests_fail_alone(start_server: Callable[..., ServerThread]) -> None:
    server = start_server(boundaries=BOUNDARIES)
    log: list[Write] = []

    async def main() -> list[pb.Event]:
        channels = [grpc.aio.insecure_channel(server.address) for _ in range(4)]
        try:
            stubs = [pb_grpc.EventStoreStub(c) for c in channels]
            first = Write("existing", -1, new_events(2))
            log.append(first)
            await save(stubs[0], first)
            assert first.result is not None
            taken_id = first.ids[0]
            for r in range(10):
                good = [Write(f"good-{i % 5}", -2, new_events(1 + i % 2, i)) for i in range(50)]
                conflicting = Write("good-0", 999_999, new_events(1))
                not_new = Write("existing", -1, new_events(1))
                duplicate = Write(f"dup-{r}", -2, [*new_events(1), pb.EventToSave(
                    event_id=taken_id, event_type="Again", data="{}")])
                invalid = Write("good-1", -2, [pb.EventToSave(event_id=str(uuid.uuid4()), event_type="T",
                                                              data="{not json")])
                bad = [conflicting, not_new, duplicate, invalid]
                log.extend(good + bad)
                calls = [save(stubs[i % 4], w) for i, w in enumerate(good[:25] + bad + good[25:])]
                unknown = [
                    stubs[i % 4].SaveEvents(pb.SaveEventsRequest(
                        boundary="no_such_boundary", stream=pb.SaveStreamQuery(name="s", expected_version=-2),
                        events=new_events(1)), metadata=AUTH, timeout=10)
                    for i in range(5)
                ]
                outcomes = await asyncio.gather(*calls, *unknown, return_exceptions=True)
                for failure in outcomes[len(calls):]:
                    assert isinstance(failure, grpc.aio.AioRpcError), failure
                    assert failure.code() == grpc.StatusCode.NOT_FOUND
                    assert "no_such_boundary" in (failure.details() or "")
                assert [(w.code, w.details) for w in good if w.result is None] == [], f"round {r}"
                assert conflicting.code == grpc.StatusCode.ALREADY_EXISTS
                assert "expected 999999, actual " in conflicting.details, conflicting.details
                assert not_new.code == grpc.StatusCode.ALREADY_EXISTS
                assert "expected -1, actual 1" in not_new.details, not_new.details
                assert duplicate.code == grpc.StatusCode.ALREADY_EXISTS
                assert taken_id in duplicate.details, duplicate.details
                assert invalid.code == grpc.StatusCode.INVALID_ARGUMENT
                assert "events[0].data" in invalid.details, invalid.details
            # Reads of an unknown boundary too, and the server still serves.
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stubs[0].GetEvents(pb.GetEventsRequest(boundary="no_such_boundary"), metadata=AUTH, timeout=10)
            assert raised.value.code() == grpc.StatusCode.NOT_FOUND
            return await read_all(stubs[0])
        finally:
            for channel in channels:
                await channel.close()

    events = asyncio.run(main())
    verify(events, log)
    assert len(events) == 2 + 10 * sum(1 + i % 2 for i in range(50))


def stop_while_writing(
    server: ServerThread, writers: int, size: Callable[[int], int], ready: Callable[[list[Write]], bool]
) -> tuple[list[Write], list[Write]]:
    """Run ``writers`` clients (writer ``w`` sends writes of ``size(w)`` events, odd ones with exact
    versions on their own stream) until each gets its first failure; stop the server once
    ``ready(log)``. Returns every write sent and those in flight when the stop began."""
    log: list[Write] = []
    stopping = threading.Event()
    errors: list[BaseException] = []

    async def writer(stub: pb_grpc.EventStoreStub, w: int) -> None:
        version = -1
        while True:
            write = Write(f"own-{w}" if w % 2 else "shared", version if w % 2 else -2, new_events(size(w), w), w)
            log.append(write)
            await save(stub, write, deadline_s=30)
            if write.result is None:
                assert stopping.is_set(), (write.code, write.details)
                return
            version = write.result.new_stream_version

    async def main() -> None:
        # Connections of their own: with workers, the kernel spreads them over the processes.
        channels = [grpc.aio.insecure_channel(server.address, options=CHANNEL_OPTIONS) for _ in range(4)]
        try:
            stubs = [pb_grpc.EventStoreStub(c) for c in channels]
            await asyncio.gather(*(writer(stubs[w % 4], w) for w in range(writers)))
        finally:
            for channel in channels:
                await channel.close()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            errors.append(exc)

    clients = threading.Thread(target=run, name="shutdown-clients")
    clients.start()
    try:
        wait_for(lambda: ready(log) or errors, 30, "writes before the shutdown")
        assert not errors, errors
        stopping.set()
        in_flight = [w for w in list(log) if not w.attempts]
        began = time.monotonic()
        server.stop()
        print(f"stopped in {time.monotonic() - began:.2f}s with {len(in_flight)} writes in flight")
    finally:
        stopping.set()
        clients.join(timeout=60)
        print(f"clients done {time.monotonic() - began:.2f}s after the stop began")
    assert not clients.is_alive(), "clients still waiting for answers after the shutdown"
    assert not errors, errors
    return log, in_flight


@pytest.mark.timeout(90)
@pytest.mark.parametrize("workers", [1, 2], ids=["1-worker", "2-workers"])
def test_graceful_shutdown_finishes_in_flight_writes(
    start_server: Callable[..., ServerThread], database: str, workers: int
) -> None:
    """Big writes in flight when the server stops still commit and are acknowledged; every
    acknowledged write is in PostgreSQL; no write is stored whose client got an error. With
    workers, each worker drains its own calls when the supervisor stops them."""
    server = start_server(boundaries=BOUNDARIES, shutdown_timeout=10.0, workers=workers)
    big = 10_000  # the most a request may hold: a big write is unanswered for over 0.5 s during most of its life

    def big_writes_running(log: list[Write]) -> list[Write]:
        """Big writes sent over 0.5 s ago and unanswered: surely being handled by the server.

        Not 0.1 s: with 12 writers saturating the server (and each commit also published to the
        live feed), a 200 KB request can wait that long before the server reads it, and a call
        that arrives after the stop began is rightly refused."""
        now = time.monotonic()
        return [w for w in list(log) if len(w.events) == big and not w.attempts and 0 < w.sent_at < now - 0.5]


    running: list[Write] = []

    def ready_and_noted(log: list[Write]) -> bool:
        running[:] = big_writes_running(log)
        return acked(log) >= 50 and bool(running)

    log, _ = stop_while_writing(server, 12, lambda w: big if w < 2 else 1 + w % 3, ready_and_noted)
    stored = stored_events(database)
    verify(stored, log)
    stored_ids = {e.event_id for e in stored}
    outcomes = {(w.code.name if w.code else "OK", all(i in stored_ids for i in w.ids)) for w in log}
    print(f"{len(log)} writes, {acked(log)} acknowledged, outcomes (code, stored): {sorted(outcomes)}")
    # A graceful stop leaves nothing ambiguous: what is stored was acknowledged, and back.
    assert {code for code, is_stored in outcomes if is_stored} <= {"OK"}
    assert {code for code, is_stored in outcomes if not is_stored} <= {"UNAVAILABLE", "CANCELLED"}
    assert running, "no big write was in flight when the stop began"
    assert [(w.code, w.details) for w in running if w.result is None] == [], (
        "a big write in flight when the stop began did not finish")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [1, 2], ids=["1-worker", "2-workers"])
def test_calls_at_shutdown_are_answered_unavailable_not_cancelled(
    start_server: Callable[..., ServerThread], workers: int
) -> None:
    """Many callers sending when the server stops: each call either completes or is answered
    UNAVAILABLE (retry elsewhere), never CANCELLED, which a client reads as its own doing."""
    server = start_server(boundaries=BOUNDARIES, shutdown_timeout=10.0, workers=workers)
    log, _ = stop_while_writing(server, 48, lambda w: 1, lambda log: acked(log) >= 300)
    codes: dict[str, int] = defaultdict(int)
    for w in log:
        codes[w.code.name if w.code else "OK"] += 1
    print(f"answers: {dict(codes)}")
    assert set(codes) <= {"OK", "UNAVAILABLE"}, dict(codes)

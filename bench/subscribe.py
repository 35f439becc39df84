"""SubscribeToEvents: live delivery latency and catch-up throughput, beside raw PostgreSQL.

**Live latency.** A subscriber is connected (its own process, so the writer's load does not skew
its clock reading); a writer process sends SaveEvents calls on a schedule (open loop, at most 64
calls outstanding, as a client pool would): 100 and 1,000 one-event calls/s, 100 ten-event
calls/s (1,000 events/s), then as fast as 64 callers with 10-event calls go. Latency is from just
before the SaveEvents call to the event's arrival at the subscriber: the write itself is included.
An overloaded server shows as an achieved rate below the offered one. Baseline in the same run: a raw psycopg
writer doing INSERT + NOTIFY per event at the same rate, and a LISTENing connection receiving it,
which is what "push from PostgreSQL" costs with no server in between.

**Catch-up throughput.** Loads ``--events`` events (default 1,000,000), then subscribes from the
start and counts events until the last one arrives. Baseline: the same page queries Orisun's
catch-up issues (storage.events.build_range, 500 per page), run through plain psycopg. Then where
the time goes: the same pages read with Orisun's own storage function (rows to model objects) and
the model-to-proto conversion plus serialisation, each timed alone in this process.

    python bench/subscribe.py [--events 1000000] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import time
import uuid
from typing import Any

import grpc
import psycopg
from _stack import AUTH, percentiles, stack  # bench/ is on sys.path when a script here runs
from query import load

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from orisun.model import Position
from orisun.service.subscriptions import PAGE
from orisun.storage.database import Database
from orisun.storage.events import build_range, read_range
from orisun.transport.convert import event_to_proto

BOUNDARY = "bench"
IN_FLIGHT = 64


# --- live latency ------------------------------------------------------------------------------


def _subscriber(address: str, after: int, out: Any) -> None:
    """Receive events after position ``after`` until an ``End`` event; send back their latencies."""
    latencies = []
    with grpc.insecure_channel(address) as channel:
        call = pb_grpc.EventStoreStub(channel).SubscribeToEvents(
            pb.CatchUpSubscribeToEventStoreRequest(boundary=BOUNDARY, position=pb.Position(
                commit_position=after, prepare_position=after)), metadata=AUTH)
        out.send("ready")
        for event in call:
            if event.event_type == "End":
                break
            latencies.append(time.time() - json.loads(event.data)["sent"])
        call.cancel()
    out.send(latencies)


def _end(address: str) -> None:
    """Save the event that tells the subscriber the run is over."""
    with grpc.insecure_channel(address) as channel:
        pb_grpc.EventStoreStub(channel).SaveEvents(pb.SaveEventsRequest(
            boundary=BOUNDARY, stream=pb.SaveStreamQuery(name=f"end-{uuid.uuid4()}", expected_version=-1),
            events=[pb.EventToSave(event_id=str(uuid.uuid4()), event_type="End", data="{}")]), metadata=AUTH)


async def _write(address: str, rate: float | None, seconds: float, batch: int) -> int:
    """SaveEvents calls of ``batch`` events at ``rate`` calls/s (None: 64 callers flat out) for ``seconds``;
    the events saved."""
    saved = 0
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.EventStoreStub(channel)

        async def one() -> None:
            nonlocal saved
            data = json.dumps({"sent": time.time()})
            await stub.SaveEvents(pb.SaveEventsRequest(
                boundary=BOUNDARY, stream=pb.SaveStreamQuery(name=f"live-{uuid.uuid4()}", expected_version=-1),
                events=[pb.EventToSave(event_id=str(uuid.uuid4()), event_type="Live", data=data)
                        for _ in range(batch)]), metadata=AUTH)
            saved += batch

        end = time.perf_counter() + seconds
        if rate is None:
            async def caller() -> None:
                while time.perf_counter() < end:
                    await one()
            await asyncio.gather(*(caller() for _ in range(64)))
        else:
            # Open loop, but at most IN_FLIGHT calls outstanding, as a real client pool would
            # have: an overloaded server then shows as a lower achieved rate and higher latency.
            slots = asyncio.Semaphore(IN_FLIGHT)

            async def scheduled() -> None:
                try:
                    await one()
                finally:
                    slots.release()

            calls = []
            start = time.perf_counter()
            n = 0
            while (now := time.perf_counter()) < end:
                due = start + n / rate
                if due > now:
                    await asyncio.sleep(due - now)
                await slots.acquire()
                calls.append(asyncio.ensure_future(scheduled()))
                n += 1
            await asyncio.gather(*calls)
    return saved


def _head(conninfo: str) -> int:
    with psycopg.connect(conninfo) as conn:
        row = conn.execute(f"SELECT position FROM {BOUNDARY}.head").fetchone()
    assert row is not None
    return int(row[0])


def _writer(address: str, rate: float | None, seconds: float, batch: int, events: int | None, out: Any) -> None:
    """A writer process: ``events`` events flat out if given, else ``_write``; sends back (saved, s)."""
    began = time.perf_counter()
    if events is not None:
        asyncio.run(_write_exactly(address, events, batch))
        saved = events
    else:
        saved = asyncio.run(_write(address, rate, seconds, batch))
    out.send((saved, time.perf_counter() - began))


def _in_process(target: Any, *args: Any) -> Any:
    """Run ``target(*args, pipe)`` in a fresh process (its own gRPC and event loop); its answer."""
    receiver, sender = multiprocessing.Pipe(duplex=False)
    proc = multiprocessing.Process(target=target, args=(*args, sender))
    proc.start()
    answer = receiver.recv()
    proc.join(60)
    return answer


def live(
    address: str, conninfo: str, rate: float | None, batch: int, seconds: float
) -> tuple[float, float, float, int]:
    """(p50 ms, p99 ms, max ms, events/s achieved) of live delivery at ``rate`` calls/s of
    ``batch`` events (None: 64 callers flat out).

    Writers and the subscriber run in processes of their own: the clock readings of one are not
    delayed by the other's work, and each has its own gRPC runtime."""
    exactly = None
    if rate is None:  # flat out: measure what the server sustains, then that many events, live
        exactly, _ = _in_process(_writer, address, None, seconds, batch, None)
    receiver, sender = multiprocessing.Pipe(duplex=False)
    subscriber = multiprocessing.Process(target=_subscriber, args=(address, _head(conninfo), sender))
    subscriber.start()
    assert receiver.recv() == "ready"
    saved, elapsed = _in_process(_writer, address, rate, seconds, batch, exactly)
    _end(address)
    latencies = receiver.recv()
    subscriber.join(30)
    assert len(latencies) == saved, f"{saved} events saved, {len(latencies)} delivered"
    p50, p99 = percentiles(latencies)
    return p50, p99, max(latencies) * 1000, int(saved / elapsed)


async def _write_exactly(address: str, events: int, batch: int) -> None:
    """``events`` events from 64 callers flat out (the max-rate run, measured live)."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.EventStoreStub(channel)
        calls = list(range(events // batch))

        async def caller() -> None:
            while calls:
                calls.pop()
                await stub.SaveEvents(pb.SaveEventsRequest(
                    boundary=BOUNDARY, stream=pb.SaveStreamQuery(name=f"live-{uuid.uuid4()}", expected_version=-1),
                    events=[pb.EventToSave(event_id=str(uuid.uuid4()), event_type="Live",
                                           data=json.dumps({"sent": time.time()})) for _ in range(batch)]),
                    metadata=AUTH)
        await asyncio.gather(*(caller() for _ in range(64)))


def _raw_listener(conninfo: str, expected: int, out: Any) -> None:
    latencies = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("LISTEN bench_raw")
        out.send("ready")
        for notify in conn.notifies():
            latencies.append(time.time() - float(notify.payload))
            if len(latencies) == expected:
                break
    out.send(latencies)


def raw_live(loop: asyncio.AbstractEventLoop, conninfo: str, rate: float, seconds: float) -> tuple[float, float, float]:
    """The baseline: INSERT + NOTIFY per event at ``rate``, received by LISTEN."""
    expected = int(rate * seconds)
    receiver, sender = multiprocessing.Pipe(duplex=False)
    proc = multiprocessing.Process(target=_raw_listener, args=(conninfo, expected, sender))
    proc.start()
    assert receiver.recv() == "ready"

    async def write() -> None:
        conns = [await psycopg.AsyncConnection.connect(conninfo, autocommit=True) for _ in range(8)]
        free: asyncio.Queue[psycopg.AsyncConnection[Any]] = asyncio.Queue()
        for c in conns:
            free.put_nowait(c)
        await conns[0].execute("CREATE TABLE IF NOT EXISTS bench_raw (id bigserial PRIMARY KEY, data text)")

        async def one() -> None:
            conn = await free.get()
            sent = str(time.time())
            async with conn.transaction():
                await conn.execute("INSERT INTO bench_raw (data) VALUES (%s)", (sent,))
                await conn.execute("SELECT pg_notify('bench_raw', %s)", (sent,))
            free.put_nowait(conn)

        start = time.perf_counter()
        calls = []
        for n in range(expected):
            due = start + n / rate
            if (wait := due - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            calls.append(asyncio.ensure_future(one()))
        await asyncio.gather(*calls)
        for c in conns:
            await c.close()

    loop.run_until_complete(write())
    latencies = receiver.recv()
    proc.join(30)
    p50, p99 = percentiles(latencies)
    return p50, p99, max(latencies) * 1000


# --- catch-up throughput -------------------------------------------------------------------------


def catch_up(address: str, events: int) -> float:
    """Seconds for a subscriber from the start to receive ``events`` events."""
    began = time.perf_counter()
    received = 0
    with grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
        call = pb_grpc.EventStoreStub(channel).SubscribeToEvents(
            pb.CatchUpSubscribeToEventStoreRequest(boundary=BOUNDARY), metadata=AUTH)
        for _ in call:
            received += 1
            if received == events:
                break
        call.cancel()
    return time.perf_counter() - began


def raw_scan(conninfo: str, events: int) -> float:
    """Seconds to read the same pages with plain psycopg (tuples, no conversion)."""
    began = time.perf_counter()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        cursor = 0
        while cursor < events:
            rows = conn.execute(*build_range(BOUNDARY, Position(0, cursor), events, None, PAGE)).fetchall()
            cursor = rows[-1][0]
    return time.perf_counter() - began


async def breakdown(conninfo: str, events: int) -> tuple[float, float]:
    """(seconds to read all pages as model Events, seconds to convert and serialise them)."""
    db = Database(conninfo, {BOUNDARY: BOUNDARY}, pool_size=2)
    await db.open(10)
    read = convert = 0.0
    cursor = 0
    while cursor < events:
        t0 = time.perf_counter()
        page, _ = await read_range(db, BOUNDARY, Position(0, cursor), events, None, PAGE)
        t1 = time.perf_counter()
        for event in page:
            event_to_proto(event).SerializeToString()
        convert += time.perf_counter() - t1
        read += t1 - t0
        cursor = page[-1].position.prepare
    await db.close()
    return read, convert


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="events for the catch-up run")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each live run")
    args = parser.parse_args()
    multiprocessing.set_start_method("spawn")  # gRPC does not survive fork() in a process using it
    # Async phases in this process run on the stack's one loop (PostgreSQL is supervised there).
    with stack(BOUNDARY) as s:
        print("Live delivery, SaveEvents call start -> arrival at a connected subscriber")
        print(f"{'offered':>18} {'achieved ev/s':>13} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
              "| raw INSERT+NOTIFY→LISTEN p50 / p99 / max")
        for rate, batch in ((100.0, 1), (1000.0, 1), (100.0, 10), (None, 10)):
            p50, p99, worst, achieved = live(s.address, s.conninfo, rate, batch, args.seconds)
            label = f"{int(rate)} calls/s x {batch}" if rate else f"64 callers x {batch}"
            raw = raw_live(s.loop, s.conninfo, float(achieved), args.seconds)
            print(f"{label:>18} {achieved:13,} {p50:8.2f} {p99:8.2f} {worst:8.2f} "
                  f"| {raw[0]:.2f} / {raw[1]:.2f} / {raw[2]:.2f}")

        print(f"\nCatch-up from position 0 over {args.events:,} events")
        loaded = s.loop.run_until_complete(load(s.address, args.events))
        print(f"  (loaded in {loaded:.0f} s)")
        total = _head(s.conninfo)
        subscribe = min(catch_up(s.address, total) for _ in range(2))
        raw = min(raw_scan(s.conninfo, total) for _ in range(2))
        read, convert = s.loop.run_until_complete(breakdown(s.conninfo, total))
        print(f"  SubscribeToEvents: {total / subscribe:10,.0f} events/s ({subscribe:.1f} s)")
        print(f"  raw psycopg pages: {total / raw:10,.0f} events/s ({raw:.1f} s)  ratio {raw / subscribe:.2f}")
        print(f"  where the time goes, per event: PostgreSQL {raw / total * 1e6:.1f} µs, rows to model "
              f"{(read - raw) / total * 1e6:.1f} µs, model to proto + serialise {convert / total * 1e6:.1f} µs, "
              f"gRPC and the client {(subscribe - read - convert) / total * 1e6:.1f} µs")


if __name__ == "__main__":
    main()

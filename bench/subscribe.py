"""SubscribeToEvents: live delivery latency and catch-up throughput, beside raw PostgreSQL.

**Live.** A writer process appends one-event SaveEvents calls at ``--rate`` (1,000/s) for
``--seconds`` (30), open loop: each call is due at its time whether or not earlier ones have
returned; a call due while ``--in-flight`` (64) are outstanding is *skipped* and counted (an
overloaded server shows as skipped appends, a lower achieved rate and higher latency). The writer
spreads its calls over ``--writer-channels`` (8) connections (bench/_h2client.py; ``--client grpc``:
Python gRPC). Subscribers (1, then 50; each
SubscribeToEvents on its own connection, so that with workers they spread over the worker
processes) run in ``--receiver-processes`` (4) client processes, read by a minimal HTTP/2 client
(bench/_h2count.py; Python gRPC costs 40-60 µs of CPU per streamed message here, which at 50
subscribers x 1,000 events/s is more than the machine has): the client side is not what limits
delivery, and each process's CPU use is printed. Latency is from the moment
the writer received the SaveEvents acknowledgement to the event's arrival at each subscriber
(``time.time_ns()`` in both processes: one system-wide clock). An event can arrive before its
acknowledgement does (counted as "early", latency negative). Every subscriber's sequence is
checked against the acknowledged positions: missing, duplicated and out-of-order events must be 0.
Baseline in the same run: the same writer doing INSERT + pg_notify in one transaction per event
at the same rate, received by as many LISTEN connections, spread over as many processes.

**Catch-up.** Loads ``--events`` events (1,000,000; 5,000 per SaveEvents call), then one
SubscribeToEvents from position 0 in its own process, counting messages until the last event:
events/s beside the raw page scan in the same run (the page queries Orisun's catch-up issues,
storage.events.build_range, through plain psycopg), and the ratio. The receiver counts messages
off the socket (bench/_h2count.py: gRPC length prefixes walked, no message parsed; ``--client
grpc``: a Python gRPC stream call without a response deserializer) and reports its CPU time over
the wall time: well below 100% of a core shows it is not the bound.
Then where the time goes: the same pages read with Orisun's own storage function (rows to model
objects) and the model-to-proto conversion plus serialisation, each timed alone in this process.

    python bench/subscribe.py [--quick] [--workers N] [--seconds 30] [--events 1000000] [--subscribers 1,50]
                              [--only live|catchup] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import itertools
import json
import multiprocessing
import os
import platform
import selectors
import sys
import threading
import time
import uuid
from array import array
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
import psycopg
from _h2client import H2Connection, Stub
from _h2count import H2Call, count_stream
from _stack import AUTH, OWN_CONNECTION, percentiles, stack, start_bare  # bench/ is on sys.path when a script here runs
from psycopg import sql
from query import load

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from orisun.model import Position
from orisun.service.subscriptions import PAGE
from orisun.storage.database import Database
from orisun.storage.events import build_range, read_range
from orisun.transport.convert import event_to_proto

BOUNDARY = "bench"
SUBSCRIBE = "/eventstore.EventStore/SubscribeToEvents"
RAW_CHANNEL = "bench_raw"
END = "End"  # the event type (raw: the payload) that tells subscribers the run is over
WARM = "Warm"  # the event saved after the subscribers' start position: seen, a subscription is live
BUSY_PCT = 85  # a client process above this (% of a core) may be what limits the figure
LIMIT = 64 << 20


# --- live: subscribers -------------------------------------------------------------------------


def _orisun_subscriber(address: str, after: int, got: tuple[array[int], array[int]], ready: threading.Event) -> None:
    """One SubscribeToEvents after ``after`` on its own connection: (positions, arrival ns) until End."""
    positions, arrivals = got
    with grpc.insecure_channel(address, options=OWN_CONNECTION) as channel:
        call = pb_grpc.EventStoreStub(channel).SubscribeToEvents(
            pb.CatchUpSubscribeToEventStoreRequest(boundary=BOUNDARY, position=pb.Position(
                commit_position=after, prepare_position=after)), metadata=AUTH)
        for event in call:
            now = time.time_ns()
            if event.event_type == WARM:  # saved before the run: this subscription is live
                ready.set()
                continue
            if event.event_type == END:
                break
            positions.append(event.position.commit_position)
            arrivals.append(now)
        call.cancel()


async def _raw_listeners(conninfo: str, count: int, out: Connection) -> list[tuple[array[int], array[int]]]:
    got = [(array("q"), array("q")) for _ in range(count)]
    conns = [await psycopg.AsyncConnection.connect(conninfo, autocommit=True) for _ in range(count)]
    for conn in conns:
        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(RAW_CHANNEL)))
    out.send("ready")

    async def listen(conn: psycopg.AsyncConnection[Any], positions: array[int], arrivals: array[int]) -> None:
        async for notify in conn.notifies():
            now = time.time_ns()
            if notify.payload == END:
                return
            positions.append(int(notify.payload))
            arrivals.append(now)

    await asyncio.gather(*(listen(conn, *g) for conn, g in zip(conns, got, strict=True)))
    for conn in conns:
        await conn.close()
    return got


def _orisun_h2(address: str, count: int, after: int, out: Connection) -> list[tuple[array[int], array[int]]]:
    """``count`` subscriptions on connections of their own, read in one thread with ``select``:
    arrival is when the bytes came off the socket, not when Python got round to them."""
    host, port = address.rsplit(":", 1)
    request = pb.CatchUpSubscribeToEventStoreRequest(boundary=BOUNDARY, position=pb.Position(
        commit_position=after, prepare_position=after)).SerializeToString()
    calls = [H2Call(host, int(port), SUBSCRIBE, request, AUTH, keep=True) for _ in range(count)]
    got = [(array("q"), array("q")) for _ in range(count)]
    waiting = set(range(count))  # subscriptions yet to see the Warm event
    running = set(range(count))  # subscriptions yet to see the End event
    with selectors.DefaultSelector() as selector:
        for index, call in enumerate(calls):
            selector.register(call.sock, selectors.EVENT_READ, index)
        while running:
            for key, _ in selector.select(60):
                index = key.data
                call = calls[index]
                messages = call.read()
                now = time.time_ns()
                positions, arrivals = got[index]
                for message in messages:
                    event = pb.Event.FromString(message)
                    if event.event_type == WARM:  # saved before the run: this subscription is live
                        waiting.discard(index)
                        if not waiting:
                            out.send("ready")
                    elif event.event_type == END:
                        running.discard(index)
                        selector.unregister(call.sock)
                        break
                    else:
                        positions.append(event.position.commit_position)
                        arrivals.append(now)
                if call.ended and index in running:  # the server ended the call: what came is the result
                    running.discard(index)
                    selector.unregister(call.sock)
    for call in calls:
        call.close()
    return got


def _receivers(system: str, target: str, count: int, after: int, receiver: str, out: Connection) -> None:
    """A client process with ``count`` subscribers (each on its own connection) or LISTEN
    connections; sends "ready" once all are subscribed, then (per subscriber (positions, arrivals),
    CPU seconds, wall seconds) once each has seen the End marker."""
    cpu, began = time.process_time(), time.perf_counter()
    if system == "raw":
        got = asyncio.run(_raw_listeners(target, count, out))
    elif receiver == "h2":
        got = _orisun_h2(target, count, after, out)
    else:  # Python gRPC: a thread per subscriber
        got = [(array("q"), array("q")) for _ in range(count)]
        readies = [threading.Event() for _ in range(count)]
        threads = [threading.Thread(target=_orisun_subscriber, args=(target, after, g, r), daemon=True)
                   for g, r in zip(got, readies, strict=True)]
        for thread in threads:
            thread.start()
        if all(ready.wait(60) for ready in readies):
            out.send("ready")
        for thread in threads:
            thread.join()
    out.send(([(g[0].tobytes(), g[1].tobytes()) for g in got], time.process_time() - cpu,
              time.perf_counter() - began))


# --- live: the writer ----------------------------------------------------------------------------


@dataclass
class Schedule:
    rate: float
    seconds: float
    in_flight: int
    channels: int
    client: str  # the writer's gRPC client: "h2" (bench/_h2client.py) or "grpc"


async def _open_loop(schedule: Schedule, call: Any) -> dict[str, Any]:
    """``call(n)`` at ``schedule.rate`` per second, skipping one due while ``in_flight`` are
    outstanding; ``call`` returns the position acknowledged. The acknowledgements' positions and
    arrival times (time_ns), the skipped, failed and attempted counts and the elapsed seconds."""
    positions, acks = array("q"), array("q")
    outstanding = skipped = failed = 0
    tasks: set[asyncio.Task[None]] = set()

    async def one(n: int) -> None:
        nonlocal outstanding, failed
        try:
            position = await call(n)
            acks.append(time.time_ns())
            positions.append(position)
        except Exception:  # counted: a failed append is a finding, not a crash of the bench
            failed += 1
        finally:
            outstanding -= 1

    loop = asyncio.get_running_loop()
    due_total = int(schedule.rate * schedule.seconds)
    start = loop.time()
    for n in range(due_total):
        due = start + n / schedule.rate
        if (wait := due - loop.time()) > 0:
            await asyncio.sleep(wait)
        if outstanding >= schedule.in_flight:
            skipped += 1
            continue
        outstanding += 1
        task = asyncio.ensure_future(one(n))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    while tasks:
        await asyncio.gather(*list(tasks))
    return {"positions": positions.tobytes(), "acks": acks.tobytes(), "skipped": skipped, "failed": failed,
            "attempted": due_total, "elapsed": loop.time() - start}


async def _orisun_writer(address: str, schedule: Schedule) -> dict[str, Any]:
    channels: list[grpc.aio.Channel] = []
    connections: list[H2Connection] = []
    stubs: list[pb_grpc.EventStoreStub] | list[Stub]
    if schedule.client == "h2":  # about half Python gRPC's CPU per call (bench/_h2client.py)
        host, port = address.rsplit(":", 1)
        connections = [await H2Connection.open(host, int(port), AUTH) for _ in range(schedule.channels)]
        stubs = [Stub(connection) for connection in connections]
    else:
        channels = [grpc.aio.insecure_channel(address, options=OWN_CONNECTION) for _ in range(schedule.channels)]
        stubs = [pb_grpc.EventStoreStub(channel) for channel in channels]
    run = uuid.uuid4().hex[:8]

    def request(name: str, event_type: str) -> pb.SaveEventsRequest:
        return pb.SaveEventsRequest(boundary=BOUNDARY, stream=pb.SaveStreamQuery(name=name, expected_version=-1),
                                    events=[pb.EventToSave(event_id=str(uuid.uuid4()), event_type=event_type,
                                                           data='{"live": true}')])

    async def save(n: int) -> int:
        async with asyncio.timeout(60):
            reply = await stubs[n % len(stubs)].SaveEvents(request(f"live-{run}-{n}", "Live"), metadata=AUTH)
        return int(reply.log_position.commit_position)

    for stub in stubs:  # connected before the clock starts
        await stub.GetEvents(pb.GetEventsRequest(boundary=BOUNDARY, count=1), metadata=AUTH)
    result = await _open_loop(schedule, save)
    await stubs[0].SaveEvents(request(f"end-{run}", END), metadata=AUTH)
    for channel in channels:
        await channel.close()
    for connection in connections:
        connection.close()
    return result


async def _raw_writer(conninfo: str, schedule: Schedule) -> dict[str, Any]:
    conns = [await psycopg.AsyncConnection.connect(conninfo, autocommit=True) for _ in range(8)]
    free: asyncio.Queue[psycopg.AsyncConnection[Any]] = asyncio.Queue()
    for conn in conns:
        free.put_nowait(conn)
    insert = sql.SQL("WITH i AS (INSERT INTO bench_raw (data) VALUES (%s) RETURNING id) "
                     "SELECT id, pg_notify({}, id::text) FROM i").format(sql.Literal(RAW_CHANNEL))

    async def save(n: int) -> int:
        conn = await free.get()
        try:  # one statement in autocommit: one transaction, acknowledged once committed
            row = await (await conn.execute(insert, ('{"live": true}',))).fetchone()
        finally:
            free.put_nowait(conn)
        assert row is not None
        return int(row[0])

    result = await _open_loop(schedule, save)
    await conns[0].execute(sql.SQL("SELECT pg_notify({}, {})").format(sql.Literal(RAW_CHANNEL), sql.Literal(END)))
    for conn in conns:
        await conn.close()
    return result


def _writer(system: str, target: str, schedule: Schedule, out: Connection) -> None:
    cpu = time.process_time()
    writer = _raw_writer if system == "raw" else _orisun_writer
    result = asyncio.run(writer(target, schedule))
    result["cpu"] = time.process_time() - cpu
    out.send(result)


# --- live: the main process ------------------------------------------------------------------------


def split(count: int, processes: int) -> list[int]:
    processes = max(1, min(count, processes))
    return [count // processes + (1 if i < count % processes else 0) for i in range(processes)]


def _head(conninfo: str) -> int:
    with psycopg.connect(conninfo) as conn:
        row = conn.execute(sql.SQL("SELECT position FROM {}.head").format(sql.Identifier(BOUNDARY))).fetchone()
    assert row is not None
    return int(row[0])


def _save_one(address: str, event_type: str) -> None:
    with grpc.insecure_channel(address) as channel:
        pb_grpc.EventStoreStub(channel).SaveEvents(pb.SaveEventsRequest(
            boundary=BOUNDARY, stream=pb.SaveStreamQuery(name=f"{event_type}-{uuid.uuid4()}", expected_version=-1),
            events=[pb.EventToSave(event_id=str(uuid.uuid4()), event_type=event_type, data="{}")]), metadata=AUTH)


def live(system: str, target: str, conninfo: str, subscribers: int, processes: int, schedule: Schedule,
         receiver: str) -> dict[str, Any]:
    """One live run of ``system`` (orisun: ``target`` is its address; raw: a conninfo)."""
    context = multiprocessing.get_context("spawn")  # gRPC does not survive fork() in a process using it
    after = 0
    if system == "orisun":
        after = _head(conninfo)
        _save_one(target, WARM)
    receivers = []
    for count in split(subscribers, processes):
        mine, theirs = context.Pipe(duplex=False)
        proc = context.Process(target=_receivers, args=(system, target, count, after, receiver, theirs), daemon=True)
        proc.start()
        receivers.append((proc, mine))
    for _, pipe in receivers:
        if not pipe.poll(120) or pipe.recv() != "ready":
            raise RuntimeError("a subscriber process did not get ready")
    mine, theirs = context.Pipe(duplex=False)
    writer = context.Process(target=_writer, args=(system, target, schedule, theirs), daemon=True)
    writer.start()
    written = mine.recv()
    writer.join(30)
    results = []
    for proc, pipe in receivers:
        if not pipe.poll(120):
            raise RuntimeError("a subscriber process did not see the end of the run")
        results.append(pipe.recv())
        proc.join(30)

    acked = array("q")
    acked.frombytes(written["positions"])
    ack_ns = array("q")
    ack_ns.frombytes(written["acks"])
    ack_at = dict(zip(acked, ack_ns, strict=True))
    latencies: list[float] = []
    missing = duplicated = unordered = unexpected = early = 0
    for subs, _, _ in results:
        for raw_positions, raw_arrivals in subs:
            positions, arrivals = array("q"), array("q")
            positions.frombytes(raw_positions)
            arrivals.frombytes(raw_arrivals)
            seen = set(positions)
            duplicated += len(positions) - len(seen)
            missing += sum(1 for p in acked if p not in seen)
            unexpected += len(seen - ack_at.keys())  # delivered, never acknowledged (a failed call)
            unordered += sum(1 for a, b in itertools.pairwise(positions) if b <= a)
            for position, arrival in zip(positions, arrivals, strict=True):
                if (sent := ack_at.get(position)) is not None:
                    latencies.append((arrival - sent) / 1e9)
                    early += arrival < sent
    p50, p99 = percentiles(latencies)
    busiest = max(100 * cpu / wall for _, cpu, wall in results)
    return {"system": system, "subscribers": subscribers, "processes": len(receivers),
            "attempted": written["attempted"], "acked": len(acked), "skipped": written["skipped"],
            "failed": written["failed"], "achieved": len(acked) / written["elapsed"],
            "p50_ms": p50, "p99_ms": p99, "max_ms": max(latencies, default=float("nan")) * 1000,
            "missing": missing, "duplicated": duplicated, "unordered": unordered, "unexpected": unexpected,
            "early": early, "deliveries": len(latencies),
            "receiver_cpu_pct": sum(100 * cpu / wall for _, cpu, wall in results), "busiest_receiver_pct": busiest,
            "writer_cpu_pct": 100 * written["cpu"] / written["elapsed"]}


def print_live(r: dict[str, Any]) -> None:
    flag = "  client-bound?" if r["busiest_receiver_pct"] >= BUSY_PCT or r["writer_cpu_pct"] >= BUSY_PCT else ""
    print(f"  {r['system']:7}{r['subscribers']:>5}{r['acked']:>8,}{r['skipped']:>8,}{r['failed']:>7,}"
          f"{r['achieved']:>10,.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['max_ms']:>9.1f}"
          f"{r['missing']:>8,}{r['duplicated']:>6,}{r['unordered']:>7,}{r['early']:>9,}"
          f"{r['receiver_cpu_pct']:>7.0f}%/{r['processes']}{r['busiest_receiver_pct']:>5.0f}%"
          f"{r['writer_cpu_pct']:>6.0f}%{flag}", flush=True)


# --- catch-up throughput -------------------------------------------------------------------------


def _catch_up(address: str, events: int, receiver: str, out: Connection) -> None:
    """One SubscribeToEvents from the start, in this process: messages counted until ``events``;
    sends (seconds, CPU seconds of this process, messages counted, the last one's position).

    ``receiver`` "h2": bench/_h2count.py, bytes off the socket, no message parsed (~7-15 µs of CPU per
    message here); "grpc": a Python gRPC stream call without a response deserializer (~40-60 µs)."""
    request = pb.CatchUpSubscribeToEventStoreRequest(boundary=BOUNDARY)
    cpu, began = time.process_time(), time.perf_counter()
    last = b""
    received = 0
    if receiver == "h2":
        host, port = address.rsplit(":", 1)
        received, last = count_stream(host, int(port), SUBSCRIBE, request.SerializeToString(), AUTH, events)
    else:
        options = [*OWN_CONNECTION, ("grpc.max_receive_message_length", LIMIT)]
        with grpc.insecure_channel(address, options=options) as ch:
            subscribe = ch.unary_stream(
                SUBSCRIBE, request_serializer=pb.CatchUpSubscribeToEventStoreRequest.SerializeToString,
                response_deserializer=None)  # bytes as received: no parsing per message
            call = subscribe(request, metadata=AUTH)
            for received, message in enumerate(call, 1):
                if received == events:
                    last = message
                    break
            call.cancel()
    seconds, used = time.perf_counter() - began, time.process_time() - cpu
    out.send((seconds, used, received, pb.Event.FromString(last).position.commit_position if last else 0))


def catch_up(address: str, events: int, receiver: str) -> tuple[float, float]:
    """(seconds for a subscriber from the start to receive ``events`` events, its CPU seconds)."""
    context = multiprocessing.get_context("spawn")
    mine, theirs = context.Pipe(duplex=False)
    proc = context.Process(target=_catch_up, args=(address, events, receiver, theirs), daemon=True)
    proc.start()
    theirs.close()  # so that a receiver that dies ends recv() with EOFError rather than hang it
    seconds, cpu, received, last = mine.recv()
    proc.join(30)
    if received != events or last != events:
        raise RuntimeError(f"catch-up: {received} events received, the last at position {last}; expected {events}")
    return seconds, cpu


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
    parser.add_argument("--quick", action="store_true",
                        help="5 s live runs, 50,000 events for the catch-up: checks it works (~1 min)")
    parser.add_argument("--workers", type=int, help="ORISUN_WORKERS for the server (default: unset, its default)")
    parser.add_argument("--seconds", type=float, help="length of each live run (default 30, quick 5)")
    parser.add_argument("--rate", type=float, default=1000.0, help="one-event appends per second (default 1,000)")
    parser.add_argument("--subscribers", default="1,50", help="subscriber counts to measure (default 1,50)")
    parser.add_argument("--receiver-processes", type=int, default=4, help="client processes for the subscribers")
    parser.add_argument("--in-flight", type=int, default=64, help="appends outstanding before one is skipped")
    parser.add_argument("--writer-channels", type=int, default=8, help="connections the writer spreads appends over")
    parser.add_argument("--events", type=int, help="events for the catch-up run (default 1,000,000, quick 50,000)")
    parser.add_argument("--client", choices=("h2", "grpc"), default="h2",
                        help="subscribers', writer's and catch-up's client: hand-spoken HTTP/2 (default, "
                        "cheap: bench/_h2count.py, bench/_h2client.py) or Python gRPC")
    parser.add_argument("--catchup-client", choices=("h2", "grpc"), default="grpc",
                        help="the catch-up's receiver (default Python gRPC: over long streams the hand-spoken "
                        "HTTP/2 reader made the bare server spend ~3x the CPU per message, 70 µs vs 22-28; see "
                        "the README)")
    parser.add_argument("--only", choices=("live", "catchup"), help="run one part only")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    args = parser.parse_args()
    report: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "command": " ".join(["python", "bench/subscribe.py", *sys.argv[1:]]),
    }
    seconds = args.seconds or (5.0 if args.quick else 30.0)
    events = args.events or (50_000 if args.quick else 1_000_000)
    counts = [int(c) for c in args.subscribers.split(",")]
    schedule = Schedule(args.rate, seconds, args.in_flight, args.writer_channels, args.client)
    with stack(BOUNDARY, workers=args.workers) as s:
        report.update(workers=s.workers, serving=s.serving)
        print(f"Orisun with ORISUN_WORKERS={s.workers if s.workers is not None else '(unset)'}: "
              f"{s.serving} process(es) serving gRPC", flush=True)
        if args.only != "catchup":
            with psycopg.connect(s.conninfo, autocommit=True) as conn:
                conn.execute("CREATE TABLE IF NOT EXISTS bench_raw (id bigserial PRIMARY KEY, data text NOT NULL)")
            print(f"\nLive: {args.rate:,.0f} one-event appends/s for {seconds:g} s, open loop (at most "
                  f"{args.in_flight} in flight, else skipped); latency = append acknowledged -> arrival at each "
                  "subscriber")
            print(f"  {'system':7}{'subs':>5}{'acked':>8}{'skipped':>8}{'failed':>7}{'ev/s':>10}{'p50 ms':>9}"
                  f"{'p99 ms':>9}{'max ms':>9}{'missing':>8}{'dup':>6}{'order':>7}{'early':>9}"
                  f"{'recv CPU/procs':>15}{'max':>5}{'writer':>7}")
            # A short unreported run first: the server's first appends pay for connections,
            # prepared statements and caches, which is start-up, not the steady state measured.
            warm = Schedule(args.rate, min(3.0, seconds), args.in_flight, args.writer_channels, args.client)
            for system, target in (("orisun", s.address), ("raw", s.conninfo)):
                result = live(system, target, s.conninfo, 1, 1, warm, args.client)
                print(f"  (warm-up, not reported: {system} {result['acked']:,} acked, {result['skipped']:,} skipped, "
                      f"p99 {result['p99_ms']:.1f} ms)", flush=True)
            rows = []
            for count in counts:
                for system, target in (("orisun", s.address), ("raw", s.conninfo)):
                    result = live(system, target, s.conninfo, count, args.receiver_processes, schedule, args.client)
                    print_live(result)
                    rows.append(result)
            report["live"] = {"rate": args.rate, "seconds": seconds, "in_flight": args.in_flight, "runs": rows}
            for count in counts:
                ours = next(r for r in rows if r["system"] == "orisun" and r["subscribers"] == count)
                raw = next(r for r in rows if r["system"] == "raw" and r["subscribers"] == count)
                # Not a ratio of p50s: LISTEN often gets the event before the writer gets its
                # acknowledgement, so raw's p50 is near 0 or negative.
                ratio = f"{ours['p99_ms'] / raw['p99_ms']:.1f}x raw's" if raw["p99_ms"] > 0 else "raw's p99 <= 0"
                print(f"  {count} subscriber(s), Orisun: p50 {ours['p50_ms']:.2f} ms, p99 {ours['p99_ms']:.2f} ms "
                      f"({ratio}, target < 20 ms: {'met' if ours['p99_ms'] < 20 else 'missed'}), "
                      f"max {ours['max_ms']:.1f} ms; appends skipped {ours['skipped']}, failed {ours['failed']}; "
                      f"per subscriber missing/duplicated/out of order: "
                      f"{ours['missing']}/{ours['duplicated']}/{ours['unordered']} (must be 0/0/0)")

        if args.only != "live":
            print(f"\nCatch-up from position 0 (--events {events:,} loaded after any earlier runs' events)", flush=True)
            loaded = s.loop.run_until_complete(load(s.address, events))
            total = _head(s.conninfo)
            print(f"  (loaded in {loaded:.0f} s, {events / loaded:,.0f} events/s; {total:,} events in all)", flush=True)
            with psycopg.connect(s.conninfo, autocommit=True) as conn:
                conn.execute("VACUUM ANALYZE")  # what autovacuum would have done by now
            scan = subscribe = bare = float("inf")
            cpu = 0.0
            bare_server, bare_address = start_bare()
            try:
                for _ in range(2):  # best of two each, interleaved: the first of each warms caches
                    scan = min(scan, raw_scan(s.conninfo, total))
                    took, used = catch_up(s.address, total, args.catchup_client)
                    if took < subscribe:
                        subscribe, cpu = took, used
                    bare = min(bare, catch_up(bare_address, total, args.catchup_client)[0])
            finally:
                bare_server.terminate()
                bare_server.wait(30)
            read, convert = s.loop.run_until_complete(breakdown(s.conninfo, total))
            print(f"  SubscribeToEvents: {total / subscribe:10,.0f} events/s ({subscribe:.1f} s); receiving "
                  f"process CPU {100 * cpu / subscribe:.0f}% of a core"
                  f"{'  client-bound?' if 100 * cpu / subscribe >= BUSY_PCT else ''}")
            print(f"  raw psycopg pages: {total / scan:10,.0f} events/s ({scan:.1f} s)")
            print(f"  bare gRPC stream:  {total / bare:10,.0f} events/s ({bare:.1f} s): prebuilt events, no work; "
                  "the ceiling of one stream in Python gRPC")
            print(f"  Orisun/raw: {scan / subscribe:.2f} (target 0.25); Orisun/bare: {bare / subscribe:.2f}; "
                  f"bare/raw (the ceiling): {scan / bare:.2f}")
            report["catch_up"] = {"events": total, "orisun_events_per_s": total / subscribe,
                                  "raw_events_per_s": total / scan, "orisun_per_raw": scan / subscribe,
                                  "bare_events_per_s": total / bare, "client": args.catchup_client,
                                  "receiver_cpu_pct": 100 * cpu / subscribe}
            print(f"  where the time goes, per event: PostgreSQL {scan / total * 1e6:.1f} µs, rows to model "
                  f"{(read - scan) / total * 1e6:.1f} µs, model to proto + serialise {convert / total * 1e6:.1f} µs, "
                  f"gRPC and the rest {(subscribe - read - convert) / total * 1e6:.1f} µs (server processes "
                  "work in parallel, so this is not additive with workers)")


    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()

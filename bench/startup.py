"""Start-up time of ``orisun`` on its embedded default: first start (initdb) and warm starts.

Measures from process launch until the gRPC health check answers SERVING, and for comparison
how long a bare ``postgres`` warm start takes on the same machine in the same run (the baseline
a launcher cannot beat). With ``--exe``, the same for built executables (one-file or the
one-folder's launcher), side by side with ``python -m orisun``; each also gets its idle memory:
the proportional set size (PSS) of its whole process tree, a few seconds after it serves.
``--workers 1,2`` repeats every measurement per ORISUN_WORKERS value and adds the time until that
many processes listen on the gRPC port (every worker up, not only the first). Prints a small table.

    python bench/startup.py [--runs 3] [--exe dist/orisun-linux-amd64 ...] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from _stack import listeners  # bench/ is on sys.path when a script here runs
from grpc_health.v1 import health_pb2, health_pb2_grpc

from orisun.runtime.postgres import EmbeddedPostgres


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serving(port: int) -> bool:
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=0.5)
            return reply.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (Linux /proc)."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):  # the process or thread ended meanwhile
                queue += [int(child) for child in (task / "children").read_text().split()]
    return found


def tree_pss_mib(pid: int) -> float:
    """Memory of a process tree: the sum of each process's PSS (shared pages counted once)."""
    total_kib = 0
    for member in process_tree(pid):
        try:
            for line in Path(f"/proc/{member}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kib += int(line.split()[1])
        except OSError:
            pass
    return total_kib / 1024


def start_once(command: list[str], data_dir: Path, idle: float = 0.0,
               workers: int | None = None) -> tuple[float, float, float]:
    """(seconds to SERVING, seconds until ``workers`` processes listen on the gRPC port (NaN if they
    never do), idle PSS in MiB after ``idle`` seconds; 0 when idle is 0)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORISUN_")}
    env.update(ORISUN_DATA_DIR=str(data_dir), ORISUN_GRPC_PORT=str(port), ORISUN_NATS_PORT=str(free_port()),
               ORISUN_ADMIN_PORT="0",
               ORISUN_LOGGING_LEVEL="WARNING")
    if workers is not None:
        env["ORISUN_WORKERS"] = str(workers)
    began = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not serving(port):
            if proc.poll() is not None:
                raise SystemExit(f"orisun exited with {proc.returncode}")
            if time.perf_counter() - began > 120:
                raise SystemExit("orisun did not serve within 120 s")
            time.sleep(0.01)
        elapsed = time.perf_counter() - began
        everyone = float("nan")
        while time.perf_counter() - began < elapsed + 30:
            if len(listeners(port)) >= (workers or 1):
                everyone = time.perf_counter() - began
                break
            time.sleep(0.01)
        if not idle:
            return elapsed, everyone, 0.0
        time.sleep(idle)  # let start-up garbage settle: this measures the idle server
        return elapsed, everyone, tree_pss_mib(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


async def bare_postgres_warm_start(data_dir: Path) -> float:
    postgres = EmbeddedPostgres(data_dir)
    await postgres.start()
    await postgres.stop()
    began = time.perf_counter()
    await postgres.start()
    elapsed = time.perf_counter() - began
    await postgres.stop()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--exe", action="append", default=[], help="an executable to measure too (repeatable)")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds idle before measuring memory")
    parser.add_argument("--workers", default="1", help="ORISUN_WORKERS values, comma-separated (e.g. 1,2; default 1)")
    args = parser.parse_args()
    worker_counts: list[int | None] = [int(w) for w in args.workers.split(",")] if args.workers else [None]
    commands = {"python -m orisun": [sys.executable, "-m", "orisun"]}
    commands.update({exe: [str(Path(exe).resolve())] for exe in args.exe})
    rows: list[tuple[str, list[float], list[float], list[float], list[float]]] = []
    for name, command in commands.items():
        for workers in worker_counts:
            firsts, warms, everyone, memory = [], [], [], []
            for _ in range(args.runs):
                base = Path(tempfile.mkdtemp(prefix="orisun-bench-", dir="/tmp"))
                base.chmod(0o755)
                try:
                    firsts.append(start_once(command, base / "data", workers=workers)[0])
                    elapsed, all_up, pss = start_once(command, base / "data", idle=args.idle, workers=workers)
                    warms.append(elapsed)
                    everyone.append(all_up)
                    memory.append(pss)
                finally:
                    shutil.rmtree(base, ignore_errors=True)
            label = name if workers is None else f"{name}, {workers} worker{'s' if workers > 1 else ''}"
            rows.append((label, firsts, warms, everyone, memory))
    base = Path(tempfile.mkdtemp(prefix="orisun-bench-", dir="/tmp"))
    base.chmod(0o755)
    try:
        baseline = asyncio.run(bare_postgres_warm_start(base / "pg"))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"{args.runs} runs each; seconds from launch to SERVING (median, min-max); idle PSS of the process tree")
    width = max(len(name) for name, *_ in rows) + 2
    print(f"{'':{width}}{'first start':>20}{'warm start':>20}{'all listening':>20}{'idle memory':>14}")
    for name, firsts, warms, everyone, memory in rows:
        print(f"{name:{width}}{_spread(firsts):>20}{_spread(warms):>20}{_spread(everyone):>20}"
              f"{statistics.median(memory):>10.0f} MiB")
    print(f"{'baseline: bare postgres':{width}}{'':>20}{baseline:>19.2f}s")


def _spread(values: list[float]) -> str:
    if any(v != v for v in values):  # NaN: not every worker was seen listening
        return "-"
    return f"{statistics.median(values):.2f}s ({min(values):.2f}-{max(values):.2f})"


if __name__ == "__main__":
    main()

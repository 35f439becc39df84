"""Start-up time of ``orisun`` on its embedded default: first start (initdb) and warm starts.

Measures from process launch until the gRPC health check answers SERVING, and for comparison
how long a bare ``postgres`` warm start takes on the same machine in the same run (the baseline
a launcher cannot beat). With ``--exe``, the same for built executables (one-file or the
one-folder's launcher), side by side with ``python -m orisun``; each also gets its idle memory:
the proportional set size (PSS) of its whole process tree, a few seconds after it serves.
With ``--workers 1,2`` each is measured with each ``ORISUN_WORKERS`` (a worker is served when the
port answers; the tree's memory then includes every worker). Prints a
small table.

    python bench/startup.py [--runs 3] [--workers 1,2] [--exe dist/orisun-linux-amd64 ...]
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


def start_once(command: list[str], data_dir: Path, idle: float = 0.0, workers: int = 1) -> tuple[float, float]:
    """(seconds to SERVING, idle PSS in MiB after ``idle`` seconds; 0 when idle is 0)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORISUN_")}
    env.update(ORISUN_DATA_DIR=str(data_dir), ORISUN_GRPC_PORT=str(port), ORISUN_NATS_PORT=str(free_port()),
               ORISUN_ADMIN_PORT="0", ORISUN_WORKERS=str(workers),
               ORISUN_LOGGING_LEVEL="WARNING")
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
        if not idle:
            return elapsed, 0.0
        time.sleep(idle)  # let start-up garbage settle: this measures the idle server
        return elapsed, tree_pss_mib(proc.pid)
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
    parser.add_argument("--workers", default="1", help="comma-separated ORISUN_WORKERS values to measure")
    args = parser.parse_args()
    commands = {"python -m orisun": [sys.executable, "-m", "orisun"]}
    commands.update({exe: [str(Path(exe).resolve())] for exe in args.exe})
    rows: list[tuple[str, list[float], list[float], list[float]]] = []
    for workers in (int(each) for each in args.workers.split(",")):
        for name, command in commands.items():
            firsts, warms, memory = [], [], []
            for _ in range(args.runs):
                base = Path(tempfile.mkdtemp(prefix="orisun-bench-", dir="/tmp"))
                base.chmod(0o755)
                try:
                    firsts.append(start_once(command, base / "data", workers=workers)[0])
                    elapsed, pss = start_once(command, base / "data", idle=args.idle, workers=workers)
                    warms.append(elapsed)
                    memory.append(pss)
                finally:
                    shutil.rmtree(base, ignore_errors=True)
            rows.append((f"{name}, {workers} worker{'s' if workers > 1 else ''}", firsts, warms, memory))
    base = Path(tempfile.mkdtemp(prefix="orisun-bench-", dir="/tmp"))
    base.chmod(0o755)
    try:
        baseline = asyncio.run(bare_postgres_warm_start(base / "pg"))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"{args.runs} runs each; seconds from launch to SERVING (median, min-max); idle PSS of the process tree")
    width = max(len(name) for name, *_ in rows) + 2
    print(f"{'':{width}}{'first start':>20}{'warm start':>20}{'idle memory':>14}")
    for name, firsts, warms, memory in rows:
        print(f"{name:{width}}{_spread(firsts):>20}{_spread(warms):>20}{statistics.median(memory):>10.0f} MiB")
    print(f"{'baseline: bare postgres':{width}}{'':>20}{baseline:>19.2f}s")


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}s ({min(values):.2f}-{max(values):.2f})"


if __name__ == "__main__":
    main()

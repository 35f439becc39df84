"""Start-up time of ``orisun`` on its embedded default: first start (initdb) and warm starts.

Measures from process launch until the gRPC health check answers SERVING, and for comparison
how long a bare ``postgres`` warm start takes on the same machine in the same run (the baseline
a launcher cannot beat). Prints a small table.

    python bench/startup.py [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
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

from orisun.storage.embedded import EmbeddedPostgres


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


def start_once(data_dir: Path) -> float:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORISUN_")}
    env.update(ORISUN_DATA_DIR=str(data_dir), ORISUN_GRPC_PORT=str(port), ORISUN_NATS_PORT=str(free_port()),
               ORISUN_LOGGING_LEVEL="WARNING")
    began = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "orisun"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while not serving(port):
            if proc.poll() is not None:
                raise SystemExit(f"orisun exited with {proc.returncode}")
            if time.perf_counter() - began > 120:
                raise SystemExit("orisun did not serve within 120 s")
            time.sleep(0.01)
        return time.perf_counter() - began
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
    runs = parser.parse_args().runs
    firsts, warms = [], []
    for _ in range(runs):
        base = Path(tempfile.mkdtemp(prefix="orisun-bench-", dir="/tmp"))
        base.chmod(0o755)
        try:
            firsts.append(start_once(base / "data"))
            warms.append(start_once(base / "data"))
        finally:
            shutil.rmtree(base, ignore_errors=True)
    base = Path(tempfile.mkdtemp(prefix="orisun-bench-", dir="/tmp"))
    base.chmod(0o755)
    try:
        baseline = asyncio.run(bare_postgres_warm_start(base / "pg"))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"{'':36}{'median':>10}{'min':>10}{'max':>10}")
    for name, values in (("orisun first start (initdb) to SERVING", firsts), ("orisun warm start to SERVING", warms)):
        print(f"{name:36}{statistics.median(values):>9.2f}s{min(values):>9.2f}s{max(values):>9.2f}s")
    print(f"{'baseline: bare postgres warm start':36}{baseline:>9.2f}s")


if __name__ == "__main__":
    main()

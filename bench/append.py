"""Append throughput and latency of SaveEvents, beside a raw-PostgreSQL baseline in the same run.

Starts an embedded PostgreSQL and an ``orisun`` server process on it, then for each scenario
drives SaveEvents from grpc.aio callers for a fixed time and reports events/s and call latency
(p50/p99). The baseline does the closest thing with psycopg alone: one INSERT transaction per
call into a plain table, from as many concurrent connections. These 2-vCPU machines are noisy:
compare the ratio within one run, not absolute numbers across runs.

    python bench/append.py [--seconds 10] [--callers 1,16,64] [--batch 1,100] [--preload 0]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import grpc
import psycopg
from _stack import AUTH, percentiles, stack  # bench/ is on sys.path when a script here runs

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc

DATA = '{"amount": 42, "currency": "EUR", "note": "' + "x" * 160 + '"}'
METADATA = '{"source": "bench"}'


def summary(latencies: list[float], events: int, seconds: float) -> tuple[float, float, float]:
    p50, p99 = percentiles(latencies)
    return events / seconds, p50, p99


async def drive(callers: int, seconds: float, call: Callable[[int, int], Awaitable[int]]) -> tuple[float, float, float]:
    """Run ``call(caller, n)`` in a loop from ``callers`` tasks for ``seconds``; events/s, p50, p99 (ms)."""
    latencies: list[float] = []
    total = 0
    deadline = time.perf_counter() + seconds

    async def caller(index: int) -> None:
        nonlocal total
        n = 0
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            added = await call(index, n)  # not "total += await": that reads total before awaiting
            total += added
            latencies.append(time.perf_counter() - began)
            n += 1

    began = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(callers)))
    return summary(latencies, total, time.perf_counter() - began)


async def orisun_scenario(address: str, callers: int, batch: int, seconds: float) -> tuple[float, float, float]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.EventStoreStub(channel)
        run = uuid.uuid4().hex[:8]

        async def call(index: int, n: int) -> int:
            events = [
                pb.EventToSave(event_id=str(uuid.uuid4()), event_type="MoneyDeposited", data=DATA, metadata=METADATA,
                               tags=[pb.Tag(key="account", value=f"a-{index}")])
                for _ in range(batch)
            ]
            await stub.SaveEvents(pb.SaveEventsRequest(
                boundary="bench", stream=pb.SaveStreamQuery(name=f"s-{run}-{index}", expected_version=-2),
                events=events), metadata=AUTH)
            return batch

        return await drive(callers, seconds, call)


async def baseline_scenario(conninfo: str, callers: int, batch: int, seconds: float) -> tuple[float, float, float]:
    connections = [await psycopg.AsyncConnection.connect(conninfo, autocommit=True) for _ in range(callers)]
    try:
        await connections[0].execute(
            "CREATE TABLE IF NOT EXISTS baseline (id bigserial PRIMARY KEY, stream text, event_id uuid, type text, "
            "data text, metadata text)")

        async def call(index: int, n: int) -> int:
            conn = connections[index]
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO baseline (stream, event_id, type, data, metadata) "
                    "SELECT %s, gen_random_uuid(), 'MoneyDeposited', %s, %s FROM generate_series(1, %s)",
                    (f"s-{index}", DATA, METADATA, batch))
            return batch

        return await drive(callers, seconds, call)
    finally:
        for conn in connections:
            await conn.close()


async def preload(address: str, events: int) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.EventStoreStub(channel)
        for start in range(0, events, 5000):
            batch = [
                pb.EventToSave(event_id=str(uuid.uuid4()), event_type="Preloaded", data=DATA,
                               tags=[pb.Tag(key="k", value=str(i % 100))])
                for i in range(min(5000, events - start))
            ]
            await stub.SaveEvents(pb.SaveEventsRequest(
                boundary="bench", stream=pb.SaveStreamQuery(name=f"pre-{start}", expected_version=-2), events=batch),
                metadata=AUTH)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--callers", default="1,16,64")
    parser.add_argument("--batch", default="1,100")
    parser.add_argument("--preload", type=int, default=0, help="events saved before measuring")
    args = parser.parse_args()
    with stack("bench") as bench:
        run = bench.loop.run_until_complete
        if args.preload:
            run(preload(bench.address, args.preload))
        print(f"{'scenario':28}{'orisun ev/s':>13}{'p50 ms':>9}{'p99 ms':>9}{'raw pg ev/s':>13}{'p50 ms':>9}"
              f"{'p99 ms':>9}{'ratio':>8}")
        for batch in (int(b) for b in args.batch.split(",")):
            for callers in (int(c) for c in args.callers.split(",")):
                ours = run(orisun_scenario(bench.address, callers, batch, args.seconds))
                raw = run(baseline_scenario(bench.conninfo, callers, batch, args.seconds))
                name = f"{callers} callers x {batch} ev/call"
                print(f"{name:28}{ours[0]:>13,.0f}{ours[1]:>9.2f}{ours[2]:>9.2f}{raw[0]:>13,.0f}{raw[1]:>9.2f}"
                      f"{raw[2]:>9.2f}{ours[0] / raw[0]:>8.2f}", flush=True)


if __name__ == "__main__":
    main()

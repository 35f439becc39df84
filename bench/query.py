"""GetEvents latency at scale (tag queries, stream reads, pages), beside the same SQL run raw.

Loads ``--events`` events (default 1,000,000) through SaveEvents, tagged with a tenant (1,000
values), a region (7 values) and one of 10 event types, 10 events per stream. Then runs each
query ``--calls`` times through gRPC, and the identical SQL statement Orisun generates through
plain psycopg (the baseline: what PostgreSQL alone needs). Reports p50/p99 in ms and the ratio.

    python bench/query.py [--events 1000000] [--calls 200] [--workers N]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

import grpc
import psycopg
from _stack import AUTH, percentiles, stack  # bench/ is on sys.path when a script here runs

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from orisun.model import Criterion, Direction, Position, Query, ReadRequest, Tag
from orisun.storage.events import build_read

BOUNDARY = "bench"
DATA = '{"amount": 42, "currency": "EUR", "note": "' + "x" * 100 + '"}'


async def load(address: str, events: int) -> float:
    began = time.perf_counter()
    async with grpc.aio.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        stub = pb_grpc.EventStoreStub(channel)

        async def batch(start: int) -> None:
            await stub.SaveEvents(pb.SaveEventsRequest(
                boundary=BOUNDARY, stream=pb.SaveStreamQuery(name=f"load-{start}", expected_version=-2),
                events=[pb.EventToSave(
                    event_id=str(uuid.uuid4()), event_type=f"type-{i % 10}", data=DATA,
                    tags=[pb.Tag(key="tenant", value=f"t-{i % 1000}"), pb.Tag(key="region", value=f"r-{i % 7}"),
                          pb.Tag(key="order", value=f"order-{i // 10}")])
                    for i in range(start, min(start + 5000, events))]), metadata=AUTH)

        starts = list(range(0, events, 5000))
        for i in range(0, len(starts), 2):  # two calls in flight: group commit, bounded memory
            await asyncio.gather(*(batch(s) for s in starts[i:i + 2]))
    return time.perf_counter() - began


def q(*criteria: list[tuple[str, str]]) -> Query:
    return Query(tuple(Criterion(tuple(Tag(k, v) for k, v in c)) for c in criteria))


def to_proto(request: ReadRequest) -> pb.GetEventsRequest:
    message = pb.GetEventsRequest(boundary=request.boundary, count=request.count,
                                  direction=pb.ASC if request.direction == Direction.ASC else pb.DESC)
    if request.query is not None:
        message.query.CopyFrom(pb.Query(criteria=[
            pb.Criterion(tags=[pb.Tag(key=t.key, value=t.value) for t in c.tags]) for c in request.query.criteria]))
    if request.stream is not None:
        message.stream.name = request.stream
    if request.after is not None:
        message.last_retrieved_position.commit_position = request.after.commit
        message.last_retrieved_position.prepare_position = request.after.prepare
    return message


def scenarios(events: int) -> dict[str, ReadRequest]:
    middle = Position(events // 2, events // 2)
    return {
        "tag, 0.1% of events": ReadRequest(BOUNDARY, query=q([("tenant", "t-123")])),
        "tag AND event_type": ReadRequest(BOUNDARY, query=q([("tenant", "t-123"), ("event_type", "type-3")])),
        "3 tags OR'd": ReadRequest(BOUNDARY, query=q([("tenant", "t-1")], [("tenant", "t-2")], [("tenant", "t-3")])),
        "tag, 14%, from the middle": ReadRequest(BOUNDARY, query=q([("region", "r-3")]), after=middle),
        "tag, 0.1%, DESC": ReadRequest(BOUNDARY, query=q([("tenant", "t-999")]), direction=Direction.DESC),
        "tag, 10 events (an order)": ReadRequest(BOUNDARY, query=q([("order", f"order-{events // 20}")])),
        "stream of 5,000": ReadRequest(BOUNDARY, stream=f"load-{(events // 2) // 5000 * 5000}"),
        "all, page from the middle": ReadRequest(BOUNDARY, after=middle),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--workers", type=int, help="ORISUN_WORKERS for the server (default: unset)")
    args = parser.parse_args()
    with stack(BOUNDARY, workers=args.workers) as bench:
        seconds = bench.loop.run_until_complete(load(bench.address, args.events))
        print(f"loaded {args.events:,} events in {seconds:.0f} s ({args.events / seconds:,.0f} events/s)")
        with psycopg.connect(bench.conninfo, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")  # what autovacuum would have done by now on a live system
        print(f"{'GetEvents, count 100':28}{'rows':>6}{'orisun p50':>12}{'p99':>8}{'raw SQL p50':>13}{'p99':>8}"
              f"{'ratio':>7}")
        with grpc.insecure_channel(bench.address) as channel, psycopg.connect(bench.conninfo) as conn:
            stub = pb_grpc.EventStoreStub(channel)
            for name, request in scenarios(args.events).items():
                message = to_proto(request)
                statement, params = build_read(BOUNDARY, request)
                ours: list[float] = []
                raw: list[float] = []
                rows: Any = None
                for _ in range(args.calls):
                    began = time.perf_counter()
                    rows = stub.GetEvents(message, metadata=AUTH, timeout=30).events
                    ours.append(time.perf_counter() - began)
                    began = time.perf_counter()
                    conn.execute(statement, params).fetchall()
                    raw.append(time.perf_counter() - began)
                (o50, o99), (r50, r99) = percentiles(ours), percentiles(raw)
                print(f"{name:28}{len(rows):>6}{o50:>12.2f}{o99:>8.2f}{r50:>13.2f}{r99:>8.2f}{r50 / o50:>7.2f}",
                      flush=True)


if __name__ == "__main__":
    main()

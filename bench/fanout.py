"""The ceiling of live fan-out in Python gRPC: what pushing one message at a time to many
streams costs a grpc.aio server that does nothing else.

A bare server (no Orisun code, no PostgreSQL, no NATS) ticks ``--rate`` times a second and hands
one prebuilt, pre-serialised 300-byte message to each of ``--streams`` open server-streaming calls, as
a live subscription does with each committed event. The streams are read by the benchmarks'
HTTP/2 counting client (bench/_h2count.py) in ``--processes`` client processes. Prints the
messages per second achieved, the server's CPU per message, and the cores the issue's live
target (50 subscribers x 1,000 events/s) would take at that cost, before any event is written.

    python bench/fanout.py [--streams 50] [--rate 200] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import time
from collections.abc import AsyncIterator
from multiprocessing.connection import Connection

import grpc
from _h2count import count_stream  # bench/ is on sys.path when a script here runs
from _stack import free_port

METHOD = "/bench.Fanout/Follow"
MESSAGE = b"x" * 300


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _serve(port: int, rate: float, ready: Connection) -> None:
    queues: set[asyncio.Queue[bytes]] = set()

    async def follow(request: bytes, context: object) -> AsyncIterator[bytes]:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        queues.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            queues.discard(queue)

    async def tick() -> None:
        interval, due = 1.0 / rate, time.monotonic()
        while True:
            due += interval
            for queue in queues:
                queue.put_nowait(MESSAGE)
            await asyncio.sleep(max(0.0, due - time.monotonic()))

    server = grpc.aio.server()
    handler = grpc.unary_stream_rpc_method_handler(follow, request_deserializer=bytes,  # type: ignore[arg-type]
                                                   response_serializer=bytes)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Fanout", {"Follow": handler})])
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    ticker = asyncio.create_task(tick())
    ready.send(os.getpid())
    await server.wait_for_termination()
    ticker.cancel()


def _server(port: int, rate: float, ready: Connection) -> None:
    try:
        import uvloop  # as the orisun command runs
        uvloop.run(_serve(port, rate, ready))
    except ImportError:
        asyncio.run(_serve(port, rate, ready))


def _reader(port: int, streams: int, messages: int, out: Connection) -> None:
    import threading

    counts: list[int] = []

    def one() -> None:
        counts.append(count_stream("127.0.0.1", port, METHOD, b"", [], messages)[0])

    threads = [threading.Thread(target=one) for _ in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.send(sum(counts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--rate", type=float, default=200.0, help="messages per second to each stream")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--processes", type=int, default=4, help="client processes reading the streams")
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    port = free_port()
    mine, theirs = context.Pipe(duplex=False)
    server = context.Process(target=_server, args=(port, args.rate, theirs), daemon=True)
    server.start()
    pid = mine.recv()
    messages = int(args.rate * args.seconds)
    shares = [args.streams // args.processes + (1 if i < args.streams % args.processes else 0)
              for i in range(args.processes)]
    readers = []
    for share in filter(None, shares):
        got, sent = context.Pipe(duplex=False)
        reader = context.Process(target=_reader, args=(port, share, messages, sent), daemon=True)
        reader.start()
        readers.append((reader, got))
    time.sleep(1.0)  # the streams open and the first ticks pass before measuring
    cpu, began = _cpu(pid), time.perf_counter()
    total = sum(got.recv() for _, got in readers)
    elapsed, used = time.perf_counter() - began, _cpu(pid) - cpu
    server.terminate()
    # Each stream ends after ``messages``: the window saw the last (seconds - 1) of them, unless
    # the server fell behind, which shows as the window lasting longer than that.
    in_window = args.streams * args.rate * (args.seconds - 1.0)
    per_message = used / in_window
    kept_up = elapsed <= (args.seconds - 1.0) * 1.1
    print(f"{args.streams} streams x {args.rate:,.0f} messages/s: {total:,} messages delivered; the measured "
          f"{args.seconds - 1:g} s took {elapsed:.1f} s ({'kept up' if kept_up else 'FELL BEHIND'}); server CPU "
          f"{per_message * 1e6:.1f} µs per message, {100 * used / elapsed:.0f}% of a core")
    print(f"50 subscribers x 1,000 events/s = 50,000 messages/s would take {50_000 * per_message:.2f} cores "
          f"of this machine's {os.cpu_count()} for the fan-out alone, before any write")
    sys.exit(0)


if __name__ == "__main__":
    main()

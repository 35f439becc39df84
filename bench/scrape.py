"""The cost of a ``GET /metrics`` scrape as a node's store grows, under load, with a lagging subscription.

A node (``--workers``, default 2) serves one boundary. In rounds, the store is grown to each size
of ``--sizes`` (events, written 1,000 per SaveEvents call); ``--scrapes`` scrapes are timed with
no other load (``idle``), then again while ``--writers`` client threads append one event per call
(p50/p99), beside the same number of raw PostgreSQL reads of the boundary's head
(``SELECT position FROM <schema>.head``, what a scrape reads per boundary) in the same round,
since the machine is noisy. A scrape that
stays flat while the store grows 100-fold is what "bounded" means here; the ratio to the raw
read shows the fixed price of asking the workers, NATS and the pools.

A named subscription (``billing``) reads 10 events and then stops reading, so the scrape shows
it lagging; the last scrape's Orisun series are printed at the end (``--print-scrape``).

    python bench/scrape.py [--sizes 10000,100000,1000000] [--workers 2] [--writers 4] [--scrapes 50]
"""

from __future__ import annotations

import argparse
import threading
import time
import urllib.request
import uuid

import grpc
import psycopg
from _stack import AUTH, OWN_CONNECTION, free_port, orisun, percentiles, postgres  # bench/ is on sys.path
from prometheus_client.parser import text_string_to_metric_families

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc

BOUNDARY = "bench_scrape"


def _events(count: int) -> list[pb.EventToSave]:
    return [pb.EventToSave(event_id=str(uuid.uuid4()), event_type="Measured", data='{"n": 1}',
                           tags=[pb.Tag(key="kind", value="bench")]) for _ in range(count)]


def _save(stub: pb_grpc.EventStoreStub, count: int) -> None:
    stream = pb.SaveStreamQuery(name=f"s-{uuid.uuid4().hex[:12]}", expected_version=-2)
    stub.SaveEvents(pb.SaveEventsRequest(boundary=BOUNDARY, stream=stream, events=_events(count)),
                    metadata=AUTH, timeout=60)


def _grow(stub: pb_grpc.EventStoreStub, head: int, size: int) -> int:
    while head < size:
        batch = min(1000, size - head)
        _save(stub, batch)
        head += batch
    return head


def _writers(address: str, count: int, stop: threading.Event) -> list[threading.Thread]:
    def write() -> None:
        with grpc.insecure_channel(address, options=OWN_CONNECTION) as channel:
            stub = pb_grpc.EventStoreStub(channel)
            while not stop.is_set():
                _save(stub, 1)

    threads = [threading.Thread(target=write, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return str(answer.read().decode())


def _timed(action: object, times: int) -> list[float]:
    samples = []
    for _ in range(times):
        began = time.perf_counter()
        action()  # type: ignore[operator]
        samples.append(time.perf_counter() - began)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--scrapes", type=int, default=50)
    parser.add_argument("--print-scrape", action="store_true", help="print the last scrape's orisun_* series")
    args = parser.parse_args()
    sizes = [int(each) for each in args.sizes.split(",")]
    admin_port = free_port()
    url = f"http://127.0.0.1:{admin_port}/metrics"
    with postgres() as pg, orisun(pg, BOUNDARY, args.workers, admin_port=admin_port) as node:
        channel = grpc.insecure_channel(node.address, options=OWN_CONNECTION)
        stub = pb_grpc.EventStoreStub(channel)
        _save(stub, 20)
        # A named subscription that takes 10 events and then stops reading: its lag grows.
        lagging = stub.CatchUpSubscribeToEvents(
            pb.CatchUpSubscribeToEventStoreRequest(boundary=BOUNDARY, subscriber_name="billing"), metadata=AUTH)
        for _ in range(10):
            next(lagging)
        head = 20
        with psycopg.connect(pg.conninfo, autocommit=True) as conn:
            schema = BOUNDARY  # ORISUN_PG_SCHEMAS=<name>: the schema has the boundary's name
            query = f"SELECT position FROM {schema}.head"  # a constant identifier of this script
            print(f"{'events':>10} {'idle p50':>9} {'scrape p50':>11} {'p99':>8} {'raw head p50':>13} {'p99':>8}"
                  f" {'ratio p50':>9} {'billing lag':>12}")
            text = ""
            for size in sizes:
                head = _grow(stub, head, size)
                _scrape(url)  # warm: the first scrape opens what later ones reuse
                idle = _timed(lambda: _scrape(url), args.scrapes)
                stop = threading.Event()
                threads = _writers(node.address, args.writers, stop)
                try:
                    scraped = _timed(lambda: _scrape(url), args.scrapes)
                    raw = _timed(lambda: conn.execute(query).fetchone(), args.scrapes)
                    text = _scrape(url)
                finally:
                    stop.set()
                    for thread in threads:
                        thread.join()
                lag = next((sample.value for family in text_string_to_metric_families(text)
                            for sample in family.samples
                            if sample.name == "orisun_subscription_lag_events"
                            and sample.labels.get("subscriber") == "billing"), float("nan"))
                (s50, s99), (r50, r99), (i50, _) = percentiles(scraped), percentiles(raw), percentiles(idle)
                print(f"{size:>10,} {i50:>7.1f}ms {s50:>9.1f}ms {s99:>6.1f}ms {r50:>11.2f}ms {r99:>6.2f}ms"
                      f" {s50 / r50:>9.0f} {lag:>12,.0f}", flush=True)
        lagging.cancel()
        channel.close()
        if args.print_scrape:
            print()
            print("\n".join(line for line in text.splitlines() if line.startswith(("orisun_", "process_cpu"))))


if __name__ == "__main__":
    main()

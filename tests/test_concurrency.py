"""Concurrency on a real server (docs/contract.md §2 to §4): group commit under load, racing writers,
readers paging while writers commit, two nodes on one database, racing idempotent retries, and
appends to a table that already holds many events.

Every write is recorded with its outcome; ``verify`` then checks the whole boundary against the
record: dense positions, each write contiguous and complete, stream versions without holes,
WriteResults equal to what is stored, nothing stored that was refused.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import statistics
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc
import pytest

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from tests.support import CHANNEL_OPTIONS, ServerThread, auth_metadata

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=[1, 2], ids=["1-worker", "2-workers"])
def workers(request: pytest.FixtureRequest) -> int:
    """Each test runs on a node of one process and on a supervisor with two worker processes
    (ORISUN_WORKERS), whose writes, reads and retries meet only in PostgreSQL."""
    return int(request.param)

BOUNDARY = "load"
BOUNDARIES = {"orisun_admin": "orisun_admin", BOUNDARY: "load_store"}
AUTH = auth_metadata()
CALL_TIMEOUT = 30.0
# The outcome of a call that failed this way is unknown: it may or may not have committed.
AMBIGUOUS = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED})
CONFLICT = re.compile(r"expected (-?\d+), actual (-?\d+)")


@dataclass
class Write:
    """One SaveEvents call as sent, and what came back."""

    stream: str
    expected: int
    events: list[pb.EventToSave]
    writer: int = -1
    result: pb.WriteResult | None = None
    code: grpc.StatusCode | None = None
    details: str = ""
    attempts: list[grpc.StatusCode] = field(default_factory=list)
    sent_at: float = 0.0  # time.monotonic() when last sent

    @property
    def ids(self) -> list[str]:
        return [e.event_id for e in self.events]

    def request(self, boundary: str = BOUNDARY) -> pb.SaveEventsRequest:
        return pb.SaveEventsRequest(
            boundary=boundary,
            stream=pb.SaveStreamQuery(name=self.stream, expected_version=self.expected),
            events=self.events,
        )


def new_events(count: int, writer: int = 0, kind: str = "Happened") -> list[pb.EventToSave]:
    return [
        pb.EventToSave(
            event_id=str(uuid.uuid4()),
            event_type=kind,
            data=json.dumps({"writer": writer, "n": i, "pad": "x" * random.randint(0, 40)}),
            metadata='{"by": "test"}' if i % 2 else "",
            tags=[pb.Tag(key="writer", value=str(writer))],
        )
        for i in range(count)
    ]


async def save(stub: pb_grpc.EventStoreStub, write: Write, deadline_s: float = CALL_TIMEOUT) -> Write:
    """Send ``write`` once (gRPC deadline ``deadline_s``); its result or error code is recorded on it."""
    write.sent_at = time.monotonic()
    try:
        write.result = await stub.SaveEvents(write.request(), metadata=AUTH, timeout=deadline_s)
        write.code = None
        write.attempts.append(grpc.StatusCode.OK)
    except grpc.aio.AioRpcError as exc:
        write.code, write.details = exc.code(), exc.details() or ""
        write.attempts.append(exc.code())
    return write


def page_request(after: pb.Position | None, count: int, boundary: str = BOUNDARY) -> pb.GetEventsRequest:
    request = pb.GetEventsRequest(boundary=boundary, count=count, direction=pb.ASC)
    if after is not None:
        request.last_retrieved_position.CopyFrom(after)
    return request


async def read_all(stub: pb_grpc.EventStoreStub, page: int = 10_000) -> list[pb.Event]:
    """The whole boundary in ASC order, paged with the exclusive cursor."""
    events: list[pb.Event] = []
    after = None
    while True:
        got = (await stub.GetEvents(page_request(after, page), metadata=AUTH, timeout=CALL_TIMEOUT)).events
        events.extend(got)
        if len(got) < page:
            return events
        after = got[-1].position


def read_all_sync(server: ServerThread) -> list[pb.Event]:
    async def main() -> list[pb.Event]:
        async with grpc.aio.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
            return await read_all(pb_grpc.EventStoreStub(channel))

    return asyncio.run(main())


def key(event: pb.Event) -> tuple[str, int, int, str, int]:
    return (event.event_id, event.position.prepare_position, event.position.commit_position, event.stream_id,
            event.version)


def verify(events: Sequence[pb.Event], writes: Sequence[Write]) -> None:
    """The stored boundary ``events`` (a full ASC read) against every recorded write."""
    positions = [e.position.prepare_position for e in events]
    assert positions == list(range(1, len(events) + 1)), "positions are not exactly 1..N"
    by_id = {e.event_id: e for e in events}
    assert len(by_id) == len(events), "an event id is stored twice"
    owners = {i for w in writes for i in w.ids}
    assert [e.event_id for e in events if e.event_id not in owners] == [], "stored events nobody wrote"

    # Ids a refused write may share with a stored one (a duplicate event id is refused).
    claimed = {i for w in writes if w.result is not None or w.code in AMBIGUOUS for i in w.ids}
    last_position: dict[int, int] = {}
    for w in writes:
        stored = [by_id.get(i) for i in w.ids]
        present = [e for e in stored if e is not None]
        if w.result is not None:
            assert len(present) == len(stored), f"acknowledged write {w.ids} not fully stored"
        elif w.code in AMBIGUOUS:
            assert len(present) in (0, len(stored)), f"partial write stored after {w.code}: {w.ids}"
        else:
            leaked = [e for e in present if e.event_id not in claimed]
            assert leaked == [], f"write refused with {w.code} ({w.details}) is stored"
            continue
        if not present:
            continue
        first = present[0].position.prepare_position
        last = first + len(present) - 1
        assert [e.position.prepare_position for e in present] == list(range(first, last + 1)), "write not contiguous"
        assert {e.position.commit_position for e in present} == {last}, "commit_position != last event's position"
        assert {e.stream_id for e in present} == {w.stream}
        v0 = present[0].version
        assert [e.version for e in present] == list(range(v0, v0 + len(present)))
        for sent, got in zip(w.events, present, strict=True):
            assert (got.event_type, got.data, got.metadata, list(got.tags)) == (
                sent.event_type, sent.data, sent.metadata, list(sent.tags))
        if w.result is not None:
            assert (w.result.log_position.commit_position, w.result.log_position.prepare_position) == (last, last)
            assert w.result.new_stream_version == present[-1].version
            if w.expected >= 0:
                assert v0 == w.expected + 1
            elif w.expected == -1:
                assert v0 == 0
            # One client's acknowledged writes, sent one after another, are ordered as sent.
            if w.writer >= 0:
                assert last > last_position.get(w.writer, 0), "a later write got an earlier position"
                last_position[w.writer] = last

    versions: dict[str, list[int]] = defaultdict(list)
    for e in events:
        versions[e.stream_id].append(e.version)
    for stream, seen in versions.items():
        assert seen == list(range(len(seen))), f"stream {stream} versions have holes or are out of order"


def actual_version(details: str, expected: int) -> int:
    """The actual version a conflict reports; it names ``expected``, and the stream has moved past it."""
    match = CONFLICT.search(details)
    assert match is not None, f"conflict message without 'expected X, actual Y': {details!r}"
    assert int(match.group(1)) == expected, details
    assert int(match.group(2)) > expected, details
    return int(match.group(2))


async def writer_task(
    stub: pb_grpc.EventStoreStub, writer: int, mode: str, streams: Sequence[str], calls: int, log: list[Write],
    deadline: float,
) -> int:
    """``calls`` SaveEvents of 1-3 events. ``mode``: "any" (expected -2), "cas" (exact expected
    version, retried on conflict with the actual version), "own" (exact, on a stream of its own).
    Returns the number of conflicts met."""
    rng = random.Random(writer)
    known: dict[str, int] = dict.fromkeys(streams, -1)
    conflicts = 0
    for _ in range(calls):
        if time.monotonic() > deadline:
            break
        stream = rng.choice(streams)
        expected = -2 if mode == "any" else known[stream]
        write = Write(stream, expected, new_events(rng.randint(1, 3), writer), writer)
        log.append(write)
        await save(stub, write)
        if write.result is not None:
            known[stream] = write.result.new_stream_version
        elif write.code == grpc.StatusCode.ALREADY_EXISTS and mode == "cas":
            conflicts += 1
            known[stream] = actual_version(write.details, expected)
        else:
            raise AssertionError(f"writer {writer} ({mode}): {write.code} {write.details}")
    return conflicts


def mixed_writers(stubs: Sequence[pb_grpc.EventStoreStub], calls: int, log: list[Write], deadline: float,
                  tag: str = "") -> list[asyncio.Task[int]]:
    """16 writers: 5 on three shared streams with -2, 6 racing on two streams with exact versions
    (retrying on conflict), 5 each on a stream of its own."""
    tasks = []
    for w in range(16):
        stub = stubs[w % len(stubs)]
        if w < 5:
            mode, streams = "any", [f"{tag}any-{i}" for i in range(3)]
        elif w < 11:
            mode, streams = "cas", [f"{tag}cas-{i}" for i in range(2)]
        else:
            mode, streams = "own", [f"{tag}own-{w}"]
        tasks.append(asyncio.create_task(writer_task(stub, w, mode, streams, calls, log, deadline)))
    return tasks


async def paging_reader(stub: pb_grpc.EventStoreStub, page: int, writing: Callable[[], bool]) -> tuple[list, int]:
    """Page ASC with the exclusive cursor while ``writing()``; then on until a short page.
    Returns every event seen, in order, and the number of non-empty pages read during writing."""
    seen: list[pb.Event] = []
    after = None
    busy_pages = 0
    while True:
        still_writing = writing()
        got = (await stub.GetEvents(page_request(after, page), metadata=AUTH, timeout=CALL_TIMEOUT)).events
        seen.extend(got)
        if got:
            after = got[-1].position
            busy_pages += still_writing
        if not still_writing and len(got) < page:
            return seen, busy_pages
        if not got:
            await asyncio.sleep(0)  # yield to the writers; not a synchronisation


@pytest.mark.timeout(90)
def test_many_writers_store_every_acknowledged_event_once(
    start_server: Callable[..., ServerThread], workers: int
) -> None:
    server = start_server(boundaries=BOUNDARIES, workers=workers)
    log: list[Write] = []

    async def main() -> tuple[int, list[pb.Event]]:
        channels = [grpc.aio.insecure_channel(server.address, options=CHANNEL_OPTIONS) for _ in range(16)]
        try:
            stubs = [pb_grpc.EventStoreStub(c) for c in channels]
            tasks = mixed_writers(stubs, 150, log, time.monotonic() + 60)
            conflicts = sum(await asyncio.gather(*tasks))
            return conflicts, await read_all(stubs[0])
        finally:
            for channel in channels:
                await channel.close()

    began = time.monotonic()
    conflicts, events = asyncio.run(main())
    acked = [w for w in log if w.result is not None]
    print(f"{len(log)} calls, {len(acked)} acknowledged, {len(events)} events, {conflicts} conflicts "
          f"in {time.monotonic() - began:.1f}s")
    assert len(log) == 16 * 150
    assert conflicts > 0, "the racing writers never conflicted: the conflict path was not exercised"
    assert sum(len(w.events) for w in acked) == len(events)
    verify(events, log)


@pytest.mark.timeout(60)
def test_racing_writers_exactly_one_wins(start_server: Callable[..., ServerThread], workers: int) -> None:
    server = start_server(boundaries=BOUNDARIES, workers=workers)
    racers = 20
    winners: list[Write] = []
    log: list[Write] = []

    async def race(stubs: Sequence[pb_grpc.EventStoreStub], stream: str, expected: int) -> Write:
        writes = [Write(stream, expected, new_events(1 + i % 3, i)) for i in range(racers)]
        log.extend(writes)
        await asyncio.gather(*(save(stubs[i % len(stubs)], w) for i, w in enumerate(writes)))
        won = [w for w in writes if w.result is not None]
        assert len(won) == 1, f"{len(won)} winners of {racers} racers on {stream} at {expected}"
        winner = won[0]
        start = expected + 1
        assert winner.result is not None
        assert winner.result.new_stream_version == start + len(winner.events) - 1
        for w in writes:
            if w is not winner:
                assert w.code == grpc.StatusCode.ALREADY_EXISTS, (w.code, w.details)
                assert f"expected {expected}, actual {winner.result.new_stream_version}" in w.details, w.details
        return winner

    async def main() -> list[pb.Event]:
        channels = [grpc.aio.insecure_channel(server.address, options=CHANNEL_OPTIONS) for _ in range(5)]
        try:
            stubs = [pb_grpc.EventStoreStub(c) for c in channels]
            for stream in ("race-a", "race-b", "race-c"):
                winner = await race(stubs, stream, -1)  # a new stream
                winners.append(winner)
                for _ in range(4):
                    assert winner.result is not None
                    winner = await race(stubs, stream, winner.result.new_stream_version)
                    winners.append(winner)
            return await read_all(stubs[0])
        finally:
            for channel in channels:
                await channel.close()

    events = asyncio.run(main())
    assert [e.event_id for e in events] == [i for w in winners for i in w.ids]
    verify(events, log)


@pytest.mark.timeout(90)
def test_readers_paging_during_writes_skip_nothing(start_server: Callable[..., ServerThread], workers: int) -> None:
    """Pages read with the exclusive cursor while writers commit, concatenated, are exactly the
    final full read: nothing committed below a position a reader has already passed."""
    server = start_server(boundaries=BOUNDARIES, workers=workers)
    log: list[Write] = []
    target_events = 5000

    async def main() -> tuple[list[tuple[list, int]], list[pb.Event]]:
        channels = [grpc.aio.insecure_channel(server.address, options=CHANNEL_OPTIONS) for _ in range(11)]
        try:
            stubs = [pb_grpc.EventStoreStub(c) for c in channels]
            deadline = time.monotonic() + 25

            written = [0]

            async def write(writer: int) -> None:
                stream = f"s-{writer % 4}"
                while written[0] < target_events and time.monotonic() < deadline:
                    # Some big writes, so that a page often ends inside a write.
                    size = random.choice((1, 1, 2, 3, 25))
                    w = Write(stream, -2, new_events(size, writer), writer)
                    log.append(w)
                    await save(stubs[writer], w)
                    assert w.result is not None, (w.code, w.details)
                    written[0] += size

            writers = [asyncio.create_task(write(i)) for i in range(8)]

            def writing() -> bool:
                return not all(t.done() for t in writers)

            readers = [asyncio.create_task(paging_reader(stubs[8 + i], page, writing))
                       for i, page in enumerate((7, 100, 1000))]
            await asyncio.gather(*writers)
            seen = await asyncio.gather(*readers)
            return seen, await read_all(stubs[0])
        finally:
            for channel in channels:
                await channel.close()

    seen, final = asyncio.run(main())
    verify(final, log)
    assert len(final) >= min(target_events, 2000), f"only {len(final)} events written"
    expected = [key(e) for e in final]
    for (events, busy_pages), page in zip(seen, (7, 100, 1000), strict=True):
        print(f"reader with pages of {page}: {busy_pages} non-empty pages while writers ran, {len(events)} events")
        got = [key(e) for e in events]
        assert len(set(got)) == len(got), f"reader (page {page}) saw duplicates"
        assert got == expected, f"reader (page {page}) saw {len(got)} events, final read has {len(expected)}"
    assert seen[0][1] > 10, "the small-page reader never interleaved with the writers"


@pytest.mark.timeout(90)
def test_two_nodes_share_one_dense_commit_ordered_log(start_server: Callable[..., ServerThread], workers: int) -> None:
    nodes = [start_server(boundaries=BOUNDARIES, workers=workers), start_server(boundaries=BOUNDARIES, workers=workers)]
    log: list[Write] = []
    race_log: list[Write] = []

    async def main() -> tuple[list[tuple[list, int]], list[list[pb.Event]]]:
        channels = [grpc.aio.insecure_channel(nodes[i % 2].address, options=CHANNEL_OPTIONS) for i in range(8)]
        try:
            stubs = [pb_grpc.EventStoreStub(c) for c in channels]
            # Writers alternate between the nodes (stubs[i % 8] -> node i % 2).
            tasks = mixed_writers(stubs, 80, log, time.monotonic() + 40)

            def writing() -> bool:
                return not all(t.done() for t in tasks)

            readers = [asyncio.create_task(paging_reader(stubs[i], 50, writing)) for i in range(2)]
            await asyncio.gather(*tasks)
            seen = await asyncio.gather(*readers)
            # Racers split over both nodes: still exactly one winner.
            expected = -1
            for _ in range(3):
                writes = [Write("cross-race", expected, new_events(1, i)) for i in range(12)]
                race_log.extend(writes)
                await asyncio.gather(*(save(stubs[i % 8], w) for i, w in enumerate(writes)))
                won = [w.result for w in writes if w.result is not None]
                assert len(won) == 1, [(w.code, w.details) for w in writes]
                assert {w.code for w in writes if w.result is None} == {grpc.StatusCode.ALREADY_EXISTS}
                expected = won[0].new_stream_version
            # One write retried on both nodes at once: one result, stored once.
            for r in range(3):
                events = new_events(2, r)
                copies = [Write("cross-retry", -2 if r % 2 else r * 2 - 1, list(events)) for _ in range(6)]
                race_log.extend(copies)
                await asyncio.gather(*(save(stubs[i], w) for i, w in enumerate(copies)))
                answers = {w.result.SerializeToString() if w.result else (w.code, w.details) for w in copies}
                assert len(answers) == 1 and copies[0].result is not None, answers
            return seen, [await read_all(stubs[0]), await read_all(stubs[1])]
        finally:
            for channel in channels:
                await channel.close()

    seen, (on_first, on_second) = asyncio.run(main())
    assert [key(e) for e in on_first] == [key(e) for e in on_second], "the two nodes return different logs"
    verify(on_first, log + race_log)
    assert len(log) == 16 * 80
    final = [key(e) for e in on_first]
    for node, (events, busy_pages) in enumerate(seen):
        print(f"reader on node {node}: {busy_pages} pages while writing, {len(events)} events")
        assert [key(e) for e in events] == final[: len(events)]
        assert len(events) == sum(len(w.events) for w in log if w.result is not None)


@pytest.mark.timeout(60)
def test_identical_retries_racing_get_one_result(start_server: Callable[..., ServerThread], workers: int) -> None:
    """The same write (same event ids) sent by several clients at once: all get the same
    WriteResult, the events are stored once, and a late retry still gets that result."""
    server = start_server(boundaries=BOUNDARIES, workers=workers)
    log: list[Write] = []
    clients = 8

    async def main() -> list[pb.Event]:
        channels = [grpc.aio.insecure_channel(server.address, options=CHANNEL_OPTIONS) for _ in range(4)]
        try:
            stubs = [pb_grpc.EventStoreStub(c) for c in channels]
            version = {"idem-any": -1, "idem-exact": -1}
            for r in range(12):
                # Round kinds: any version on a busy stream, a new stream, an exact version.
                stream, expected = [("idem-any", -2), (f"idem-new-{r}", -1), ("idem-exact", version["idem-exact"])][
                    r % 3]
                events = new_events(1 + r % 4, r)
                copies = [Write(stream, expected, list(events)) for _ in range(clients)]
                noise = [Write("idem-any", -2, new_events(1, 100 + i)) for i in range(4)]
                log.extend(copies + noise)
                await asyncio.gather(*(save(stubs[i % 4], w) for i, w in enumerate(copies + noise)))
                results = {w.result.SerializeToString() if w.result else (w.code, w.details) for w in copies}
                assert len(results) == 1, f"round {r}: different answers to one write: {results}"
                assert copies[0].result is not None, (copies[0].code, copies[0].details)
                assert all(w.result is not None for w in noise), [(w.code, w.details) for w in noise]
                if stream in version:
                    version[stream] = copies[0].result.new_stream_version
                late = Write(stream, expected, list(events))
                await save(stubs[0], late)
                assert late.result == copies[0].result, (late.code, late.details)
            return await read_all(stubs[0])
        finally:
            for channel in channels:
                await channel.close()

    events = asyncio.run(main())
    verify(events, log)
    assert len(events) == sum(1 + r % 4 for r in range(12)) + 12 * 4


@pytest.mark.timeout(120)
def test_small_appends_on_a_large_table(start_server: Callable[..., ServerThread], workers: int) -> None:
    server = start_server(boundaries=BOUNDARIES, workers=workers)
    log: list[Write] = []

    async def small_appends(stub: pb_grpc.EventStoreStub, what: str) -> None:
        latencies = []
        for i in range(100):
            stream = f"bulk-{i % 5}" if i % 2 else "small"
            w = Write(stream, -2, new_events(1 + i % 3, 0), writer=0)
            log.append(w)
            began = time.monotonic()
            await save(stub, w)
            latencies.append(time.monotonic() - began)
            assert w.result is not None, (w.code, w.details)
        latencies.sort()
        began = time.monotonic()
        await asyncio.gather(*mixed_writers([stub], 20, log, time.monotonic() + 40, tag=f"{what}-"))
        print(f"{what}: sequential small appends median {statistics.median(latencies) * 1000:.1f} ms, "
              f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms; "
              f"16 writers x 20 appends {time.monotonic() - began:.2f}s")

    async def main() -> list[pb.Event]:
        async with grpc.aio.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
            stub = pb_grpc.EventStoreStub(channel)
            # First on the empty table, so that any plan cached then is the one used later.
            await small_appends(stub, "empty table")
            began = time.monotonic()
            for b in range(10):  # 50,000 events in 10 big writes over 5 streams
                w = Write(f"bulk-{b % 5}", -2, new_events(5000, 1000 + b, kind=f"Bulk{b % 3}"))
                log.append(w)
                await save(stub, w, deadline_s=60)
                assert w.result is not None, (w.code, w.details)
            print(f"50,000 events saved in {time.monotonic() - began:.1f}s")
            head = w.result.log_position
            await small_appends(stub, "50,000 events")
            tail = (await stub.GetEvents(page_request(head, 100), metadata=AUTH, timeout=CALL_TIMEOUT)).events
            assert tail and tail[0].position.prepare_position == head.prepare_position + 1
            return await read_all(stub)

    events = asyncio.run(main())
    verify(events, log)
    assert len(events) == sum(len(w.events) for w in log if w.result is not None)

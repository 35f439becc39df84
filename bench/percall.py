"""The Orisun server's own CPU per call, one caller, for the cheap calls (issue #13).

Starts the stack (bench/_stack.py), then for each kind of call sends ``--calls`` of them one
after another from this process and reads the utime+stime of the server's Python processes from
/proc around them (the orisun process and, with ``--workers N``, its worker processes; not the
nats-server child): what one call costs the server, without the noise of wall-clock throughput.

    python bench/percall.py [--calls 3000] [--rounds 5] [--only save1,save100,get1,tag100] [--bare] [--workers N]
                            [--spy SECONDS [--native]] [--threads]

Each kind runs ``--rounds`` times; the median round is reported, with the range (this machine is
shared: compare runs made one after the other). ``--bare`` measures bench/_bare.py instead, the
same proto answered with canned replies: gRPC's own cost. ``--spy SECONDS`` runs ``py-spy
record`` on the server during the first kind's run (raw output in the temp folder).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
from _stack import AUTH, descendants, free_port, name_of, stack  # bench/ is on sys.path when a script here runs

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc

BOUNDARY = "bench"
TICK = os.sysconf("SC_CLK_TCK")
DATA = '{"amount": 42, "currency": "EUR", "note": "' + "x" * 160 + '"}'


def pythons(pid: int) -> list[int]:
    """The server's Python processes: ``pid`` and its descendants but nats-server."""
    return [p for p in descendants(pid) if name_of(p) != "nats-server"]


def cpu(pid: int) -> float:
    """utime + stime of the server's Python processes (with workers, gRPC is served in children)."""
    total = 0.0
    for process in pythons(pid):
        with contextlib.suppress(OSError):
            text = Path(f"/proc/{process}/stat").read_text()
            fields = text[text.rindex(")") + 2:].split()
            total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def threads(pid: int) -> dict[str, float]:
    """CPU seconds per thread name of the server's Python processes (threads of one name summed)."""
    found: dict[str, float] = {}
    for process in pythons(pid):
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{process}/task").iterdir():
                try:
                    text = (task / "stat").read_text()
                except OSError:
                    continue
                name = text[text.index("(") + 1:text.rindex(")")]
                fields = text[text.rindex(")") + 2:].split()
                found[name] = found.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / TICK
    return found


def save_request(stream: str, events: int = 1) -> pb.SaveEventsRequest:
    return pb.SaveEventsRequest(
        boundary=BOUNDARY, stream=pb.SaveStreamQuery(name=stream, expected_version=-2),
        events=[pb.EventToSave(event_id=str(uuid.uuid4()), event_type="MoneyDeposited", data=DATA,
                               metadata='{"source": "bench"}', tags=[pb.Tag(key="account", value="a-1")])
                for _ in range(events)])


@contextlib.contextmanager
def target(bare: bool, workers: int | None) -> Iterator[tuple[str, int]]:
    """(address, pid) of the server to measure: Orisun on its stack, or the bare server."""
    if not bare:
        with stack(BOUNDARY, workers=workers) as s:
            yield s.address, s.server_pid
        return
    port = free_port()
    server = subprocess.Popen([sys.executable, str(Path(__file__).with_name("_bare.py")), str(port)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield f"127.0.0.1:{port}", server.pid
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--only", default="save1,get1,tag100")
    parser.add_argument("--rounds", type=int, default=5, help="the median round is reported")
    parser.add_argument("--spy", type=float, default=0.0)
    parser.add_argument("--native", action="store_true", help="py-spy --native: C frames too")
    parser.add_argument("--threads", action="store_true", help="CPU per call of each server thread")
    parser.add_argument("--bare", action="store_true", help="measure bench/_bare.py (no work: gRPC's floor)")
    parser.add_argument("--workers", type=int, help="ORISUN_WORKERS for the server (default: unset)")
    args = parser.parse_args()
    with target(args.bare, args.workers) as (address, pid), grpc.insecure_channel(address) as channel:
        stub = pb_grpc.EventStoreStub(channel)
        # The orisun command runs on uvloop where it is installed (cli._loop_factory); with
        # workers, in the workers.
        for process in pythons(pid):
            uvloop = "/uvloop/" in Path(f"/proc/{process}/maps").read_text()
            print(f"server process {process}: uvloop {'loaded' if uvloop else 'NOT loaded'}", flush=True)
        # 100 events sharing a tag, for the tag query.
        tagged = save_request("tagged")
        del tagged.events[:]
        for _ in range(100):
            tagged.events.add(event_id=str(uuid.uuid4()), event_type="T", data=DATA,
                              tags=[pb.Tag(key="tenant", value="t-1")])
        stub.SaveEvents(tagged, metadata=AUTH)
        query = pb.Query(criteria=[pb.Criterion(tags=[pb.Tag(key="tenant", value="t-1")])])
        calls = {
            "save1": lambda i: stub.SaveEvents(save_request(f"s-{i % 50}"), metadata=AUTH),
            "save100": lambda i: stub.SaveEvents(save_request(f"s-{i % 50}", 100), metadata=AUTH),
            "get1": lambda i: stub.GetEvents(pb.GetEventsRequest(boundary=BOUNDARY, count=1), metadata=AUTH),
            "tag100": lambda i: stub.GetEvents(pb.GetEventsRequest(boundary=BOUNDARY, count=1000, query=query),
                                               metadata=AUTH),
        }
        for name in args.only.split(","):
            call = calls[name]
            for i in range(200):  # warm up: prepared statements, caches
                call(i)
            spy = None
            native = ["--native"] if args.native else []
            if args.spy and name == args.only.split(",")[0]:
                profile = Path(tempfile.gettempdir()) / f"orisun-percall-{name}.txt"
                print(f"py-spy profile of {name}: {profile}", flush=True)
                spy = subprocess.Popen(["py-spy", "record", "-p", str(pid), "--subprocesses", "-r", "500", "-d",
                                        str(int(args.spy)), "-f", "raw", "-o", str(profile), *native],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1)
            per_thread = threads(pid)
            rounds = []
            for _ in range(args.rounds):
                before, began = cpu(pid), time.perf_counter()
                for i in range(args.calls):
                    call(i)
                rounds.append(((cpu(pid) - before) / args.calls, (time.perf_counter() - began) / args.calls))
            used, wall = sorted(rounds)[len(rounds) // 2]
            print(f"{name:8} server CPU {used * 1e6:7.0f} us/call (rounds {min(rounds)[0] * 1e6:.0f}-"
                  f"{max(rounds)[0] * 1e6:.0f})   wall {wall * 1e3:6.2f} ms/call", flush=True)
            if args.threads:
                after = threads(pid)
                for thread, seconds in sorted(after.items(), key=lambda kv: -kv[1]):
                    spent = seconds - per_thread.get(thread, 0.0)
                    if spent > 0:
                        print(f"    thread {thread:16} {spent / args.calls / args.rounds * 1e6:7.0f} us/call")
            if spy is not None:
                spy.wait()


if __name__ == "__main__":
    main()

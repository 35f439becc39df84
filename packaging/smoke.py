"""Smoke test of a built Orisun executable, on any platform (the release workflow runs it on each).

    python packaging/smoke.py dist/orisun-linux-amd64

Starts the executable on its embedded default (only the data dir, the ports, a boundary and
TMPDIR are set; any ORISUN_PG_* in the environment is passed on, for platforms without an
embedded PostgreSQL), waits until gRPC health says SERVING, saves two events and reads them
back, stops it as a user would (SIGTERM; Ctrl-Break on Windows) and expects exit status 0, then
starts it again and reads back the same events. Checks that the admin dashboard serves its
login page, and that the executable's unpack folder is gone after each stop. Prints the time to
SERVING of both starts. Exit status 0 when all is well.

Needs the orisun package installed (for the generated gRPC code): pip install -e '.[dev]'.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc

BOUNDARY = "smoke"
AUTH = [("authorization", "Basic " + base64.b64encode(b"admin:changeit").decode())]
START_TIMEOUT = 180.0  # a cold macOS runner can be slow to start PostgreSQL the first time
STOP_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Failure(Exception):
    pass


def start(executable: Path, env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], float]:
    """Start the executable; (process, seconds until health answered SERVING)."""
    options: dict[str, object] = {}
    if os.name == "nt":
        # Its own console process group, so that Ctrl-Break reaches it and not us.
        options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
    began = time.monotonic()
    with log.open("ab") as out:
        proc = subprocess.Popen([str(executable)], env=env, stdout=out, stderr=subprocess.STDOUT, **options)  # type: ignore[call-overload]
    address = f"127.0.0.1:{env['ORISUN_GRPC_PORT']}"
    while True:
        if proc.poll() is not None:
            raise Failure(f"exited with status {proc.returncode} before serving")
        if time.monotonic() - began > START_TIMEOUT:
            proc.kill()
            raise Failure(f"not serving after {START_TIMEOUT:.0f} s")
        try:
            with grpc.insecure_channel(address) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return proc, time.monotonic() - began
        except grpc.RpcError:
            pass
        time.sleep(0.05)  # polling interval while the server starts


def stop(proc: subprocess.Popen[bytes], tmpdir: Path) -> None:
    if os.name == "nt":
        proc.send_signal(signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
    else:
        proc.send_signal(signal.SIGTERM)
    try:
        status = proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise Failure(f"still running {STOP_TIMEOUT:.0f} s after the stop signal") from None
    if status != 0:
        raise Failure(f"exit status {status} after the stop signal, expected 0")
    leftovers = sorted(p.name for p in tmpdir.iterdir() if p.name.startswith(("_MEI", "orisun-run-")))
    if leftovers:
        raise Failure(f"temporary folders left behind in {tmpdir}: {', '.join(leftovers)}")


def read_back(address: str) -> list[tuple[str, str, int]]:
    with grpc.insecure_channel(address) as channel:
        reply = pb_grpc.EventStoreStub(channel).GetEvents(
            pb.GetEventsRequest(boundary=BOUNDARY, stream=pb.GetStreamQuery(name="smoke-1"), count=10),
            metadata=AUTH, timeout=30,
        )
    return [(e.event_id, e.event_type, e.position.commit_position) for e in reply.events]


def smoke(executable: Path, work: Path) -> None:
    tmpdir = work / "tmp"
    tmpdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORISUN_") or k.startswith("ORISUN_PG_")}
    env.update(
        ORISUN_DATA_DIR=str(work / "data"), ORISUN_GRPC_PORT=str(free_port()), ORISUN_NATS_PORT=str(free_port()),
        ORISUN_ADMIN_PORT=str(free_port()),
        ORISUN_PG_SCHEMAS=BOUNDARY, TMPDIR=str(tmpdir), TMP=str(tmpdir), TEMP=str(tmpdir),
    )
    address = f"127.0.0.1:{env['ORISUN_GRPC_PORT']}"
    log = work / "orisun.log"
    ids = [str(uuid.uuid4()), str(uuid.uuid4())]
    try:
        proc, first = start(executable, env, log)
        try:
            with grpc.insecure_channel(address) as channel:
                pb_grpc.EventStoreStub(channel).SaveEvents(
                    pb.SaveEventsRequest(
                        boundary=BOUNDARY,
                        stream=pb.SaveStreamQuery(name="smoke-1", expected_version=-1),
                        events=[pb.EventToSave(event_id=i, event_type="SmokeTested", data='{"ok": true}') for i in ids],
                    ),
                    metadata=AUTH, timeout=30,
                )
            dashboard = f"http://127.0.0.1:{env['ORISUN_ADMIN_PORT']}/login"
            with urllib.request.urlopen(dashboard, timeout=30) as page:
                if page.status != 200 or b"<html" not in page.read().lower():
                    raise Failure(f"the admin dashboard's login page at {dashboard} did not answer")
            saved = read_back(address)
            if [event_id for event_id, _, _ in saved] != ids:
                raise Failure(f"read back {saved}, expected the events {ids}")
        finally:
            if proc.poll() is None:
                stop(proc, tmpdir)
        proc, warm = start(executable, env, log)
        try:
            again = read_back(address)
            if again != saved:
                raise Failure(f"after a restart read back {again}, expected {saved}")
        finally:
            stop(proc, tmpdir)
    except Failure:
        sys.stderr.write(log.read_text(errors="replace")[-6000:] if log.exists() else "(no output)\n")
        raise
    print(f"smoke test passed: {executable.name} served after {first:.2f} s (first start) and {warm:.2f} s "
          f"(warm start); events saved, read back, kept across a restart; clean stops")


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    executable = Path(sys.argv[1]).resolve()
    if not executable.is_file():
        print(f"smoke.py: {executable} is not a file", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="orisun-smoke-"))
    # As root, Orisun runs PostgreSQL as an unprivileged user, who must reach the data dir.
    work.chmod(0o755)
    try:
        smoke(executable, work)
    except Failure as exc:
        print(f"smoke.py: {executable.name}: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""ChildProcess with real processes: restarts, giving up, stopping, dying with its parent."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from orisun.errors import StartupError
from orisun.runtime.process import ChildProcess

ROOT = Path(__file__).resolve().parents[1]
SLEEP = shutil.which("sleep") or "/bin/sleep"
SH = shutil.which("sh") or "/bin/sh"


def gone(pid: int) -> bool:
    """True once the process no longer runs (a zombie awaiting its reaper counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "State:\tZ" in status


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


async def eventually(predicate: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def present(path: Path) -> bool:
    return path.exists()


def read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


def file_appears(path: Path, timeout: float = 10.0) -> Callable[[], Awaitable[None]]:
    """A readiness check: the child creates ``path`` when it is ready."""

    async def ready() -> None:
        deadline = time.monotonic() + timeout
        while not present(path):
            if time.monotonic() > deadline:
                raise StartupError(f"{path} did not appear within {timeout:g} s")
            await asyncio.sleep(0.01)

    return ready


@pytest.mark.timeout(20)
def test_a_killed_child_is_restarted() -> None:
    async def main() -> None:
        child = ChildProcess("sleeper", [SLEEP, "60"])
        await child.start()
        first = child.pid
        assert first is not None and child.running
        os.kill(first, signal.SIGKILL)
        await eventually(lambda: child.pid not in (None, first))
        assert child.running
        second = child.pid
        assert second is not None
        await child.stop()
        assert not child.running and child.pid is None and gone(second)
        await child.stop()  # idempotent

    asyncio.run(main())


@pytest.mark.timeout(20)
def test_on_fatal_after_too_many_restarts(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    reasons: list[str] = []

    async def main() -> None:
        child = ChildProcess(
            "crasher",
            [SH, "-c", f"echo run >> {runs}; echo crashing >&2; exit 3"],
            max_restarts=2,
            restart_window=60.0,
            on_fatal=reasons.append,
        )
        await child.start()
        await eventually(lambda: bool(reasons))
        assert not child.running
        await child.stop()

    asyncio.run(main())
    assert len(reasons) == 1
    assert "3 times" in reasons[0] and "exit code 3" in reasons[0] and "crashing" in reasons[0]
    assert runs.read_text().count("run") == 3  # the first start and two restarts, no more


@pytest.mark.timeout(20)
def test_on_fatal_when_restarts_keep_failing(tmp_path: Path) -> None:
    marker = tmp_path / "started-once"
    pidfile = tmp_path / "ready-pid"
    reasons: list[str] = []
    # Starts fine once; every later run fails before it is ready.
    script = (
        f"if [ -e {marker} ]; then echo broken now >&2; exit 4; fi; "
        f"touch {marker}; echo $$ > {pidfile}; exec {SLEEP} 60"
    )
    child: ChildProcess

    async def this_run_is_ready() -> None:
        """Ready once *this* run wrote its pid: a later run must not pass on an earlier one's file."""
        deadline = time.monotonic() + 10
        while read(pidfile) != str(child.pid):
            if time.monotonic() > deadline:
                raise StartupError("not ready")
            await asyncio.sleep(0.01)

    async def main() -> None:
        nonlocal child
        child = ChildProcess("flaky", [SH, "-c", script], on_fatal=reasons.append, ready=this_run_is_ready)
        await child.start()
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        await eventually(lambda: bool(reasons))
        assert not child.running
        await child.stop()

    asyncio.run(main())
    # Each failed restart counts as one more exit (a restart can fail once for a passing reason),
    # so the limit of restarts ends it, with the child's last words.
    assert "exited 6 times within 60 s (last: exit code 4)" in reasons[0]
    assert "broken now" in reasons[0]


@pytest.mark.timeout(20)
def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    marker = tmp_path / "ignoring-sigterm"
    script = (
        "import pathlib, signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"pathlib.Path({str(marker)!r}).touch()\n"
        "time.sleep(60)\n"
    )

    async def main() -> None:
        child = ChildProcess("stubborn", [sys.executable, "-c", script], stop_timeout=0.5, ready=file_appears(marker))
        await child.start()
        pid = child.pid
        assert pid is not None
        started = time.monotonic()
        await child.stop()
        assert time.monotonic() - started >= 0.5
        assert not child.running and gone(pid)

    asyncio.run(main())


@pytest.mark.timeout(20)
def test_startup_error_carries_the_output_of_a_child_that_died() -> None:
    async def main() -> None:
        child = ChildProcess(
            "doomed",
            [SH, "-c", "echo to-stdout; echo to-stderr >&2; exit 7"],
            ready=file_appears(Path("/nonexistent/never")),
        )
        with pytest.raises(StartupError) as info:
            await child.start()
        message = str(info.value)
        assert "doomed" in message and "exit code 7" in message
        assert "to-stdout" in message and "to-stderr" in message and "\n" not in message
        assert not child.running

    asyncio.run(main())


@pytest.mark.timeout(20)
def test_a_child_that_never_gets_ready_is_killed(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"

    async def not_ready() -> None:
        await file_appears(pidfile)()
        raise StartupError("never ready")

    async def main() -> None:
        child = ChildProcess("slow", [SH, "-c", f"echo $$ > {pidfile}; exec {SLEEP} 60"], ready=not_ready)
        with pytest.raises(StartupError, match="never ready"):
            await child.start()
        assert not child.running

    asyncio.run(main())
    assert gone(int(pidfile.read_text()))


PARENT = """
import asyncio, sys
from orisun.runtime.process import ChildProcess

async def main():
    child = ChildProcess("orphan-candidate", [sys.argv[1], "60"], user=sys.argv[2] or None)
    await child.start()
    print(child.pid, flush=True)
    await asyncio.Event().wait()

if sys.argv[3] == "uvloop":
    import uvloop
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
else:
    asyncio.run(main())
"""


@pytest.mark.timeout(30)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
@pytest.mark.parametrize("user", [None, "nobody"])
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])  # the orisun command runs on uvloop where installed
def test_child_dies_when_its_parent_is_sigkilled(user: str | None, loop: str) -> None:
    if user is not None and os.geteuid() != 0:
        pytest.skip("switching user needs root")
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, SLEEP, user or "", loop],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        text=True,
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        status = Path(f"/proc/{child}/status").read_text()
        if user is not None:
            # The uid switch happened and root's supplementary groups are gone.
            assert "Uid:\t65534\t65534\t65534\t65534" in status
            assert "Groups:\t\n" in status or "Groups:\t \n" in status
        assert os.getpgid(child) == child  # its own process group: a terminal's Ctrl-C is Orisun's to pass on
        assert not gone(child)
    finally:
        parent.kill()
        parent.wait()
    wait_until(lambda: gone(child), timeout=5.0)


@pytest.mark.timeout(20)
def test_cancelling_start_leaves_no_process(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"

    async def never_ready() -> None:
        await asyncio.Event().wait()

    async def main() -> None:
        child = ChildProcess("cancelled", [SH, "-c", f"echo $$ > {pidfile}; exec {SLEEP} 60"], ready=never_ready)
        starting = asyncio.create_task(child.start())
        await eventually(lambda: read(pidfile) != "")
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
        assert not child.running
        await child.stop()

    asyncio.run(main())
    assert gone(int(read(pidfile)))

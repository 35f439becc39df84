"""Worker processes: copies of Orisun that serve gRPC on one shared port (``ORISUN_WORKERS``).

Python runs one thread of Python at a time, so one process serves gRPC from one core. Like
gunicorn and uvicorn, Orisun scales across cores with processes: the supervisor starts
``ORISUN_WORKERS`` workers, each binding the gRPC port with SO_REUSEPORT, and the kernel spreads
incoming connections over them. A worker is an ordinary supervised child (``process.ChildProcess``):
in its own process group, killed with the supervisor, restarted when it dies (within the same
budget as nats-server and PostgreSQL), stopped with SIGTERM, which makes it drain its calls.

A worker is this same program started again (``python -m orisun --worker``, or the executable with
``--worker``; the one-file executable's bootloader then reuses the folder it unpacked for the
supervisor rather than unpacking again). It reads its instructions, pickled, from standard input,
and prints ``READY`` on standard output once it serves.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Sequence

from orisun.errors import StartupError
from orisun.runtime.process import ChildProcess

WORKER_FLAG = "--worker"
READY = "orisun-worker-ready"
# Start-up of a worker: imports, then connecting to PostgreSQL and NATS, which are already up.
_READY_TIMEOUT = 60.0


def worker_command() -> list[str]:
    """The command line that runs a worker of this same Orisun."""
    if getattr(sys, "frozen", False):
        return [sys.executable, WORKER_FLAG]
    return [sys.executable, "-m", "orisun", WORKER_FLAG]


class _ReadyLine:
    """Whether the current spawn of a worker printed READY: cleared before each spawn (``clear``),
    set by the worker's output (``seen``), awaited with a deadline (``wait``)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._event = asyncio.Event()

    def seen(self, line: str) -> None:
        if line == READY:
            self._event.set()

    async def clear(self) -> None:
        self._event.clear()

    async def wait(self) -> None:
        try:
            await asyncio.wait_for(self._event.wait(), _READY_TIMEOUT)
        except TimeoutError:
            raise StartupError(f"{self._name} did not start serving within {_READY_TIMEOUT:g} s") from None


class Workers:
    """``count`` worker processes, started and stopped together, each restarted when it dies."""

    def __init__(self, count: int, instructions: Callable[[int], bytes], *, stop_timeout: float,
                 on_fatal: Callable[[str], None], argv: Sequence[str] | None = None) -> None:
        """``instructions(index)`` is what worker ``index`` (1 to ``count``) reads on its stdin;
        ``stop_timeout``: how long a worker may drain after SIGTERM before it is killed."""
        self.count = count
        self._children: list[ChildProcess] = []
        for index in range(1, count + 1):
            line = _ReadyLine(f"worker {index}")
            self._children.append(ChildProcess(
                f"worker {index}",
                list(argv or worker_command()),
                stdin=instructions(index),
                on_line=line.seen,
                relay_stderr=True,
                stop_timeout=stop_timeout,
                on_fatal=on_fatal,
                prepare=line.clear,
                ready=line.wait,
            ))

    @property
    def pids(self) -> list[int | None]:
        return [child.pid for child in self._children]

    @property
    def running(self) -> int:
        return sum(child.running for child in self._children)

    async def start(self) -> None:
        """Start every worker at once; StartupError (naming the worker) if any fails to serve."""
        results = await asyncio.gather(*(child.start() for child in self._children), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def stop(self) -> None:
        """SIGTERM to every worker at once, each draining its calls; SIGKILL after stop_timeout."""
        await asyncio.gather(*(child.stop() for child in self._children))

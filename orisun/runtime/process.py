"""A supervised child process, shared by the embedded NATS and PostgreSQL launchers.

Orisun owns its children: they live in their own process group (a Ctrl-C in the terminal reaches
only Orisun, which then stops them in order), they die with Orisun even when it is SIGKILLed
(``PR_SET_PDEATHSIG`` on Linux), their output goes to loguru, and a child that exits on its own
is restarted until it keeps failing, at which point ``on_fatal`` is told why.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from loguru import logger

from orisun.errors import StartupError
from orisun.logs import relay_line

_TAIL_LINES = 20  # lines of output kept for error reports
_MESSAGE_LINES = 5  # of those, how many go into a one-line StartupError
_BACKOFF_FIRST = 0.1  # seconds before the first restart; doubles per restart within the window
_BACKOFF_MAX = 2.0
_DRAIN_TIMEOUT = 2.0  # a grandchild may hold the pipes open; never wait for them forever
_STREAM_LIMIT = 1 << 20  # longest output line read whole
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _pdeathsig_preexec(parent_pid: int) -> Callable[[], None]:
    """A preexec_fn asking the kernel to SIGKILL the child when Orisun dies.

    CPython's _posixsubprocess runs preexec_fn *after* setregid/setreuid, and the kernel clears
    pdeath_signal on a credential change, so setting it here survives the switch to ``user``
    (tests/test_process.py checks both cases). The signal is tied to the thread that forked,
    which is the event loop's thread: run the loop in a thread that lives as long as Orisun.
    """
    assert _LIBC is not None
    prctl = _LIBC.prctl  # looked up before fork: the child must not dlopen or allocate much

    def preexec() -> None:
        if prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        # Orisun may have died between fork() and prctl(); then no signal would ever come.
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


def stop_when_parent_dies(signum: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send ``signum`` to this process when its parent dies (Linux only).

    For the executable: the user holds the pid of PyInstaller's bootloader, whose child this
    process is; a SIGKILL there must not leave the server running. Returns False where not
    supported. If the parent died meanwhile, sends the signal at once.
    """
    if _LIBC is None:
        return False
    parent = os.getppid()
    if _LIBC.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
        logger.warning("prctl(PR_SET_PDEATHSIG) failed: {}", os.strerror(ctypes.get_errno()))
        return False
    if os.getppid() != parent:
        os.kill(os.getpid(), signum)
    return True


def _spawn_options(user: str | None) -> dict[str, Any]:
    """Keyword arguments for create_subprocess_exec shared by every child Orisun starts."""
    options: dict[str, Any] = {}
    if os.name == "posix":
        options["process_group"] = 0
        if user is not None and os.geteuid() == 0:
            import pwd

            try:
                entry = pwd.getpwnam(user)
            except KeyError:
                raise StartupError(f"user {user!r} does not exist; Orisun needs it to run as root") from None
            # extra_groups=[] drops root's supplementary groups, which setuid alone would keep.
            options.update(user=entry.pw_uid, group=entry.pw_gid, extra_groups=[])
    if _LIBC is not None:
        options["preexec_fn"] = _pdeathsig_preexec(os.getpid())
    if os.name == "posix" and not isinstance(asyncio.get_running_loop(), asyncio.BaseEventLoop):
        return _in_preexec(options)
    return options


def _in_preexec(options: dict[str, Any]) -> dict[str, Any]:
    """The same options for an event loop whose subprocess_exec knows only ``preexec_fn`` (uvloop,
    which the orisun command uses where installed): the process group and the switch to the
    unprivileged user done in the child, in _posixsubprocess's order (setpgid, setgroups, setgid,
    setuid), the original preexec_fn last, so that pdeath_signal survives the credential change."""
    uid, gid = options.get("user"), options.get("group")
    then = options.get("preexec_fn")

    def preexec() -> None:
        os.setpgid(0, 0)
        if uid is not None and gid is not None:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        if then is not None:
            then()

    return {"preexec_fn": preexec}


def check_port(host: str, port: int, *, port_variable: str, host_variable: str | None = None) -> int:
    """Return ``port``, or a free one when it is 0; StartupError naming the variable if taken.

    Binding briefly, with SO_REUSEADDR as both children use, finds a listener in the way before
    the child fails with a less helpful message. A port picked here is free only at this moment:
    another process may take it before the child binds it, and the child then fails to start.
    """
    where = host_variable or port_variable
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise StartupError(f"{where}: cannot resolve {host!r}: {exc.strerror}") from None
    with socket.socket(family, kind, proto) as sock:
        if os.name == "posix":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(f"{port_variable}: port {port} on {host} is already in use") from None
            if exc.errno == errno.EACCES:
                raise StartupError(f"{port_variable}: no permission to listen on port {port} on {host}") from None
            raise StartupError(f"{where}: cannot listen on {host} port {port}: {exc.strerror}") from None
        return int(sock.getsockname()[1])


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    # The whole group: a killed PostgreSQL postmaster must not leave its backends behind.
    with contextlib.suppress(ProcessLookupError):
        if os.name == "posix":
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()


def describe_exit(code: int) -> str:
    """'exit code 3' or 'killed by SIGKILL'."""
    if code >= 0:
        return f"exit code {code}"
    return f"killed by {signal.Signals(-code).name}" if -code in signal.valid_signals() else f"killed by signal {-code}"


def _summary(lines: Sequence[str]) -> str:
    tail = [line for line in lines if line.strip()][-_MESSAGE_LINES:]
    return "; output: " + " | ".join(tail) if tail else "; it printed nothing"


async def run_command(
    name: str,
    argv: Sequence[str],
    *,
    user: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    time_limit: float = 120.0,
) -> None:
    """Run a one-shot command (``initdb``) to completion with the same user and death rules.

    Raises StartupError with the end of its output if it fails or exceeds ``time_limit`` seconds.
    """
    log = logger.bind(child=name)
    log.debug("running {}", " ".join(argv))
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            **_spawn_options(user),
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise StartupError(f"{name}: cannot run {argv[0]}: {exc}") from exc
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), time_limit)
    except BaseException as exc:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        if isinstance(exc, TimeoutError):
            raise StartupError(f"{name} did not finish within {time_limit:g} s") from None
        raise
    lines = output.decode(errors="replace").splitlines()
    for line in lines:
        log.debug("{}", line)
    if proc.returncode != 0:
        raise StartupError(f"{name} failed ({describe_exit(proc.returncode or 0)}){_summary(lines)}")


class ChildProcess:
    """One long-running child: started, awaited until ready, restarted if it exits, stopped."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        user: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stop_signal: int = signal.SIGTERM,
        stop_timeout: float = 10.0,
        on_fatal: Callable[[str], None] | None = None,
        max_restarts: int = 5,
        restart_window: float = 60.0,
        ready: Callable[[], Awaitable[None]] | None = None,
        prepare: Callable[[], Awaitable[None]] | None = None,
        stdin: bytes | None = None,
        on_line: Callable[[str], None] | None = None,
        relay_stderr: bool = False,
    ) -> None:
        """``ready`` is awaited after every spawn and must raise (StartupError) on its deadline.

        ``prepare`` is awaited before every spawn, restarts included (PostgreSQL uses it to wait
        for the backends of a killed postmaster to go away).

        ``stdin`` is written to every spawn's standard input, which is then closed (a worker's
        instructions: on a pipe, not in its environment or command line, as they hold secrets).
        ``on_line`` is called with each line of standard output. With ``relay_stderr`` the
        child's standard error is copied to Orisun's as it is (a worker's log lines, formatted
        and levelled by the worker itself; ``relay_line`` wraps other lines in JSON mode) rather
        than logged at DEBUG.
        """
        self.name = name
        self._argv = list(argv)
        self._user = user
        self._env = dict(env) if env is not None else None
        self._cwd = cwd
        self._stop_signal = stop_signal
        self._stop_timeout = stop_timeout
        self._on_fatal = on_fatal
        self._max_restarts = max_restarts
        self._restart_window = restart_window
        self._ready = ready
        self._prepare = prepare
        self._stdin = stdin
        self._on_line = on_line
        self._relay_stderr = relay_stderr
        self._log = logger.bind(child=name)
        self._proc: asyncio.subprocess.Process | None = None
        self._readers: list[asyncio.Task[None]] = []
        self._tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self._stop_lock = asyncio.Lock()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def start(self) -> None:
        """Spawn the child and wait until ``ready`` succeeds; StartupError (with output) if not."""
        if self._supervisor is not None and not self._supervisor.done():
            return
        self._stopping = False
        await self._launch()
        self._log.info("{} started (pid {})", self.name, self.pid)
        self._supervisor = asyncio.create_task(self._supervise(), name=f"supervise {self.name}")

    async def stop(self) -> None:
        """Stop supervising, send ``stop_signal``, SIGKILL after ``stop_timeout``. Idempotent."""
        async with self._stop_lock:
            self._stopping = True
            was_running = self.running
            supervisor, self._supervisor = self._supervisor, None
            if supervisor is not None and supervisor is not asyncio.current_task():
                supervisor.cancel()
                # asyncio.wait rather than await: a CancelledError aimed at us must not be eaten.
                await asyncio.wait([supervisor])
            proc = self._proc
            if proc is not None and proc.returncode is None:
                await self._terminate(proc)
            if proc is not None and was_running:
                self._log.info("{} stopped ({})", self.name, describe_exit(proc.returncode or 0))
            for reader in self._readers:
                reader.cancel()

    async def _launch(self) -> None:
        """Spawn and await readiness; on any failure or cancellation, leave no process behind."""
        if self._prepare is not None:
            await self._prepare()
        proc = await self._spawn()
        if self._ready is None:
            return
        try:
            await self._await_ready(proc)
        except BaseException:
            await self._terminate(proc)
            raise

    async def _spawn(self) -> asyncio.subprocess.Process:
        self._tail.clear()
        self._log.debug("starting {}", " ".join(self._argv))
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._argv,
                stdin=subprocess.DEVNULL if self._stdin is None else subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self._env,
                cwd=self._cwd,
                limit=_STREAM_LIMIT,
                **_spawn_options(self._user),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise StartupError(f"{self.name}: cannot run {self._argv[0]}: {exc}") from exc
        self._proc = proc
        assert proc.stdout is not None and proc.stderr is not None
        self._readers = [asyncio.create_task(self._pump(proc.stdout, self._on_line)),
                         asyncio.create_task(self._pump(proc.stderr, None, relay=self._relay_stderr))]
        if self._stdin is not None and proc.stdin is not None:
            # A child that died at once (killed, or failing before it reads) is reported by its exit;
            # its closed pipe raises ConnectionError here, or RuntimeError under uvloop.
            with contextlib.suppress(ConnectionError, RuntimeError):
                proc.stdin.write(self._stdin)
                await proc.stdin.drain()
            proc.stdin.close()
        return proc

    async def _await_ready(self, proc: asyncio.subprocess.Process) -> None:
        assert self._ready is not None
        ready = asyncio.ensure_future(self._ready())
        exited = asyncio.ensure_future(proc.wait())
        try:
            await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            exited.cancel()
        if exited.done() and not exited.cancelled():
            await self._drain()
            raise StartupError(
                f"{self.name} exited before it was ready ({describe_exit(exited.result())}){_summary(self._tail)}"
            )
        exc = ready.exception()
        if exc is not None:
            reason = str(exc) if isinstance(exc, StartupError) else f"{self.name} did not become ready: {exc}"
            raise StartupError(f"{reason}{_summary(self._tail)}") from exc

    async def _pump(self, stream: asyncio.StreamReader, on_line: Callable[[str], None] | None,
                    *, relay: bool = False) -> None:
        """Copy the child's output into the log line by line (or relay it), keeping the last lines."""
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line over _STREAM_LIMIT: its start is dropped, go on
                continue
            if not line:
                return
            text = line.decode(errors="replace").rstrip()
            if not text:
                continue
            self._tail.append(text)
            if relay:
                relay_line(text, self.name)
            else:
                self._log.debug("{}", text)
            if on_line is not None:
                on_line(text)

    async def _drain(self) -> None:
        """Let the readers catch the child's last words before they are reported."""
        if self._readers:
            await asyncio.wait(self._readers, timeout=_DRAIN_TIMEOUT)

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(self._stop_signal)
            try:
                await asyncio.wait_for(proc.wait(), self._stop_timeout)
            except TimeoutError:
                self._log.warning("{} did not stop within {:g} s; killing it", self.name, self._stop_timeout)
                _kill_group(proc)
                await proc.wait()
        await self._drain()

    async def _supervise(self) -> None:
        restarts: collections.deque[float] = collections.deque()
        try:
            while True:
                assert self._proc is not None
                code = await self._proc.wait()
                if self._stopping:
                    return
                await self._drain()
                tail = "\n".join(self._tail)
                self._log.error("{} exited unexpectedly ({}); last output:\n{}", self.name, describe_exit(code), tail)
                now = time.monotonic()
                restarts.append(now)
                while restarts[0] < now - self._restart_window:
                    restarts.popleft()
                if len(restarts) > self._max_restarts:
                    self._fatal(
                        f"{self.name} exited {len(restarts)} times within "
                        f"{self._restart_window:g} s (last: {describe_exit(code)}){_summary(self._tail)}"
                    )
                    return
                # A backoff, not synchronisation: a child crashing at once must not spin the CPU.
                await asyncio.sleep(min(_BACKOFF_FIRST * 2 ** (len(restarts) - 1), _BACKOFF_MAX))
                self._log.warning(
                    "restarting {} (restart {} in {:g} s)", self.name, len(restarts), self._restart_window
                )
                try:
                    await self._launch()
                except StartupError as exc:
                    # Counts as one more exit: retried after a longer backoff, fatal past the limit.
                    self._log.error("restarting {} failed: {}", self.name, exc)
                    continue
                self._log.info("{} restarted (pid {})", self.name, self.pid)
        except Exception as exc:  # a bug here must still reach on_fatal, not vanish with the task
            self._fatal(f"{self.name} supervision failed: {exc!r}")
            if self._proc is not None and self._proc.returncode is None:
                _kill_group(self._proc)

    def _fatal(self, reason: str) -> None:
        self._log.critical("{}", reason)
        if self._on_fatal is not None:
            try:
                self._on_fatal(reason)
            except Exception:
                self._log.exception("on_fatal callback failed")

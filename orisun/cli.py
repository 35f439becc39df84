"""The ``orisun`` command: read the configuration, start the server, stop it on SIGTERM/SIGINT.

Exit status: 0 after a clean stop, 1 when the server cannot start or a part fails for good,
2 for invalid configuration or usage (one line naming the variable, no traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import pickle
import shlex
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from loguru import logger

from orisun import __version__
from orisun.config import DEFAULT_ADMIN_PASSWORD, Settings, help_text, load_settings
from orisun.errors import ConfigError, StartupError
from orisun.logs import setup_logging
from orisun.runtime.bundle import follow_bootloader
from orisun.runtime.workers import READY, WORKER_FLAG
from orisun.tls import trusts_itself

if TYPE_CHECKING:
    from orisun.app import Orisun, WorkerSpec


def _parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="orisun",
        description="Orisun, the batteries-included event store. Configured only by environment variables; "
        "with none set it runs on an embedded PostgreSQL and an embedded NATS JetStream.",
        epilog=help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    parser.add_argument("--version", action="version", version=f"orisun {__version__}")
    # How the supervisor starts its workers (orisun.runtime.workers); not for people.
    parser.add_argument(WORKER_FLAG, action="store_true", help=argparse.SUPPRESS)
    if parser.parse_args(argv).worker:
        return _worker()
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"orisun: invalid configuration: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.logging_level, log_format=settings.logging_format)
    clean_up = follow_bootloader()
    try:
        return _run(_serve(settings))
    finally:
        clean_up()


def _run(serve: Coroutine[Any, Any, int]) -> int:
    """Run ``serve`` (on uvloop where installed) to its exit status; 1 when it cannot start."""
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(serve)
    except StartupError as exc:
        logger.error("Cannot start: {}", exc)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        return 130


def _worker() -> int:
    """A worker process: its instructions come pickled on stdin from the supervisor, its parent."""
    refusal = f"orisun: {WORKER_FLAG} is how Orisun starts its own worker processes; run orisun without it"
    if sys.stdin.isatty():
        print(refusal, file=sys.stderr)
        return 2
    try:
        spec: WorkerSpec = pickle.loads(sys.stdin.buffer.read())  # from the supervisor, through a private pipe
    except Exception:  # not the supervisor's instructions: someone ran it by hand
        print(refusal, file=sys.stderr)
        return 2
    setup_logging(spec.settings.logging_level, worker=spec.index, log_format=spec.settings.logging_format)
    return _run(_serve_worker(spec))


async def _serve_worker(spec: WorkerSpec) -> int:
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    from orisun.app import Orisun

    app = Orisun(spec.settings, worker=spec)
    _on_stop_signals(app.request_stop)
    await app.start()
    print(READY, flush=True)  # to the supervisor (orisun.runtime.workers)
    return await app.wait()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (not on Windows): it cuts the server's CPU per
    call (issue #13). Without it, asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def _serve(settings: Settings) -> int:
    # Orisun forks only to exec its children; gRPC's fork handlers would just warn about its threads.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    # Imported here so that --help, --version and configuration errors answer without loading
    # grpc, psycopg and nats.
    from orisun.app import Orisun

    app = Orisun(settings)
    _on_stop_signals(app.request_stop)
    await app.start()
    _announce(app)
    return await app.wait()


def _on_stop_signals(stop: Callable[[], None]) -> None:
    """Call ``stop`` on SIGTERM and SIGINT (Ctrl-C); on Windows, on Ctrl-C and Ctrl-Break."""
    loop = asyncio.get_running_loop()
    if os.name == "posix":
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop)
        return
    # Windows event loops have no add_signal_handler; a console's Ctrl-C/Ctrl-Break (how a
    # service manager or `taskkill` asks a console program to stop) arrive as SIGINT/SIGBREAK.
    for name in ("SIGINT", "SIGBREAK"):
        signal.signal(getattr(signal, name), lambda *_: loop.call_soon_threadsafe(stop))


def grpcurl_hint(settings: Settings, port: int) -> str:
    """A grpcurl command line that lists the services of this server, ready to paste where it can
    be: the admin's credentials while they are the default, the certificate file when it is
    self-signed (else the CA that signed it must be named), placeholders for a client certificate."""
    if settings.admin_password == DEFAULT_ADMIN_PASSWORD:
        token = base64.b64encode(f"{settings.admin_username}:{settings.admin_password}".encode()).decode()
    else:
        token = "<base64 of username:password>"
    files = settings.tls
    if files is None:
        transport = "-plaintext"
    else:
        ca = shlex.quote(str(files.cert_file)) if trusts_itself(files) else "<CA certificate that signed it>"
        transport = f"-cacert {ca}"
        if files.client_ca_file is not None:
            transport += " -cert <client certificate> -key <client key>"
    return f"grpcurl {transport} -H 'Authorization: Basic {token}' localhost:{port} list"


def _announce(app: Orisun) -> None:
    s = app.settings
    port = app.grpc_port
    boundaries = ", ".join(s.boundaries)
    scheme, over = "http", ""
    if s.tls is not None:
        scheme, over = "https", " over TLS (client certificates required)" if s.tls.client_ca_file else " over TLS"
    workers = f" with {s.workers} workers" if s.workers > 1 else ""
    logger.info("Orisun {} serving gRPC on {}:{}{}{}; boundaries: {}", __version__, s.grpc_host, port, over, workers,
                boundaries)
    logger.info("Try: {}", grpcurl_hint(s, port))
    logger.info("Admin dashboard on {}://localhost:{}/ (log in as {!r})", scheme, app.dashboard_port,
                s.admin_username)


if __name__ == "__main__":
    sys.exit(main())

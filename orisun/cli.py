"""The ``orisun`` command: read the configuration, start the server, stop it on SIGTERM/SIGINT.

Exit status: 0 after a clean stop, 1 when the server cannot start or a part fails for good,
2 for invalid configuration or usage (one line naming the variable, no traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from loguru import logger

from orisun import __version__
from orisun.bundle import follow_bootloader
from orisun.config import DEFAULT_ADMIN_PASSWORD, Settings, help_text, load_settings
from orisun.errors import ConfigError, StartupError
from orisun.logs import setup_logging

if TYPE_CHECKING:
    from orisun.app import Orisun


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
    parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"orisun: invalid configuration: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.logging_level)
    clean_up = follow_bootloader()
    try:
        return asyncio.run(_serve(settings))
    except StartupError as exc:
        logger.error("Cannot start: {}", exc)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        return 130
    finally:
        clean_up()


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


def _announce(app: Orisun) -> None:
    s = app.settings
    port = app.grpc_port
    if s.admin_password == DEFAULT_ADMIN_PASSWORD:
        token = base64.b64encode(f"{s.admin_username}:{s.admin_password}".encode()).decode()
    else:
        token = "<base64 of username:password>"
    boundaries = ", ".join(s.boundaries)
    logger.info("Orisun {} serving gRPC on {}:{}; boundaries: {}", __version__, s.grpc_host, port, boundaries)
    logger.info("Try: grpcurl -plaintext -H 'Authorization: Basic {}' localhost:{} list", token, port)
    logger.info("Admin dashboard on http://localhost:{}/ (log in as {!r})", app.dashboard_port, s.admin_username)


if __name__ == "__main__":
    sys.exit(main())

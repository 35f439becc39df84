"""Logging: loguru to stderr, with grpc, psycopg, nats and asyncio's standard logging routed into it."""

from __future__ import annotations

import logging
import re
import sys

from loguru import logger

_FORMAT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "<cyan>{name}</cyan> {message}{extra[child_suffix]}"
)


# C0 and C1 control characters, DEL, and the Unicode line and paragraph separators: any of them
# in client-supplied text (a path with %0a, a header with an escape sequence) would let a client
# forge log lines or drive the terminal that shows the log. Tab stays: it cannot, and PostgreSQL's
# own lines (relayed from the child) indent with it.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return _NAMED.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


def escape_control(text: str) -> str:
    """``text`` with control characters as Python-style escapes (``\\n``, ``\\x1b``), so it stays one line."""
    return _CONTROL.sub(_escape, text)


class _InterceptHandler(logging.Handler):
    """Hands standard-library log records to loguru (loguru's documented recipe)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(exception=record.exc_info, depth=6).log(level, "[{}] {}", record.name, record.getMessage())


_process = ""  # "worker 2" in a worker process: its lines reach the supervisor's output as they are


def _patch(record: dict) -> None:  # type: ignore[type-arg]
    # Every record, whoever wrote it (Orisun, a library, a child process's line): one record, one line.
    record["message"] = escape_control(record["message"])
    child = " ".join(part for part in (_process, record["extra"].get("child")) if part)
    record["extra"]["child_suffix"] = f" [{child}]" if child else ""


def setup_logging(level: str, process: str = "") -> None:
    """Log to stderr at ``level``; ``process`` names a worker in each of its lines."""
    global _process
    _process = process
    logger.remove()
    logger.configure(patcher=_patch)  # type: ignore[arg-type]
    logger.add(sys.stderr, level=level, format=_FORMAT, backtrace=False, diagnose=False)
    logging.basicConfig(handlers=[_InterceptHandler()], level=0, force=True)
    # These libraries are chatty below WARNING; show their detail only when debugging Orisun.
    library_level = logging.DEBUG if level in ("TRACE", "DEBUG") else logging.WARNING
    for name in ("grpc", "psycopg", "nats", "asyncio"):
        logging.getLogger(name).setLevel(library_level)

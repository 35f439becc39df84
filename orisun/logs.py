"""Logging: loguru to stderr, with grpc, psycopg, nats and asyncio's standard logging routed into it.

Two formats (``ORISUN_LOGGING_FORMAT``): ``text``, one coloured line per record for people, and
``json``, one JSON object per line for log shippers. Every line on Orisun's stderr is in the chosen
format, a worker's included: a worker formats its own records, and the supervisor relays them
(``relay_line``), wrapping anything a worker wrote that is not a record of that format.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from datetime import UTC
from typing import TYPE_CHECKING, Any

from loguru import logger

if TYPE_CHECKING:
    from loguru import Record

TEXT = "text"
JSON = "json"
LOG_FORMATS = (TEXT, JSON)

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
# What json.dumps(ensure_ascii=False) leaves raw but a line reader may still split on or a
# terminal obey (str.splitlines splits on \x85 and the separators); JSON escapes keep the text exact.
_JSON_RAW = re.compile("[\x7f-\x9f\u2028\u2029]")


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


_worker: int | None = None  # this worker's index: its lines reach the supervisor's output as they are
_format = TEXT


def _patch(record: dict) -> None:  # type: ignore[type-arg]
    # Every record, whoever wrote it (Orisun, a library, a child process's line): one record, one line.
    # JSON escapes line breaks itself, and a shipper wants the message as it was.
    if _format == TEXT:
        record["message"] = escape_control(record["message"])
    process = f"worker {_worker}" if _worker is not None else ""
    child = " ".join(part for part in (process, record["extra"].get("child")) if part)
    record["extra"]["child_suffix"] = f" [{child}]" if child else ""


def _json_line(fields: dict[str, Any]) -> str:
    return _JSON_RAW.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(fields, ensure_ascii=False, default=str))


def _json_format(record: Record) -> str:
    """loguru's documented recipe for a custom serialisation: the line goes into ``extra``.

    Not loguru's own ``serialize=True``: it nests everything under ``record``, with the level and
    the time as objects, beside a ``text`` that repeats the message, so shippers would need a
    mapping for every field. These lines are flat, with the names shippers look for first.
    """
    fields: dict[str, Any] = {
        "time": record["time"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "level": record["level"].name,
        "message": record["message"],
        "logger": record["name"],
    }
    if _worker is not None:
        fields["worker"] = _worker
    for key, value in record["extra"].items():
        if key not in ("child_suffix", "json_line"):
            fields.setdefault(key, value)
    if record["exception"] is not None:
        kind, value, tb = record["exception"]
        fields["exception"] = "".join(traceback.format_exception(kind, value, tb)).rstrip()
    record["extra"]["json_line"] = _json_line(fields)
    return "{extra[json_line]}\n"


def relay_line(text: str, process: str) -> None:
    """Pass one line of a worker's stderr on to this process's stderr.

    The worker's own records are already in this node's format and pass as they are. Anything else
    it wrote there (a crash's traceback, a C library's message) is logged here in JSON mode, so
    that every line of the output stays one object; in text mode it passes too.
    """
    if _format == JSON and not _is_record(text):
        logger.bind(child=process).warning("{}", text)
        return
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _is_record(text: str) -> bool:
    if not text.startswith("{"):
        return False
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def setup_logging(level: str, worker: int | None = None, log_format: str = TEXT) -> None:
    """Log to stderr at ``level`` in ``log_format``; ``worker`` names a worker in each of its lines."""
    global _worker, _format
    _worker, _format = worker, log_format
    logger.remove()
    logger.configure(patcher=_patch)  # type: ignore[arg-type]
    if log_format == JSON:
        logger.add(sys.stderr, level=level, format=_json_format, colorize=False, backtrace=False, diagnose=False)
    else:
        logger.add(sys.stderr, level=level, format=_FORMAT, backtrace=False, diagnose=False)
    logging.basicConfig(handlers=[_InterceptHandler()], level=0, force=True)
    # These libraries are chatty below WARNING; show their detail only when debugging Orisun.
    library_level = logging.DEBUG if level in ("TRACE", "DEBUG") else logging.WARNING
    for name in ("grpc", "psycopg", "nats", "asyncio"):
        logging.getLogger(name).setLevel(library_level)

"""Logging: loguru to stderr, with grpc, psycopg, nats and asyncio's standard logging routed into it."""

from __future__ import annotations

import logging
import sys

from loguru import logger

_FORMAT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "<cyan>{name}</cyan> {message}{extra[child_suffix]}"
)


class _InterceptHandler(logging.Handler):
    """Hands standard-library log records to loguru (loguru's documented recipe)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(exception=record.exc_info, depth=6).log(level, "[{}] {}", record.name, record.getMessage())


def _patch(record: dict) -> None:  # type: ignore[type-arg]
    child = record["extra"].get("child")
    record["extra"]["child_suffix"] = f" [{child}]" if child else ""


def setup_logging(level: str) -> None:
    logger.remove()
    logger.configure(patcher=_patch)  # type: ignore[arg-type]
    logger.add(sys.stderr, level=level, format=_FORMAT, backtrace=False, diagnose=False)
    logging.basicConfig(handlers=[_InterceptHandler()], level=0, force=True)
    # These libraries are chatty below WARNING; show their detail only when debugging Orisun.
    library_level = logging.DEBUG if level in ("TRACE", "DEBUG") else logging.WARNING
    for name in ("grpc", "psycopg", "nats", "asyncio"):
        logging.getLogger(name).setLevel(library_level)

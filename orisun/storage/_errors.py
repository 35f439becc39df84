"""The one place that turns psycopg's exceptions into Orisun's own (``orisun.errors``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from loguru import logger

from orisun.errors import Unavailable


@contextmanager
def translate_errors(action: str) -> Iterator[None]:
    """Map a lost, refused or exhausted database connection to ``Unavailable`` (the client may retry).

    ``OperationalError`` covers a dropped connection, a server shutting down and the pool's own
    timeout. Anything else propagates unchanged: it is a bug, reported as INTERNAL by the transport.
    ``action`` says what was being done, for the log and the client's message.
    """
    try:
        yield
    except psycopg.OperationalError as exc:
        logger.warning("PostgreSQL unavailable while {}: {}", action, exc)
        raise Unavailable(f"PostgreSQL is unavailable ({action}); retry later") from exc

"""The one place that turns nats-py's exceptions into Orisun's own (``orisun.errors``).

The twin of ``orisun.storage._errors`` for PostgreSQL: every NATS call whose failure a client
may see goes through ``translate_errors`` (or ``unavailable`` where the caller handles some
failures itself first), so that a lost NATS reads the same wherever it is noticed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import nats.errors

from orisun.errors import Unavailable

# What a NATS call raises when the server cannot be reached or does not answer: nats-py's own
# errors (closed connection, no responders, its timeout), asyncio's timeout (a subclass of
# OSError) and the socket's errors. Anything else is a bug and propagates as it is.
NATS_ERRORS: tuple[type[BaseException], ...] = (nats.errors.Error, OSError)


def unavailable(action: str, exc: BaseException) -> Unavailable:
    """The ``Unavailable`` a client gets when NATS failed with ``exc`` while doing ``action``."""
    # asyncio's TimeoutError has no text; nats-py's messages ("nats: connection closed") do.
    detail = str(exc) or ("no answer in time" if isinstance(exc, TimeoutError) else "connection lost")
    return Unavailable(f"NATS is unavailable ({action}: {detail}); retry later")


@contextmanager
def translate_errors(action: str) -> Iterator[None]:
    """Map a NATS failure (``NATS_ERRORS``) to ``Unavailable`` (the client may retry).

    ``action`` says what was being done, for the client's message: "publishing a pub/sub message".
    """
    try:
        yield
    except NATS_ERRORS as exc:
        raise unavailable(action, exc) from exc

"""The errors Orisun's core raises.

The core (service, storage, messaging) raises only these; the transport maps each kind to one
gRPC status in a single place (``orisun.transport.status``). A message must name the field or
thing it is about, because it reaches the client as it is.
"""

from __future__ import annotations


class OrisunError(Exception):
    """Base of every error Orisun raises on purpose."""


class ConfigError(OrisunError):
    """Invalid configuration. ``variable`` names the environment variable at fault."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


class StartupError(OrisunError):
    """Orisun cannot start (a port in use, PostgreSQL unreachable, a missing binary)."""


class InvalidArgument(OrisunError):
    """The request is malformed. ``field`` names the request field at fault (``"subject"``,
    ``"events[3].event_id"``); the message, which reaches the client as it is, starts with it:
    ``"field: problem"``. Clients and the dashboard's forms rely on that shape."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class NotFound(OrisunError):
    """A named thing (a boundary) does not exist."""


class AlreadyExists(OrisunError):
    """A concurrency conflict, a duplicate event id or a subscriber name already taken."""


class FailedPrecondition(OrisunError):
    """The request is valid but the system is not in a state to carry it out (e.g. a schema that
    exists already without being asked to adopt it)."""


class Unauthenticated(OrisunError):
    """Missing or wrong credentials."""


class PermissionDenied(OrisunError):
    """The caller is authenticated but lacks the role the call needs."""


class Unavailable(OrisunError):
    """A dependency (PostgreSQL, NATS) cannot be reached right now; the client may retry."""


QUOTE_LIMIT = 64


def quoted(value: str, limit: int = QUOTE_LIMIT) -> str:
    """``value`` quoted for a message that reaches the client: ``repr`` of at most ``limit``
    characters, with the full size in bytes when it is longer.

    A message carries a client's input back in the status trailer, which clients cap (8-16 KiB):
    echoing a 20,000-byte name whole made the client see RESOURCE_EXHAUSTED instead of the real
    error. ``repr`` also makes control characters and lone surrogates visible and harmless.
    """
    if len(value) <= limit:
        return repr(value)
    size = len(value.encode("utf-8", "surrogatepass"))
    return f"{value[:limit]!r}… ({size} bytes)"


# The longest error message a client gets (a gRPC status message, a dashboard error), in UTF-8
# bytes. gRPC sends it percent-encoded in a trailer (up to 3 bytes per byte), and clients refuse
# trailers above 8-16 KiB: the call then fails with RESOURCE_EXHAUSTED "Stream removed" and the
# real status is lost. Messages quote input through ``quoted``; this cap is the backstop for
# anything that slips through.
MAX_MESSAGE_BYTES = 1024
_CUT = "… (message cut)"


def bounded(message: str) -> str:
    """``message`` cut to MAX_MESSAGE_BYTES of UTF-8, on a character boundary."""
    try:
        encoded = message.encode()
    except UnicodeEncodeError:  # a lone surrogate: gRPC could not send the message at all
        encoded = message.encode("utf-8", "backslashreplace")
        message = encoded.decode()
    if len(encoded) <= MAX_MESSAGE_BYTES:
        return message
    room = MAX_MESSAGE_BYTES - len(_CUT.encode())
    # "ignore" drops only the bytes of a character cut in two at the end.
    return encoded[:room].decode("utf-8", "ignore") + _CUT

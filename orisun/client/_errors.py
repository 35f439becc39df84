"""The client's exceptions, and the one place where gRPC statuses become them."""

from __future__ import annotations

import re
from typing import Any

import grpc

__all__ = [
    "AlreadyExists",
    "BoundaryNotFound",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OrisunError",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "WrongExpectedVersion",
]


class OrisunError(Exception):
    """Base of every error the client raises for a failed call.

    ``code`` is the gRPC status code (``None`` for errors raised by the client itself) and
    ``message`` the server's status message, as sent.
    """

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}" if self.code is not None else self.message


class InvalidArgument(OrisunError):
    """The request is malformed (``INVALID_ARGUMENT``); the message names the field."""


class NotFound(OrisunError):
    """A named thing does not exist (``NOT_FOUND``): a boundary, a user."""


class BoundaryNotFound(NotFound):
    """The boundary is not configured on the server (``NOT_FOUND`` naming a boundary)."""


class AlreadyExists(OrisunError):
    """``ALREADY_EXISTS``: a duplicate event id, a subscriber name taken, a user or boundary that
    exists. A concurrency conflict is the subclass `WrongExpectedVersion`."""


class WrongExpectedVersion(AlreadyExists):
    """The stream's version is not the one the write expected (optimistic concurrency).

    ``expected`` is the version the write expected and ``actual`` the stream's version (with a
    subset query: the version of its last matching event; -1 when none).
    """

    def __init__(self, message: str, code: grpc.StatusCode | None, expected: int, actual: int) -> None:
        super().__init__(message, code)
        self.expected = expected
        self.actual = actual


class Unauthenticated(OrisunError):
    """Missing or wrong credentials (``UNAUTHENTICATED``)."""


class PermissionDenied(OrisunError):
    """The user lacks the role the call needs (``PERMISSION_DENIED``)."""


class FailedPrecondition(OrisunError):
    """The request is valid but the server's state forbids it (``FAILED_PRECONDITION``)."""


class Unavailable(OrisunError):
    """The server or its storage cannot be reached (``UNAVAILABLE``); retrying may succeed. Raised
    once the client's own retries are used up."""


class DeadlineExceeded(OrisunError):
    """The call did not finish within its timeout (``DEADLINE_EXCEEDED``)."""


class ResourceExhausted(OrisunError):
    """A message too large for a limit (``RESOURCE_EXHAUSTED``)."""


class Unimplemented(OrisunError):
    """The server does not implement the call (``UNIMPLEMENTED``): an older Orisun."""


class Internal(OrisunError):
    """Any other status: ``INTERNAL`` (a server bug; the message carries an incident id), ``UNKNOWN``,
    ``CANCELLED``, ..."""


_BY_CODE: dict[grpc.StatusCode, type[OrisunError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
}

# Orisun's conflict message: "expected N, actual M" (and upstream's wording "Expected N, Actual M").
_CONFLICT = re.compile(r"expected\s+(-?\d+)\s*,\s*actual\s+(-?\d+)", re.IGNORECASE)


def translate(error: grpc.RpcError) -> OrisunError:
    """The typed exception for a failed call (``error`` is a ``grpc.RpcError`` of a sync call or a
    ``grpc.aio.AioRpcError``: both have ``code()`` and ``details()``)."""
    call: Any = error
    code: grpc.StatusCode = call.code()
    message: str = call.details() or ""
    if code is grpc.StatusCode.ALREADY_EXISTS:
        match = _CONFLICT.search(message)
        if match:
            return WrongExpectedVersion(message, code, int(match[1]), int(match[2]))
    if code is grpc.StatusCode.NOT_FOUND and message.lower().startswith("boundary"):
        return BoundaryNotFound(message, code)
    return _BY_CODE.get(code, Internal)(message, code)


def status_code(error: BaseException) -> grpc.StatusCode | None:
    """The gRPC status of a failed call, ``None`` for anything else."""
    if isinstance(error, grpc.RpcError):
        call: Any = error
        code = call.code()
        return code if isinstance(code, grpc.StatusCode) else None
    return None

"""The one error → status mapping: Orisun's errors keep their message, anything else is INTERNAL."""

from __future__ import annotations

import grpc
import pytest

from orisun import errors
from orisun.transport.status import status_of

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InvalidArgument("events[3].event_id", "not a UUID"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFound("boundary 'x' is not configured"), grpc.StatusCode.NOT_FOUND),
        (errors.AlreadyExists("expected 1, actual 2"), grpc.StatusCode.ALREADY_EXISTS),
        (errors.Unauthenticated("invalid username or password"), grpc.StatusCode.UNAUTHENTICATED),
        (errors.PermissionDenied("needs ADMIN or OPERATIONS"), grpc.StatusCode.PERMISSION_DENIED),
        (errors.Unavailable("PostgreSQL is unavailable"), grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_orisun_errors_keep_their_message(error: errors.OrisunError, code: grpc.StatusCode) -> None:
    assert status_of(error) == (code, str(error))


def test_anything_else_is_internal_with_a_fixed_message() -> None:
    try:
        raise KeyError("secret-table-name")
    except KeyError as exc:
        code, message = status_of(exc)
    assert code == grpc.StatusCode.INTERNAL
    assert "secret-table-name" not in message and "Traceback" not in message
    assert message.startswith("internal error (incident ")
    assert "server log" in message

"""Fixtures and helpers shared by the orisun.Admin gRPC service's tests (tests/test_admin_api*.py,
issue #15): one server for each module (its login throttle raised, so that the tests' wrong
passwords from 127.0.0.1 do not throttle each other), an ``Admin`` client, and every RPC with a
valid request of its kind (``RPCS``).

The test files bind the fixtures here (`server`) to module names of their own, so that pytest finds
them there (importing a fixture that a test takes as a parameter is a lint error, F811).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from orisun._proto import admin_pb2 as apb
from orisun._proto import admin_pb2_grpc as apb_grpc
from orisun._proto import eventstore_pb2 as pb
from orisun.runtime.postgres import EmbeddedPostgres
from tests.support import ADMIN, ServerThread, auth_metadata, running_server

BOUNDARIES = {"orisun_admin": "orisun_admin", "adm_orders": "adm_orders", "adm_billing": "adm_billing_schema"}


@pytest.fixture(scope="module")
def server(postgres: EmbeddedPostgres) -> Iterator[ServerThread]:
    with running_server(postgres.conninfo, "test_admin_api", boundaries=BOUNDARIES) as server:
        assert server.app.users is not None
        server.app.users.throttle.threshold = 1_000_000
        yield server


class Admin:
    """Calls of orisun.Admin as one user; ``call`` returns the answer or the RpcError."""

    def __init__(self, server: ServerThread, username: str = ADMIN[0], password: str = ADMIN[1],
                 metadata: list[tuple[str, str]] | None = None) -> None:
        self.server = server
        self.metadata = auth_metadata(username, password) if metadata is None else metadata

    def call(self, method: str, request: Any) -> Any:
        with self.server.channel() as channel:
            stub = apb_grpc.AdminStub(channel)
            try:
                return getattr(stub, method)(request, metadata=self.metadata or None, timeout=15)
            except grpc.RpcError as exc:
                return exc

    def ok(self, method: str, request: Any) -> Any:
        answer = self.call(method, request)
        assert not isinstance(answer, grpc.RpcError), f"{method}: {answer.code()} {answer.details()}"
        return answer

    def fails(self, method: str, request: Any, code: grpc.StatusCode, *words: str) -> str:
        answer = self.call(method, request)
        assert isinstance(answer, grpc.RpcError), f"{method} answered {answer!r}, not {code}"
        assert answer.code() == code, f"{method}: {answer.code()} {answer.details()}"
        details: str = answer.details()
        for word in words:
            assert word in details, details
        return details


def new_user(admin: Admin, roles: list[str] | None = None, password: str = "first-password") -> apb.AdminUser:
    username = f"user-{uuid.uuid4().hex[:8]}"
    answer = admin.ok("CreateUser", apb.CreateUserRequest(username=username, password=password, roles=roles or []))
    return answer.user


def event_store_status(server: ServerThread, username: str, password: str) -> grpc.StatusCode:
    """The status of a GetEvents call as this user (OK when authenticated)."""
    with server.stub() as stub:
        try:
            stub.GetEvents(pb.GetEventsRequest(boundary="orisun_admin"), metadata=auth_metadata(username, password),
                           timeout=10)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


# --- Discovery and auth ---------------------------------------------------------------------------

# Every RPC of orisun.Admin with a valid request of its kind.
RPCS: dict[str, Callable[[str], Any]] = {
    "CreateUser": lambda other_id: apb.CreateUserRequest(username=f"x-{uuid.uuid4().hex[:8]}", password="pw-123456"),
    "DeleteUser": lambda other_id: apb.DeleteUserRequest(user_id=other_id),
    "ChangePassword": lambda other_id: apb.ChangePasswordRequest(user_id=other_id, new_password="pw-654321"),
    "ListUsers": lambda other_id: apb.ListUsersRequest(),
    "ValidateCredentials": lambda other_id: apb.ValidateCredentialsRequest(username="admin", password="changeit"),
    "GetUserCount": lambda other_id: apb.GetUserCountRequest(),
    "GetEventCount": lambda other_id: apb.GetEventCountRequest(boundary="adm_orders"),
    "ListBoundaries": lambda other_id: apb.ListBoundariesRequest(),
    "GetBoundary": lambda other_id: apb.GetBoundaryRequest(name="adm_orders"),
    "CreateBoundary": lambda other_id: apb.CreateBoundaryRequest(name=f"adm_denied_{uuid.uuid4().hex[:6]}"),
}


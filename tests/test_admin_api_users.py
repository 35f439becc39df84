"""The orisun.Admin gRPC service's user RPCs on a real server (issue #15): CreateUser, ListUsers,
GetUserCount, DeleteUser, ChangePassword and ValidateCredentials, with the validation of each and
the failed-login counting (on servers of their own, for the throttle). Shared fixtures and
helpers: tests/admin_api_support.py.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from orisun._proto import admin_pb2 as apb
from tests import admin_api_support
from tests.admin_api_support import RPCS, Admin, event_store_status, new_user
from tests.support import ADMIN, ServerThread

# Fixtures of tests/admin_api_support.py, bound to names of this module so that pytest finds them here.
server = admin_api_support.server


pytestmark = pytest.mark.timeout(90)


# --- Users ----------------------------------------------------------------------------------------


def test_create_user_returns_it_and_lists_and_counts_it(server: ServerThread) -> None:
    admin = Admin(server)
    before = admin.ok("GetUserCount", apb.GetUserCountRequest()).count
    began = datetime.now(UTC) - timedelta(seconds=5)
    username = f"alice-{uuid.uuid4().hex[:8]}"
    created = admin.ok("CreateUser", apb.CreateUserRequest(name="Alice", username=username, password="alice-pw-1",
                                                           roles=["OPERATIONS", "ADMIN"])).user
    assert uuid.UUID(created.user_id)
    assert (created.name, created.username, sorted(created.roles)) == ("Alice", username, ["ADMIN", "OPERATIONS"])
    assert began <= created.created_at.ToDatetime(UTC) <= datetime.now(UTC) + timedelta(seconds=5)
    assert created.updated_at == created.created_at
    listed = {u.username: u for u in admin.ok("ListUsers", apb.ListUsersRequest()).users}
    assert listed[username] == created
    assert "admin" in listed and list(listed) == sorted(listed)
    assert admin.ok("GetUserCount", apb.GetUserCountRequest()).count == before + 1
    # The name defaults to the username; no role: read only, but authenticated.
    plain = admin.ok("CreateUser", apb.CreateUserRequest(username=f"bob-{uuid.uuid4().hex[:8]}",
                                                         password="bob-pw-1")).user
    assert plain.name == plain.username and list(plain.roles) == []
    assert event_store_status(server, plain.username, "bob-pw-1") == grpc.StatusCode.OK
    assert event_store_status(server, username, "alice-pw-1") == grpc.StatusCode.OK


def test_a_taken_username_already_exists(server: ServerThread) -> None:
    admin = Admin(server)
    user = new_user(admin)
    admin.fails("CreateUser", apb.CreateUserRequest(username=user.username, password="other-pw"),
                grpc.StatusCode.ALREADY_EXISTS, "username", user.username)
    admin.fails("CreateUser", apb.CreateUserRequest(username="admin", password="other-pw"),
                grpc.StatusCode.ALREADY_EXISTS, "username")


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"username": "", "password": "pw-123456"}, "username"),
        ({"username": "a:b", "password": "pw-123456"}, "username"),
        ({"username": "u" * 129, "password": "pw-123456"}, "username"),
        ({"username": "no-password", "password": ""}, "password"),
        ({"username": "bad-role", "password": "pw-123456", "roles": ["ROOT"]}, "roles"),
        ({"username": "nul\x00name", "password": "pw-123456"}, "username"),
    ],
    ids=["empty-username", "colon", "long-username", "empty-password", "unknown-role", "nul"],
)
def test_create_user_validation_names_the_field(server: ServerThread, request_fields: dict[str, Any],
                                                field: str) -> None:
    admin = Admin(server)
    before = admin.ok("GetUserCount", apb.GetUserCountRequest()).count
    details = admin.fails("CreateUser", apb.CreateUserRequest(**request_fields), grpc.StatusCode.INVALID_ARGUMENT)
    assert details.startswith(field), details
    assert len(details) < 300
    assert admin.ok("GetUserCount", apb.GetUserCountRequest()).count == before


def test_a_deleted_user_cannot_authenticate_anymore(server: ServerThread) -> None:
    admin = Admin(server)
    user = new_user(admin, ["OPERATIONS"])
    assert event_store_status(server, user.username, "first-password") == grpc.StatusCode.OK  # now cached
    assert admin.ok("DeleteUser", apb.DeleteUserRequest(user_id=user.user_id)).success is True
    assert event_store_status(server, user.username, "first-password") == grpc.StatusCode.UNAUTHENTICATED
    assert user.username not in [u.username for u in admin.ok("ListUsers", apb.ListUsersRequest()).users]
    admin.fails("DeleteUser", apb.DeleteUserRequest(user_id=user.user_id), grpc.StatusCode.NOT_FOUND, "user_id")


def test_deleting_oneself_is_a_failed_precondition(server: ServerThread) -> None:
    admin = Admin(server)
    me = next(u for u in admin.ok("ListUsers", apb.ListUsersRequest()).users if u.username == "admin")
    admin.fails("DeleteUser", apb.DeleteUserRequest(user_id=me.user_id), grpc.StatusCode.FAILED_PRECONDITION,
                "yourself")
    other_admin = new_user(admin, ["ADMIN"])
    Admin(server, other_admin.username, "first-password").fails(
        "DeleteUser", apb.DeleteUserRequest(user_id=other_admin.user_id), grpc.StatusCode.FAILED_PRECONDITION)
    assert event_store_status(server, other_admin.username, "first-password") == grpc.StatusCode.OK
    assert event_store_status(server, *ADMIN) == grpc.StatusCode.OK


@pytest.mark.parametrize("rpc", ["DeleteUser", "ChangePassword"])
@pytest.mark.parametrize("user_id", ["", "not-a-uuid", "12345678-1234-1234-1234-1234567890123", "' OR 1=1 --"])
def test_a_user_id_that_is_no_uuid_is_invalid(server: ServerThread, rpc: str, user_id: str) -> None:
    request = RPCS[rpc](user_id)
    details = Admin(server).fails(rpc, request, grpc.StatusCode.INVALID_ARGUMENT)
    assert details.startswith("user_id"), details


@pytest.mark.parametrize("rpc", ["DeleteUser", "ChangePassword"])
def test_an_unknown_user_id_is_not_found(server: ServerThread, rpc: str) -> None:
    unknown = str(uuid.uuid4())
    Admin(server).fails(rpc, RPCS[rpc](unknown), grpc.StatusCode.NOT_FOUND, "user_id", unknown)


def test_an_admin_changes_another_users_password_effective_at_once(server: ServerThread) -> None:
    admin = Admin(server)
    user = new_user(admin, ["OPERATIONS"])
    assert event_store_status(server, user.username, "first-password") == grpc.StatusCode.OK  # now cached
    answer = admin.ok("ChangePassword", apb.ChangePasswordRequest(user_id=user.user_id, new_password="second-pw"))
    assert answer.success is True
    assert event_store_status(server, user.username, "first-password") == grpc.StatusCode.UNAUTHENTICATED
    assert event_store_status(server, user.username, "second-pw") == grpc.StatusCode.OK
    listed = next(u for u in admin.ok("ListUsers", apb.ListUsersRequest()).users if u.user_id == user.user_id)
    assert listed.updated_at.ToDatetime() > listed.created_at.ToDatetime()


@pytest.mark.parametrize("roles", [[], ["OPERATIONS"], ["ADMIN"]], ids=["read-only", "operations", "admin"])
def test_any_user_changes_their_own_password_with_the_current_one(server: ServerThread, roles: list[str]) -> None:
    user = new_user(Admin(server), roles)
    me = Admin(server, user.username, "first-password")
    # Wrong or missing current password: refused, nothing changes.
    me.fails("ChangePassword", apb.ChangePasswordRequest(user_id=user.user_id, current_password="not-it",
                                                         new_password="second-pw"),
             grpc.StatusCode.PERMISSION_DENIED, "current_password")
    me.fails("ChangePassword", apb.ChangePasswordRequest(user_id=user.user_id, new_password="second-pw"),
             grpc.StatusCode.INVALID_ARGUMENT, "current_password")
    assert event_store_status(server, user.username, "first-password") == grpc.StatusCode.OK
    # An invalid new password names its field.
    details = me.fails("ChangePassword", apb.ChangePasswordRequest(
        user_id=user.user_id, current_password="first-password", new_password=""), grpc.StatusCode.INVALID_ARGUMENT)
    assert details.startswith("new_password"), details
    # The id in any case.
    answer = me.ok("ChangePassword", apb.ChangePasswordRequest(
        user_id=user.user_id.upper(), current_password="first-password", new_password="second-pw"))
    assert answer.success is True
    assert event_store_status(server, user.username, "first-password") == grpc.StatusCode.UNAUTHENTICATED
    assert event_store_status(server, user.username, "second-pw") == grpc.StatusCode.OK


def test_validate_credentials(server: ServerThread) -> None:
    admin = Admin(server)
    user = new_user(admin, ["OPERATIONS"])
    right = admin.ok("ValidateCredentials", apb.ValidateCredentialsRequest(username=user.username,
                                                                           password="first-password"))
    assert right.success is True and right.user == user
    for username, password in ((user.username, "wrong"), ("nobody-here", "first-password"), ("", ""),
                               ("nul\x00", "x")):
        wrong = admin.ok("ValidateCredentials", apb.ValidateCredentialsRequest(username=username, password=password))
        assert wrong.success is False and not wrong.HasField("user")


def test_validate_credentials_counts_failed_logins(start_server: Callable[..., ServerThread]) -> None:
    """A wrong password over ValidateCredentials is a failed login like any other: after the
    throttle's threshold the username waits, and ValidateCredentials then answers UNAVAILABLE
    (retry later), never success=false for credentials that may be right."""
    server = start_server()
    admin = Admin(server)
    user = new_user(admin)
    assert event_store_status(server, *ADMIN) == grpc.StatusCode.OK
    for n in range(5):
        answer = admin.ok("ValidateCredentials", apb.ValidateCredentialsRequest(username=user.username,
                                                                                password=f"wrong-{n}"))
        assert answer.success is False
    details = admin.fails("ValidateCredentials", apb.ValidateCredentialsRequest(
        username=user.username, password="first-password"), grpc.StatusCode.UNAVAILABLE)
    assert re.search(r"too many failed logins: try again in \d+ s", details), details
    # The same count as gRPC's and the dashboard's logins: the user's own login waits too.
    assert event_store_status(server, user.username, "first-password") == grpc.StatusCode.UNAUTHENTICATED
    # The caller's own (cached) credentials keep working.
    assert admin.ok("GetUserCount", apb.GetUserCountRequest()).count == 2


def test_a_wrong_current_password_counts_as_a_failed_login(start_server: Callable[..., ServerThread]) -> None:
    server = start_server()
    user = new_user(Admin(server), ["OPERATIONS"])
    me = Admin(server, user.username, "first-password")
    users = server.app.users
    assert users is not None
    for _ in range(5):
        me.fails("ChangePassword", apb.ChangePasswordRequest(user_id=user.user_id, current_password="guess",
                                                             new_password="mine-now"),
                 grpc.StatusCode.PERMISSION_DENIED)
    assert users.throttle.wait(user.username, "127.0.0.1") > 0


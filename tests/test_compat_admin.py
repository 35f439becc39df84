"""The node client's HEAD ``orisun.Admin`` (upstream-head/admin.proto) against Orisun (issue #15):
every RPC, by the rules of Orisun's proto/admin.proto (ADMIN role, status codes, never a
success=false hiding an error except ValidateCredentials). Shared fixtures and helpers:
tests/compat_support.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import grpc
import pytest

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from tests import compat_support
from tests.compat import stubs
from tests.compat_support import (
    ADMIN_B,
    AUTH,
    BOUNDARIES,
    READER,
    enum,
    head,
    msg,
    node,
    node_event,
    node_save,
    refused,
    unique,
)
from tests.support import auth_metadata

# Fixtures of tests/compat_support.py, bound to names of this module so that pytest finds them here.
server = compat_support.server
channel = compat_support.channel
ours = compat_support.ours
node_stub = compat_support.node_stub
reader = compat_support.reader


pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def admin_stub(channel: grpc.Channel) -> stubs.Stub:
    return head().stub(channel, "orisun.Admin")


# --- orisun.Admin through upstream's admin.proto ---------------------------------------------------


def a(type_name: str, /, **fields: Any) -> Any:
    return msg(head(), type_name, **fields)


def admin_users(stub: stubs.Stub) -> dict[str, Any]:
    return {u.username: u for u in stub.ListUsers(a("ListUsersRequest"), metadata=AUTH, timeout=30).users}


def create_user(stub: stubs.Stub, username: str, password: str, roles: Sequence[str] = (), name: str = "") -> Any:
    return stub.CreateUser(a("CreateUserRequest", name=name, username=username, password=password, roles=roles),
                           metadata=AUTH, timeout=30).user


def can_read(ours: pb_grpc.EventStoreStub, username: str, password: str) -> grpc.StatusCode:
    try:
        ours.GetEvents(pb.GetEventsRequest(boundary=ADMIN_B, count=1), metadata=auth_metadata(username, password),
                       timeout=30)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize(
    ("rpc", "request_name"),
    [("GetUserCount", "GetUserCountRequest"), ("ListUsers", "ListUsersRequest"),
     ("ListBoundaries", "ListBoundariesRequest"), ("CreateUser", "CreateUserRequest"),
     ("DeleteUser", "DeleteUserRequest"), ("ValidateCredentials", "ValidateCredentialsRequest"),
     ("GetEventCount", "GetEventCountRequest"), ("GetBoundary", "GetBoundaryRequest"),
     ("CreateBoundary", "CreateBoundaryRequest")],
)
def test_admin_rpcs_need_the_admin_role(admin_stub: stubs.Stub, rpc: str, request_name: str) -> None:
    call = getattr(admin_stub, rpc)
    code, details = refused(call, a(request_name), metadata=auth_metadata(*READER))
    assert code == grpc.StatusCode.PERMISSION_DENIED, details
    code, details = refused(call, a(request_name), metadata=[])
    assert code == grpc.StatusCode.UNAUTHENTICATED, details
    code, details = refused(call, a(request_name), metadata=auth_metadata("admin", "wrong"))
    assert code == grpc.StatusCode.UNAUTHENTICATED, details


def test_admin_get_user_count_the_node_admin_clients_health_check(admin_stub: stubs.Stub) -> None:
    count = admin_stub.GetUserCount(a("GetUserCountRequest"), metadata=AUTH, timeout=30).count
    assert count == len(admin_users(admin_stub)) >= 2  # admin and the reader at least
    create_user(admin_stub, unique("counted"), "password-1")
    assert admin_stub.GetUserCount(a("GetUserCountRequest"), metadata=AUTH, timeout=30).count == count + 1


def test_admin_list_users(admin_stub: stubs.Stub) -> None:
    users = admin_stub.ListUsers(a("ListUsersRequest"), metadata=AUTH, timeout=30).users
    usernames = [u.username for u in users]
    assert usernames == sorted(usernames), "by username"
    admin = {u.username: u for u in users}["admin"]
    assert list(admin.roles) == ["ADMIN"]
    assert uuid.UUID(admin.user_id)
    assert admin.HasField("created_at") and admin.created_at.seconds > 0
    reader = {u.username: u for u in users}[READER[0]]
    assert (reader.name, list(reader.roles)) == ("Compat reader", [])


def test_admin_create_user(admin_stub: stubs.Stub, node_stub: stubs.Stub, ours: pb_grpc.EventStoreStub) -> None:
    username = unique("writer")
    user = create_user(admin_stub, username, "password-1", ["OPERATIONS"], name="A Writer")
    assert (user.username, user.name, list(user.roles)) == (username, "A Writer", ["OPERATIONS"])
    assert uuid.UUID(user.user_id) and user.created_at.seconds > 0
    assert admin_users(admin_stub)[username].user_id == user.user_id
    # Usable at once, with its role.
    node_save(node_stub, unique("by-new-user"), [node_event()], -1, boundary=ADMIN_B,
              auth=auth_metadata(username, "password-1"))
    # The name defaults to the username; a user without roles may only read.
    plain = create_user(admin_stub, unique("plain"), "password-2")
    assert plain.name == plain.username and list(plain.roles) == []
    assert can_read(ours, plain.username, "password-2") == grpc.StatusCode.OK
    code, _ = refused(node_stub.SaveEvents, msg(node(), "SaveEventsRequest", boundary=ADMIN_B, events=[node_event()],
                                                stream=msg(node(), "SaveStreamQuery", name="x", expected_version=-2)),
                      metadata=auth_metadata(plain.username, "password-2"))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    # Errors are status codes naming the field.
    code, details = refused(admin_stub.CreateUser, a("CreateUserRequest", username=username, password="password-3"))
    assert code == grpc.StatusCode.ALREADY_EXISTS and username in details, details
    for fields, field in (({"username": "", "password": "p-1"}, "username"),
                          ({"username": unique("nopass"), "password": ""}, "password"),
                          ({"username": unique("badrole"), "password": "p-1", "roles": ["ROOT"]}, "roles")):
        code, details = refused(admin_stub.CreateUser, a("CreateUserRequest", **fields))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and field in details, (fields, details)


def test_admin_change_password(admin_stub: stubs.Stub, ours: pb_grpc.EventStoreStub) -> None:
    username = unique("changer")
    user = create_user(admin_stub, username, "old-password", ["OPERATIONS"])
    own = auth_metadata(username, "old-password")
    # One's own, with the current password, without the ADMIN role.
    answer = admin_stub.ChangePassword(a("ChangePasswordRequest", user_id=user.user_id, current_password="old-password",
                                         new_password="new-password"), metadata=own, timeout=30)
    assert answer.success is True
    assert can_read(ours, username, "new-password") == grpc.StatusCode.OK
    assert can_read(ours, username, "old-password") == grpc.StatusCode.UNAUTHENTICATED
    own = auth_metadata(username, "new-password")
    # A wrong current password.
    code, details = refused(admin_stub.ChangePassword, a("ChangePasswordRequest", user_id=user.user_id,
                            current_password="not-it", new_password="other-password"), metadata=own)
    assert code == grpc.StatusCode.PERMISSION_DENIED, details
    # Someone else's, without the ADMIN role.
    admin_id = admin_users(admin_stub)["admin"].user_id
    code, details = refused(admin_stub.ChangePassword, a("ChangePasswordRequest", user_id=admin_id,
                            current_password="new-password", new_password="taken-over"), metadata=own)
    assert code == grpc.StatusCode.PERMISSION_DENIED, details
    # An ADMIN changes anyone's without their current password.
    answer = admin_stub.ChangePassword(a("ChangePasswordRequest", user_id=user.user_id, new_password="reset-password"),
                                       metadata=AUTH, timeout=30)
    assert answer.success is True
    assert can_read(ours, username, "reset-password") == grpc.StatusCode.OK
    # Errors.
    code, details = refused(admin_stub.ChangePassword, a("ChangePasswordRequest", user_id=str(uuid.uuid4()),
                                                         new_password="whatever-1"))
    assert code == grpc.StatusCode.NOT_FOUND, details
    code, details = refused(admin_stub.ChangePassword, a("ChangePasswordRequest", user_id=user.user_id,
                                                         new_password=""))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "password" in details, details


def test_admin_delete_user(admin_stub: stubs.Stub, ours: pb_grpc.EventStoreStub) -> None:
    username = unique("deleted")
    user = create_user(admin_stub, username, "password-1")
    assert can_read(ours, username, "password-1") == grpc.StatusCode.OK
    answer = admin_stub.DeleteUser(a("DeleteUserRequest", user_id=user.user_id), metadata=AUTH, timeout=30)
    assert answer.success is True
    assert username not in admin_users(admin_stub)
    assert can_read(ours, username, "password-1") == grpc.StatusCode.UNAUTHENTICATED
    code, details = refused(admin_stub.DeleteUser, a("DeleteUserRequest", user_id=user.user_id))
    assert code == grpc.StatusCode.NOT_FOUND, details
    admin_id = admin_users(admin_stub)["admin"].user_id
    code, details = refused(admin_stub.DeleteUser, a("DeleteUserRequest", user_id=admin_id))
    assert code == grpc.StatusCode.FAILED_PRECONDITION, details
    assert "admin" in admin_users(admin_stub)


def test_admin_validate_credentials(admin_stub: stubs.Stub) -> None:
    answer = admin_stub.ValidateCredentials(a("ValidateCredentialsRequest", username=READER[0], password=READER[1]),
                                            metadata=AUTH, timeout=30)
    assert answer.success is True and answer.user.username == READER[0]
    for username, password in ((READER[0], "wrong"), (unique("nobody"), "whatever")):
        answer = admin_stub.ValidateCredentials(a("ValidateCredentialsRequest", username=username, password=password),
                                                metadata=AUTH, timeout=30)
        assert answer.success is False and not answer.HasField("user")


def test_admin_get_event_count(admin_stub: stubs.Stub, node_stub: stubs.Stub) -> None:
    before = admin_stub.GetEventCount(a("GetEventCountRequest", boundary=ADMIN_B), metadata=AUTH, timeout=30).count
    node_save(node_stub, unique("counted"), [node_event() for _ in range(3)], -1, boundary=ADMIN_B)
    after = admin_stub.GetEventCount(a("GetEventCountRequest", boundary=ADMIN_B), metadata=AUTH, timeout=30).count
    assert after == before + 3
    code, details = refused(admin_stub.GetEventCount, a("GetEventCountRequest", boundary="no_such_boundary"))
    assert code == grpc.StatusCode.NOT_FOUND and "no_such_boundary" in details, details


def test_admin_list_and_get_boundaries(admin_stub: stubs.Stub) -> None:
    listed = admin_stub.ListBoundaries(a("ListBoundariesRequest"), metadata=AUTH, timeout=30).boundaries
    names = [b.name for b in listed]
    assert names == sorted(names), "by name"
    by_name = {b.name: b for b in listed}
    active = enum(head(), "orisun.BoundaryLifecycleStatus", "BOUNDARY_LIFECYCLE_STATUS_ACTIVE")
    for name, schema in BOUNDARIES.items():  # configured (ORISUN_PG_SCHEMAS): they predate the catalog
        boundary = by_name[name]
        assert (boundary.placement.backend, boundary.placement.namespace) == ("postgres", schema)
        assert boundary.status == active and boundary.existed_before_catalog and boundary.last_error == ""
        got = admin_stub.GetBoundary(a("GetBoundaryRequest", name=name), metadata=AUTH, timeout=30).boundary
        assert got == boundary
    code, details = refused(admin_stub.GetBoundary, a("GetBoundaryRequest", name="no_such_boundary"))
    assert code == grpc.StatusCode.NOT_FOUND and "no_such_boundary" in details, details


def test_admin_create_boundary_is_usable_at_once(admin_stub: stubs.Stub, node_stub: stubs.Stub,
                                                 reader: Any) -> None:
    name = f"compat_rt_{uuid.uuid4().hex[:8]}"
    created = admin_stub.CreateBoundary(a("CreateBoundaryRequest", name=name, description="made by test_compat"),
                                        metadata=AUTH, timeout=60).boundary
    assert (created.name, created.description, created.placement.namespace) == (name, "made by test_compat", name)
    assert created.placement.backend == "postgres" and not created.existed_before_catalog
    assert admin_stub.GetBoundary(a("GetBoundaryRequest", name=name), metadata=AUTH, timeout=30).boundary == created
    assert name in {b.name for b in admin_stub.ListBoundaries(a("ListBoundariesRequest"), metadata=AUTH).boundaries}
    # Usable at once, by upstream's node client: write, read, subscribe.
    stream = unique("fresh")
    result = node_save(node_stub, stream, [node_event(), node_event()], -1, boundary=name)
    assert (result.log_position.prepare_position, result.new_stream_version) == (2, 1)
    subscription = reader(node(), "CatchUpSubscribeToStream", msg(node(), "CatchUpSubscribeToStreamRequest",
                                                                   boundary=name, stream=stream, afterVersion=-1))
    assert [e.version for e in subscription.wait_for_count(2)] == [0, 1]
    assert admin_stub.GetEventCount(a("GetEventCountRequest", boundary=name), metadata=AUTH).count == 2
    # Errors.
    code, details = refused(admin_stub.CreateBoundary, a("CreateBoundaryRequest", name=name))
    assert code == grpc.StatusCode.ALREADY_EXISTS and name in details, details
    for bad in ("", "Bad Name!", "1starts_with_digit", "pg_reserved"):
        code, details = refused(admin_stub.CreateBoundary, a("CreateBoundaryRequest", name=bad))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "name" in details, (bad, details)


"""The orisun.Admin gRPC service on a real server (issue #15 "An Admin API over gRPC").

Stubs from orisun._proto.admin_pb2_grpc; one server for the module (its login throttle raised, so
that the tests' wrong passwords from 127.0.0.1 do not throttle each other), and a server of their
own for the tests of the throttle. The README's grpcurl examples of the "Admin API" section run
verbatim at the end.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from orisun._proto import admin_pb2 as apb
from orisun._proto import admin_pb2_grpc as apb_grpc
from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from orisun.runtime.postgres import EmbeddedPostgres
from tests.compat.stubs import PROTOS, compile_descriptor_set
from tests.support import ADMIN, ServerThread, auth_metadata, grpcurl, grpcurl_path, running_server

pytestmark = pytest.mark.timeout(90)

BOUNDARIES = {"orisun_admin": "orisun_admin", "adm_orders": "adm_orders", "adm_billing": "adm_billing_schema"}
ROOT = Path(__file__).resolve().parent.parent


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


def save(server: ServerThread, boundary: str, stream: str, count: int) -> pb.WriteResult:
    events = [pb.EventToSave(event_id=str(uuid.uuid4()), event_type="Happened", data="{}") for _ in range(count)]
    with server.stub() as stub:
        return stub.SaveEvents(pb.SaveEventsRequest(boundary=boundary, stream=pb.SaveStreamQuery(
            name=stream, expected_version=-2), events=events), metadata=auth_metadata(), timeout=15)


# --- Wire compatibility with upstream's orisun.Admin ------------------------------------------------

def _upstream_admin() -> descriptor_pb2.FileDescriptorProto:
    """upstream-head's admin.proto as protoc reads it (its import "eventstore.proto" is upstream's
    eventstore of the same package, which defines its Position)."""
    files = compile_descriptor_set(PROTOS / "upstream-head", ["admin.proto"]).file
    return next(f for f in files if f.name == "admin.proto")


def _shape(file: descriptor_pb2.FileDescriptorProto) -> dict[str, Any]:
    """What the wire depends on: package, messages' fields (number, name, type, label, the short
    name of a message or enum type: field 7/8 are eventstore.Position here, orisun.Position there,
    the same message on the wire), enums, and the service's methods."""
    def type_name(name: str) -> str:
        return name.rsplit(".", 1)[-1]

    return {
        "package": file.package,
        "messages": {m.name: sorted((f.number, f.name, f.type, f.label, type_name(f.type_name)) for f in m.field)
                     for m in file.message_type},
        "enums": {e.name: sorted((v.number, v.name) for v in e.value) for e in file.enum_type},
        "services": {s.name: sorted((m.name, type_name(m.input_type), type_name(m.output_type),
                                     m.client_streaming, m.server_streaming) for m in s.method)
                     for s in file.service},
    }


def test_admin_proto_is_wire_compatible_with_upstreams() -> None:
    ours = descriptor_pb2.FileDescriptorProto()
    apb.DESCRIPTOR.CopyToProto(ours)
    assert _shape(ours) == _shape(_upstream_admin())


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


def test_every_rpc_of_the_proto_is_covered() -> None:
    assert set(RPCS) == set(apb.DESCRIPTOR.services_by_name["Admin"].methods_by_name)


def test_grpcurl_lists_and_describes_the_admin_service(server: ServerThread) -> None:
    listed = grpcurl(server.address, "list")
    assert listed.returncode == 0, listed.stderr
    assert "orisun.Admin" in listed.stdout.split()
    described = grpcurl(server.address, "describe", "orisun.Admin")
    assert described.returncode == 0, described.stderr
    for rpc in RPCS:
        assert f"rpc {rpc}" in described.stdout


def test_health_reports_the_admin_service(server: ServerThread) -> None:
    with server.channel() as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service="orisun.Admin"), timeout=10)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("rpc", sorted(RPCS))
@pytest.mark.parametrize("credentials", ["none", "wrong-password", "unknown-user"])
def test_every_rpc_needs_credentials(server: ServerThread, rpc: str, credentials: str) -> None:
    metadata = {"none": [], "wrong-password": auth_metadata("admin", "wrong"),
                "unknown-user": auth_metadata("nobody-here", "changeit")}[credentials]
    Admin(server, metadata=metadata).fails(rpc, RPCS[rpc](str(uuid.uuid4())), grpc.StatusCode.UNAUTHENTICATED)


@pytest.mark.parametrize("rpc", sorted(RPCS))
@pytest.mark.parametrize("roles", [["OPERATIONS"], []], ids=["operations", "read-only"])
def test_every_rpc_needs_the_admin_role(server: ServerThread, rpc: str, roles: list[str]) -> None:
    admin = Admin(server)
    caller = new_user(admin, roles)
    other = new_user(admin)
    count = admin.ok("GetUserCount", apb.GetUserCountRequest()).count
    details = Admin(server, caller.username, "first-password").fails(
        rpc, RPCS[rpc](other.user_id), grpc.StatusCode.PERMISSION_DENIED, "ADMIN")
    assert caller.username in details
    # Nothing happened: the other user is still there with their password.
    assert admin.ok("GetUserCount", apb.GetUserCountRequest()).count == count
    assert event_store_status(server, other.username, "first-password") == grpc.StatusCode.OK


def test_an_unknown_method_answers_as_before(server: ServerThread) -> None:
    with server.channel() as channel:
        call = channel.unary_unary("/orisun.Admin/NoSuchMethod")
        for metadata in (auth_metadata(), None):
            with pytest.raises(grpc.RpcError) as raised:
                call(b"", metadata=metadata, timeout=10)
            assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_an_undecodable_request_is_invalid_after_authentication(server: ServerThread) -> None:
    with server.channel() as channel:
        call = channel.unary_unary("/orisun.Admin/CreateUser")
        with pytest.raises(grpc.RpcError) as raised:
            call(b"\xff\xff\xff", metadata=auth_metadata(), timeout=10)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "orisun.CreateUserRequest" in raised.value.details()
        with pytest.raises(grpc.RpcError) as raised:
            call(b"\xff\xff\xff", timeout=10)
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


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


# --- Events and boundaries ------------------------------------------------------------------------


def test_get_event_count_is_the_number_of_events(server: ServerThread) -> None:
    admin = Admin(server)
    assert admin.ok("GetEventCount", apb.GetEventCountRequest(boundary="adm_billing")).count == 0
    save(server, "adm_billing", "invoice-1", 3)
    save(server, "adm_billing", "invoice-2", 2)
    assert admin.ok("GetEventCount", apb.GetEventCountRequest(boundary="adm_billing")).count == 5


@pytest.mark.parametrize(("boundary", "code"), [("", grpc.StatusCode.INVALID_ARGUMENT),
                                                 ("x" * 64, grpc.StatusCode.INVALID_ARGUMENT),
                                                 ("no_such_boundary", grpc.StatusCode.NOT_FOUND)])
def test_get_event_count_of_a_bad_boundary(server: ServerThread, boundary: str, code: grpc.StatusCode) -> None:
    details = Admin(server).fails("GetEventCount", apb.GetEventCountRequest(boundary=boundary), code)
    assert "boundary" in details


def _configured(name: str, schema: str) -> apb.BoundaryInfo:
    return apb.BoundaryInfo(name=name, placement=apb.BoundaryPlacementInput(backend="postgres", namespace=schema),
                            status=apb.BOUNDARY_LIFECYCLE_STATUS_ACTIVE, existed_before_catalog=True)


def test_list_and_get_the_configured_boundaries(server: ServerThread) -> None:
    admin = Admin(server)
    listed = {b.name: b for b in admin.ok("ListBoundaries", apb.ListBoundariesRequest()).boundaries}
    for name, schema in BOUNDARIES.items():
        assert listed[name] == _configured(name, schema)
        assert admin.ok("GetBoundary", apb.GetBoundaryRequest(name=name)).boundary == _configured(name, schema)
    names = list(listed)
    assert names == sorted(names)


def test_get_boundary_unknown_or_invalid(server: ServerThread) -> None:
    admin = Admin(server)
    admin.fails("GetBoundary", apb.GetBoundaryRequest(name="no_such_boundary"), grpc.StatusCode.NOT_FOUND,
                "no_such_boundary")
    assert admin.fails("GetBoundary", apb.GetBoundaryRequest(name=""),
                       grpc.StatusCode.INVALID_ARGUMENT).startswith("name")


# --- CreateBoundary (with the lead's runtime boundaries) -------------------------------------------


def test_create_boundary_makes_it_usable_at_once(server: ServerThread) -> None:
    admin = Admin(server)
    name = f"adm_new_{uuid.uuid4().hex[:6]}"
    created = admin.ok("CreateBoundary", apb.CreateBoundaryRequest(name=name, description="Created over gRPC"))
    expected = apb.BoundaryInfo(name=name, description="Created over gRPC",
                                placement=apb.BoundaryPlacementInput(backend="postgres", namespace=name),
                                status=apb.BOUNDARY_LIFECYCLE_STATUS_ACTIVE)
    assert created.boundary == expected
    assert admin.ok("GetBoundary", apb.GetBoundaryRequest(name=name)).boundary == expected
    assert name in [b.name for b in admin.ok("ListBoundaries", apb.ListBoundariesRequest()).boundaries]
    assert admin.ok("GetEventCount", apb.GetEventCountRequest(boundary=name)).count == 0
    save(server, name, "s-1", 2)
    assert admin.ok("GetEventCount", apb.GetEventCountRequest(boundary=name)).count == 2
    admin.fails("CreateBoundary", apb.CreateBoundaryRequest(name=name), grpc.StatusCode.ALREADY_EXISTS, name)


def test_create_boundary_with_its_own_schema(server: ServerThread) -> None:
    admin = Admin(server)
    name = f"adm_placed_{uuid.uuid4().hex[:6]}"
    schema = f"{name}_schema"
    created = admin.ok("CreateBoundary", apb.CreateBoundaryRequest(
        name=name, placement=apb.BoundaryPlacementInput(backend="postgres", namespace=schema))).boundary
    assert (created.placement.backend, created.placement.namespace) == ("postgres", schema)
    save(server, name, "s-1", 1)
    assert admin.ok("GetEventCount", apb.GetEventCountRequest(boundary=name)).count == 1


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "1starts_with_a_digit"}, "name"),
        ({"name": "has-dash"}, "name"),
        ({"name": "pg_reserved"}, "name"),
        ({"name": "adm_ok_name", "placement": {"namespace": "bad schema"}}, "placement.namespace"),
        ({"name": "adm_ok_name", "placement": {"backend": "mongodb"}}, "placement.backend"),
    ],
    ids=["empty", "digit", "dash", "pg-prefix", "bad-namespace", "other-backend"],
)
def test_create_boundary_validation_names_the_field(server: ServerThread, request_fields: dict[str, Any],
                                                    field: str) -> None:
    placement = request_fields.pop("placement", None)
    request = apb.CreateBoundaryRequest(**request_fields)
    if placement is not None:
        request.placement.CopyFrom(apb.BoundaryPlacementInput(**placement))
    details = Admin(server).fails("CreateBoundary", request, grpc.StatusCode.INVALID_ARGUMENT)
    assert details.startswith(field), details


# --- Workers ---------------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_every_worker_serves_the_admin_service_and_its_changes(start_server: Callable[..., ServerThread]) -> None:
    """With workers, a call reaches any of them: each serves orisun.Admin, and what one changes
    (a deleted user, a new boundary) holds on every other at once."""
    from tests.test_workers import on_every_worker

    server = start_server(workers=2)
    channels = on_every_worker(server)
    try:
        admins = [apb_grpc.AdminStub(each) for each in channels]
        stores = [pb_grpc.EventStoreStub(each) for each in channels]
        user = admins[0].CreateUser(apb.CreateUserRequest(username=f"w-{uuid.uuid4().hex[:8]}", password="pw-w-1",
                                                          roles=["OPERATIONS"]), metadata=auth_metadata(),
                                    timeout=15).user
        read = pb.GetEventsRequest(boundary="orisun_admin")
        for admin, store in zip(admins, stores, strict=True):
            assert admin.GetUserCount(apb.GetUserCountRequest(), metadata=auth_metadata(), timeout=15).count == 2
            store.GetEvents(read, metadata=auth_metadata(user.username, "pw-w-1"), timeout=15)  # cached now
        name = f"adm_w_{uuid.uuid4().hex[:6]}"
        admins[-1].CreateBoundary(apb.CreateBoundaryRequest(name=name), metadata=auth_metadata(), timeout=30)
        admins[-1].DeleteUser(apb.DeleteUserRequest(user_id=user.user_id), metadata=auth_metadata(), timeout=15)
        for admin, store in zip(admins, stores, strict=True):
            with pytest.raises(grpc.RpcError) as raised:
                store.GetEvents(read, metadata=auth_metadata(user.username, "pw-w-1"), timeout=15)
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert admin.GetEventCount(apb.GetEventCountRequest(boundary=name), metadata=auth_metadata(),
                                       timeout=15).count == 0
        for store in stores:
            event = pb.EventToSave(event_id=str(uuid.uuid4()), event_type="T", data="{}")
            stream = pb.SaveStreamQuery(name="s", expected_version=-2)
            store.SaveEvents(pb.SaveEventsRequest(boundary=name, stream=stream, events=[event]),
                             metadata=auth_metadata(), timeout=15)
        assert admins[0].GetEventCount(apb.GetEventCountRequest(boundary=name), metadata=auth_metadata(),
                                       timeout=15).count == len(channels)
    finally:
        for each in channels:
            each.close()


# --- The README's examples ---------------------------------------------------------------------------


def _readme_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## Admin API\n")
    # Up to its first subsection ("Boundaries created at runtime" has examples of its own).
    section = re.split(r"\n##+ ", text[start + 1:])[0]
    return re.findall(r"```bash\n(.*?)```", section, re.S)


def _run_readme(server: ServerThread, blocks: list[str]) -> subprocess.CompletedProcess[str]:
    script = "set -euo pipefail\n" + "\n".join(blocks).replace("localhost:50051", server.address)
    env = {**os.environ, "PATH": f"{Path(grpcurl_path()).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120, env=env)


def test_the_readme_shows_every_rpc() -> None:
    shown = set(re.findall(r"orisun\.Admin/(\w+)", "\n".join(_readme_blocks())))
    assert shown == set(RPCS)


def test_the_readme_examples_run_verbatim(start_server: Callable[..., ServerThread]) -> None:
    """Against the defaults of the README's run command: only the admin boundary, admin:changeit.
    The CreateBoundary example is run by the next test."""
    server = start_server()
    blocks = [b for b in _readme_blocks() if "CreateBoundary" not in b]
    result = _run_readme(server, blocks)
    assert result.returncode == 0, result.stdout + result.stderr
    answers = [json.loads(chunk) for chunk in re.split(r"(?<=})\n(?={)", result.stdout.strip())]
    assert {"success": True} in answers
    assert {"count": "0"} in answers  # GetEventCount of the admin boundary
    names = [user["username"] for answer in answers for user in answer.get("users", [])]
    assert "alice" in names
    users = server.app.users
    assert users is not None
    assert [u.username for u in server.call(users.list())] == ["admin"]  # alice was deleted at the end


def test_the_readme_create_boundary_example_runs_verbatim(start_server: Callable[..., ServerThread]) -> None:
    server = start_server()
    blocks = [b for b in _readme_blocks() if "CreateBoundary" in b]
    assert blocks
    result = _run_readme(server, blocks)
    assert result.returncode == 0, result.stdout + result.stderr
    with server.channel() as channel:
        listed = apb_grpc.AdminStub(channel).ListBoundaries(apb.ListBoundariesRequest(), metadata=auth_metadata(),
                                                            timeout=10)
    assert "orders" in [b.name for b in listed.boundaries]
    with server.stub() as stub:
        stub.GetEvents(pb.GetEventsRequest(boundary="orders"), metadata=auth_metadata(), timeout=10)


def test_event_store_stub_still_works(server: ServerThread) -> None:
    # The Admin service sits beside EventStore on the same port, behind the same interceptor.
    with server.channel() as channel:
        pb_grpc.EventStoreStub(channel).GetEvents(pb.GetEventsRequest(boundary="adm_orders"),
                                                  metadata=auth_metadata(), timeout=10)

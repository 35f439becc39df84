"""The orisun.Admin gRPC service on a real server (issue #15 "An Admin API over gRPC"): wire
compatibility with upstream's orisun.Admin, discovery and auth, event counts and boundaries,
CreateBoundary, every worker serving it, and the README's grpcurl examples of the "Admin API"
section, verbatim. The user RPCs are in tests/test_admin_api_users.py; shared fixtures and helpers
in tests/admin_api_support.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from collections.abc import Callable
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
from tests import admin_api_support
from tests.admin_api_support import BOUNDARIES, RPCS, Admin, event_store_status, new_user
from tests.compat.stubs import PROTOS, compile_descriptor_set
from tests.support import ServerThread, auth_metadata, grpcurl, grpcurl_path

# Fixtures of tests/admin_api_support.py, bound to names of this module so that pytest finds them here.
server = admin_api_support.server


pytestmark = pytest.mark.timeout(90)


ROOT = Path(__file__).resolve().parent.parent


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
    from tests.workers_support import on_every_worker

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


"""Auth on a real server: Basic credentials on every call but health, roles, and the credential cache."""

from __future__ import annotations

import json
from collections.abc import Callable

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from orisun._proto import eventstore_pb2 as pb
from orisun.model import Role
from tests.support import ADMIN, ServerThread, auth_metadata, grpcurl, wait_for

pytestmark = pytest.mark.timeout(90)


def _get_events(server: ServerThread, metadata: list[tuple[str, str]] | None) -> grpc.StatusCode:
    """The status of a GetEvents call."""
    with server.stub() as stub:
        try:
            stub.GetEvents(pb.GetEventsRequest(boundary="orisun_admin"), metadata=metadata, timeout=10)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def _refusal(server: ServerThread, metadata: list[tuple[str, str]] | None) -> tuple[grpc.StatusCode, str]:
    with server.stub() as stub, pytest.raises(grpc.RpcError) as raised:
        stub.GetEvents(pb.GetEventsRequest(boundary="orisun_admin"), metadata=metadata, timeout=10)
    return raised.value.code(), raised.value.details()


PASSED_AUTH = grpc.StatusCode.OK


def test_correct_credentials_pass(server: ServerThread) -> None:
    assert _get_events(server, auth_metadata()) == PASSED_AUTH


@pytest.mark.parametrize(
    ("metadata", "hint"),
    [
        (None, "missing"),
        ([("authorization", "Bearer abc")], "Basic"),
        ([("authorization", "Basic !!!notbase64")], "base64"),
        ([("authorization", "Basic bm9jb2xvbg==")], "username:password"),  # "nocolon"
        (auth_metadata("admin", "wrong"), "invalid username or password"),
        (auth_metadata("nobody-here", "changeit"), "invalid username or password"),
        # Text PostgreSQL cannot hold: no such user can exist (not an INTERNAL error).
        (auth_metadata("ad\x00min", "changeit"), "invalid username or password"),
        (auth_metadata("admin", "change\x00it"), "invalid username or password"),
    ],
    ids=["no-header", "other-scheme", "bad-base64", "no-colon", "wrong-password", "unknown-user", "nul-username",
         "nul-password"],
)
def test_bad_credentials_are_unauthenticated(
    server: ServerThread, metadata: list[tuple[str, str]] | None, hint: str
) -> None:
    code, details = _refusal(server, metadata)
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert hint in details


def test_every_eventstore_rpc_needs_credentials(server: ServerThread) -> None:
    with server.stub() as stub:
        calls = [
            lambda: stub.SaveEvents(pb.SaveEventsRequest(), timeout=10),
            lambda: stub.GetEvents(pb.GetEventsRequest(), timeout=10),
            lambda: list(stub.SubscribeToEvents(pb.CatchUpSubscribeToEventStoreRequest(), timeout=10)),
            lambda: list(stub.CatchUpSubscribeToEvents(pb.CatchUpSubscribeToEventStoreRequest(), timeout=10)),
            lambda: stub.PublishToPubSub(pb.PublishRequest(), timeout=10),
            lambda: list(stub.SubscribeToPubSub(pb.SubscribeRequest(), timeout=10)),
        ]
        for call in calls:
            with pytest.raises(grpc.RpcError) as raised:
                call()
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_health_needs_no_credentials(server: ServerThread) -> None:
    with server.channel() as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "eventstore.EventStore"):
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_grpcurl_lists_services_with_credentials_only(server: ServerThread) -> None:
    listed = grpcurl(server.address, "list")
    assert listed.returncode == 0, listed.stderr
    services = listed.stdout.split()
    assert "eventstore.EventStore" in services
    assert "grpc.health.v1.Health" in services

    described = grpcurl(server.address, "describe", "eventstore.EventStore")
    assert described.returncode == 0, described.stderr
    for rpc in (
        "SaveEvents",
        "GetEvents",
        "SubscribeToEvents",
        "CatchUpSubscribeToEvents",
        "PublishToPubSub",
        "SubscribeToPubSub",
        "ConsumePubSub",
    ):
        assert f"rpc {rpc}" in described.stdout

    refused = grpcurl(server.address, "list", auth=None)
    assert refused.returncode != 0
    assert "Unauthenticated" in refused.stderr


def test_grpcurl_health_check(server: ServerThread) -> None:
    # grpcurl learns the method from reflection, which needs credentials; health itself does not
    # (test_health_needs_no_credentials).
    result = grpcurl(server.address, "grpc.health.v1.Health/Check")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"status": "SERVING"}


def test_configured_admin_credentials_are_used(start_server: Callable[..., ServerThread]) -> None:
    server = start_server(admin_username="root", admin_password="s3cret-pass")
    assert _get_events(server, auth_metadata("root", "s3cret-pass")) == PASSED_AUTH
    assert _get_events(server, auth_metadata(*ADMIN)) == grpc.StatusCode.UNAUTHENTICATED


def test_passwords_are_hashed(server: ServerThread, database: str) -> None:
    with psycopg.connect(database) as conn:
        row = conn.execute("SELECT password_hash, roles FROM orisun_admin.users WHERE username = 'admin'").fetchone()
    assert row is not None
    password_hash, roles = row
    assert password_hash.startswith("$argon2id$")
    assert "changeit" not in password_hash
    assert roles == ["ADMIN"]


def test_a_deleted_user_is_refused_at_once(server: ServerThread) -> None:
    users = server.app.users
    assert users is not None
    server.call(users.create("Op", "op", "op-pass", [Role.OPERATIONS]))
    assert _get_events(server, auth_metadata("op", "op-pass")) == PASSED_AUTH  # now cached
    server.call(users.delete("op"))
    assert _get_events(server, auth_metadata("op", "op-pass")) == grpc.StatusCode.UNAUTHENTICATED


def test_a_changed_password_replaces_the_old_one_at_once(server: ServerThread) -> None:
    users = server.app.users
    assert users is not None
    server.call(users.create("Op", "op", "old-pass", [Role.OPERATIONS]))
    assert _get_events(server, auth_metadata("op", "old-pass")) == PASSED_AUTH
    server.call(users.change_password("op", "new-pass"))
    assert _get_events(server, auth_metadata("op", "old-pass")) == grpc.StatusCode.UNAUTHENTICATED
    assert _get_events(server, auth_metadata("op", "new-pass")) == PASSED_AUTH


def test_a_user_removed_by_another_node_is_forgotten(server: ServerThread, database: str) -> None:
    """A change made outside this server (another node, or by hand) reaches it through NOTIFY."""
    users = server.app.users
    assert users is not None
    server.call(users.create("Op", "op", "op-pass", [Role.OPERATIONS]))
    assert _get_events(server, auth_metadata("op", "op-pass")) == PASSED_AUTH
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("DELETE FROM orisun_admin.users WHERE username = 'op'")
    wait_for(
        lambda: _get_events(server, auth_metadata("op", "op-pass")) == grpc.StatusCode.UNAUTHENTICATED,
        timeout=10,
        what="the deleted user to be refused",
    )


def test_the_admin_user_is_created_once(start_server: Callable[..., ServerThread], database: str) -> None:
    first = start_server()
    first.stop()
    start_server(admin_password="a-different-one")  # must not overwrite the existing admin
    with psycopg.connect(database) as conn:
        row = conn.execute("SELECT count(*) FROM orisun_admin.users").fetchone()
    assert row == (1,)


def test_streaming_rpcs_report_their_status_on_the_stream(server: ServerThread) -> None:
    with server.stub() as stub:
        for name in ("SubscribeToEvents", "CatchUpSubscribeToEvents"):
            with pytest.raises(grpc.RpcError) as raised:
                list(getattr(stub, name)(pb.CatchUpSubscribeToEventStoreRequest(boundary="no_such_boundary"),
                                         metadata=auth_metadata(), timeout=10))
            assert raised.value.code() == grpc.StatusCode.NOT_FOUND, name
            assert "no_such_boundary" in raised.value.details()
        # A streaming call's validation error arrives on the stream too.
        with pytest.raises(grpc.RpcError) as raised:
            list(stub.SubscribeToPubSub(pb.SubscribeRequest(), metadata=auth_metadata(), timeout=10))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "subject" in raised.value.details()

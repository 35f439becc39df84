"""The dashboard's boundaries (issue #15): GET /api/boundaries for everyone, POST /api/boundaries
for ADMIN (Boundaries.create: the schema created and migrated, usable at once), and the pickers'
list (/api/boundaries, the overview) showing a boundary created at runtime without a restart.

The HTTP client and helpers of test_dashboard_http.py; one server for the module.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import grpc
import psycopg
import pytest
from psycopg import sql

from orisun._proto import admin_pb2 as apb
from orisun._proto import admin_pb2_grpc as apb_grpc
from orisun.runtime.postgres import EmbeddedPostgres
from tests.dashboard_client import Client, assert_error, ev, logged_in, ok, read_all, save
from tests.support import ServerThread, auth_metadata, running_server

pytestmark = pytest.mark.timeout(60)

BOUNDARIES = {"orisun_admin": "orisun_admin", "dboundary_orders": "dboundary_orders",
              "dboundary_billing": "dboundary_billing_schema"}


@pytest.fixture(scope="module")
def dash(postgres: EmbeddedPostgres) -> Iterator[ServerThread]:
    with running_server(postgres.conninfo, "test_dash_boundaries", boundaries=BOUNDARIES, admin_port=0) as server:
        yield server


@pytest.fixture(scope="module")
def admin(dash: ServerThread) -> Client:
    return logged_in(dash)


def viewer(dash: ServerThread, roles: list[str]) -> Client:
    username = f"viewer-{uuid.uuid4().hex[:8]}"
    users = dash.app.users
    assert users is not None
    dash.call(users.create("", username, "viewer-password", roles))
    return logged_in(dash, username, "viewer-password")


def listed(client: Client) -> dict[str, dict[str, Any]]:
    body = ok(client.get("/api/boundaries"))
    return {b["name"]: b for b in body["boundaries"]}


@pytest.mark.parametrize("roles", [[], ["OPERATIONS"], ["ADMIN"]], ids=["read-only", "operations", "admin"])
def test_any_user_lists_the_configured_boundaries(dash: ServerThread, roles: list[str]) -> None:
    boundaries = listed(viewer(dash, roles))
    assert list(boundaries) == sorted(BOUNDARIES)
    for name, schema in BOUNDARIES.items():
        boundary = boundaries[name]
        assert datetime.fromisoformat(boundary.pop("created_at")).tzinfo is not None  # recorded in the catalog
        assert boundary == {"name": name, "schema": schema, "description": "", "configured": True,
                            "internal": name == "orisun_admin"}


def test_creating_needs_admin(dash: ServerThread) -> None:
    name = f"dboundary_{uuid.uuid4().hex[:6]}"
    for roles in ([], ["OPERATIONS"]):
        assert_error(viewer(dash, roles).post("/api/boundaries", {"name": name}), 403)
    assert name not in listed(logged_in(dash))


def test_create_a_boundary_usable_at_once_and_listed_everywhere(dash: ServerThread, admin: Client) -> None:
    name = f"dboundary_{uuid.uuid4().hex[:6]}"
    created = ok(admin.post("/api/boundaries", {"name": name, "description": "Made on the dashboard"}), 201)
    assert {k: v for k, v in created.items() if k != "created_at"} == {
        "name": name, "schema": name, "description": "Made on the dashboard", "configured": False}
    assert listed(admin)[name]["description"] == "Made on the dashboard"
    # The pickers' sources: the list above, and the overview's cards.
    overview = ok(admin.get("/api/overview"))
    assert name in [b["boundary"] for b in overview["boundaries"]]
    # Usable at once: over gRPC and on the dashboard's pages.
    save(dash, name, "s-1", [ev("Happened"), ev("Happened")])
    assert len(read_all(dash, name)) == 2
    assert len(ok(admin.get(f"/api/boundaries/{name}/events"))["events"]) == 2
    assert ok(admin.get(f"/api/boundaries/{name}/streams"))["streams"][0]["name"] == "s-1"
    card = next(b for b in ok(admin.get("/api/overview"))["boundaries"] if b["boundary"] == name)
    assert card["events"] == 2
    # And over the Admin API.
    with dash.channel() as channel:
        answer = apb_grpc.AdminStub(channel).GetBoundary(apb.GetBoundaryRequest(name=name), metadata=auth_metadata(),
                                                         timeout=10)
    assert answer.boundary.description == "Made on the dashboard"
    # Taken: 409 with the server's message.
    assert_error(admin.post("/api/boundaries", {"name": name}), 409)
    assert name in admin.post("/api/boundaries", {"name": name}).body["error"]


def test_create_a_boundary_in_a_schema_of_its_own(dash: ServerThread, admin: Client) -> None:
    name = f"dboundary_{uuid.uuid4().hex[:6]}"
    created = ok(admin.post("/api/boundaries", {"name": name, "schema": f"{name}_s"}), 201)
    assert created["schema"] == f"{name}_s"
    save(dash, name, "s-1", [ev("Happened")])
    assert len(read_all(dash, name)) == 1


def test_an_existing_schema_is_refused(dash: ServerThread, admin: Client) -> None:
    name = f"dboundary_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(dash.settings.pg_conninfo or "", autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    response = admin.post("/api/boundaries", {"name": name})
    assert_error(response, 409)
    assert name in response.body["error"]
    assert name not in listed(admin)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "has-dash"}, "name"),
        ({"name": "1digit"}, "name"),
        ({"name": 5}, "name"),
        ({"name": "dboundary_ok", "schema": "bad schema"}, "schema"),
        ({"name": "dboundary_ok", "description": ["not", "text"]}, "description"),
    ],
    ids=["missing", "empty", "dash", "digit", "number", "bad-schema", "description-not-text"],
)
def test_invalid_requests_name_the_field(dash: ServerThread, admin: Client, body: dict[str, Any], field: str) -> None:
    before = listed(admin)
    assert_error(admin.post("/api/boundaries", body), 400, field)
    assert listed(admin) == before


def test_an_unknown_boundary_is_still_not_found(admin: Client) -> None:
    assert_error(admin.get("/api/boundaries/dboundary_never_made/events"), 404)


def test_grpc_unknown_boundary_stays_not_found(dash: ServerThread) -> None:
    with dash.channel() as channel, pytest.raises(grpc.RpcError) as raised:
        apb_grpc.AdminStub(channel).GetBoundary(apb.GetBoundaryRequest(name="dboundary_never_made"),
                                                metadata=auth_metadata(), timeout=10)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND

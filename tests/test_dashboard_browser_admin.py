"""The dashboard's administration pages in a real browser (helpers: tests/dashboard_browser.py,
fixtures: tests/dashboard_browser_fixtures.py): adding a user who can then call the gRPC API and
deleting them so that it refuses them, the ADMIN-only user pages, creating a boundary and picking it
without a reload."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import grpc
import pytest
from playwright.sync_api import Page, expect

from orisun._proto import eventstore_pb2_grpc as pb_grpc
from orisun.model import Role
from tests.dashboard_browser import (
    Seed,
    event,
    grpc_code,
    login,
    pick_boundary,
    read_all,
    save,
    snap,
)
from tests.support import ServerThread, wait_for

pytest_plugins = ["tests.dashboard_browser_fixtures"]
pytestmark = pytest.mark.browser  # conftest installs Chromium first, where it can


@pytest.mark.timeout(120)
def test_add_a_user_who_can_call_grpc_then_delete_them_and_grpc_refuses(
    page: Page, dash_server: ServerThread, stub: pb_grpc.EventStoreStub, seed: Seed, shots: Path
) -> None:
    username, password = f"ops-{uuid.uuid4().hex[:6]}", "Correct-Horse-9"
    login(page, dash_server.dashboard_url)
    page.get_by_test_id("nav-users").click()
    expect(page.locator('[data-testid="user-row"][data-username="admin"]')).to_be_visible()
    # You cannot delete yourself.
    expect(page.locator('[data-testid="user-row"][data-username="admin"]').get_by_test_id("user-delete")).to_be_disabled()

    # Validation errors from the server are shown next to the form.
    page.get_by_test_id("user-add-name").fill("Olu Operator")
    page.get_by_test_id("user-add-username").fill(username)
    page.get_by_test_id("user-add-role-operations").check()
    page.get_by_test_id("user-add-submit").click()
    expect(page.get_by_test_id("user-form-error")).to_contain_text("password")
    expect(page.get_by_test_id("user-add-password")).to_have_class(re.compile(r"\binvalid\b"))

    page.get_by_test_id("user-add-password").fill(password)
    page.get_by_test_id("user-add-submit").click()
    row = page.locator(f'[data-testid="user-row"][data-username="{username}"]')
    expect(row).to_be_visible()
    expect(row).to_contain_text("Olu Operator")
    expect(row).to_contain_text("OPERATIONS")
    expect(page.get_by_test_id("user-form-error")).to_be_hidden()

    # The new user can call the gRPC API (and write: OPERATIONS).
    assert read_all(stub, "orders", auth=(username, password))
    save(stub, "payments", "payment-by-ops", [event("PaymentAuthorized", {"by": username})], auth=(username, password))
    seed.payments_events += 1
    seed.payments_streams += 1

    # The same username again: 409, shown.
    page.get_by_test_id("user-add-name").fill("Someone Else")
    page.get_by_test_id("user-add-username").fill(username)
    page.get_by_test_id("user-add-password").fill("Another-Pass-1")
    page.get_by_test_id("user-add-submit").click()
    expect(page.get_by_test_id("user-form-error")).to_contain_text(username)
    expect(page.get_by_test_id("user-add-username")).to_have_class(re.compile(r"\binvalid\b"))
    snap(page, shots, "users")

    # A new password: the old one stops working, the new one works.
    new_password = "Battery-Staple-7"
    row.get_by_test_id("user-password").click()
    row.get_by_test_id("user-password-input").fill(new_password)
    snap(page, shots, "users-password")
    row.get_by_test_id("user-password-submit").click()
    expect(row.get_by_test_id("user-password-input")).to_be_hidden()
    wait_for(lambda: grpc_code(lambda: read_all(stub, "orders", auth=(username, password)))
             == grpc.StatusCode.UNAUTHENTICATED, 10, "the old password to be refused")
    assert read_all(stub, "orders", auth=(username, new_password))

    # Delete, confirmed in the page: the row goes, and the gRPC API refuses the user.
    row.get_by_test_id("user-delete").click()
    expect(page.get_by_test_id("confirm-dialog")).to_be_visible()
    expect(page.get_by_test_id("confirm-dialog")).to_contain_text(username)
    page.get_by_test_id("confirm-accept").click()
    expect(row).to_have_count(0)
    wait_for(lambda: grpc_code(lambda: read_all(stub, "orders", auth=(username, new_password)))
             == grpc.StatusCode.UNAUTHENTICATED, 10, "the deleted user to be refused")


@pytest.mark.timeout(90)
def test_a_user_without_admin_sees_no_user_management(
    page: Page, dash_server: ServerThread, seed: Seed
) -> None:
    username, password = f"viewer-{uuid.uuid4().hex[:6]}", "Viewer-Pass-3"
    users = dash_server.app.users
    assert users is not None
    dash_server.call(users.create("Vera Viewer", username, password, [Role.OPERATIONS]))
    login(page, dash_server.dashboard_url, username, password)
    expect(page.get_by_test_id("nav-events")).to_be_visible()
    expect(page.get_by_test_id("nav-users")).to_be_hidden()
    status = page.evaluate("fetch('/api/users', {credentials: 'same-origin'}).then((r) => r.status)")
    assert status == 403
    page.goto(f"{dash_server.dashboard_url}/#/users")
    expect(page.get_by_test_id("users-forbidden")).to_be_visible()
    expect(page.get_by_test_id("user-row")).to_have_count(0)
    # Looking is allowed.
    page.get_by_test_id("nav-overview").click()
    expect(page.locator('[data-testid="boundary-card"][data-boundary="orders"]')).to_be_visible()


@pytest.mark.timeout(90)
def test_create_a_boundary_on_the_boundaries_page_and_pick_it_without_reload(
    page: Page, dash_server: ServerThread, stub: pb_grpc.EventStoreStub, shots: Path
) -> None:
    name = f"made_{uuid.uuid4().hex[:6]}"
    login(page, dash_server.dashboard_url)
    page.get_by_test_id("nav-boundaries").click()
    for configured in ("orders", "payments", "orisun_admin"):
        expect(page.locator(f'[data-testid="boundary-row"][data-boundary="{configured}"]')).to_contain_text(
            "ORISUN_PG_SCHEMAS")

    # The server's message for an invalid name is shown next to the form, the field marked.
    page.get_by_test_id("boundary-add-name").fill("not-an-identifier")
    page.get_by_test_id("boundary-add-submit").click()
    expect(page.get_by_test_id("boundary-form-error")).to_contain_text("name")
    expect(page.get_by_test_id("boundary-add-name")).to_have_class(re.compile(r"\binvalid\b"))

    page.get_by_test_id("boundary-add-name").fill(name)
    page.get_by_test_id("boundary-add-description").fill("Made in the browser")
    page.get_by_test_id("boundary-add-submit").click()
    row = page.locator(f'[data-testid="boundary-row"][data-boundary="{name}"]')
    expect(row).to_contain_text("Made in the browser")
    expect(row).to_contain_text("created at runtime")
    expect(page.get_by_test_id("boundary-form-error")).to_be_hidden()
    snap(page, shots, "boundaries")

    # Taken now: the 409's message.
    page.get_by_test_id("boundary-add-name").fill(name)
    page.get_by_test_id("boundary-add-submit").click()
    expect(page.get_by_test_id("boundary-form-error")).to_contain_text(name)

    # Usable at once, and in the pickers of the other pages without a reload.
    save(stub, name, "first-stream", [event("Happened", {"n": 1})])
    page.get_by_test_id("nav-events").click()
    pick_boundary(page, name)
    expect(page.get_by_test_id("event-row")).to_have_count(1)
    page.get_by_test_id("nav-overview").click()
    expect(page.locator(f'[data-testid="boundary-card"][data-boundary="{name}"]')).to_be_visible()


@pytest.mark.timeout(90)
def test_a_user_without_admin_sees_the_boundaries_but_no_form(page: Page, dash_server: ServerThread) -> None:
    username, password = f"looker-{uuid.uuid4().hex[:6]}", "Looker-Pass-3"
    users = dash_server.app.users
    assert users is not None
    dash_server.call(users.create("", username, password, [Role.OPERATIONS]))
    login(page, dash_server.dashboard_url, username, password)
    page.get_by_test_id("nav-boundaries").click()
    expect(page.locator('[data-testid="boundary-row"][data-boundary="orders"]')).to_be_visible()
    expect(page.get_by_test_id("boundary-add-submit")).to_have_count(0)

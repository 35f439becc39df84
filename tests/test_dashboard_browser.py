"""The admin dashboard end to end in a real browser (helpers: tests/dashboard_browser.py, fixtures:
tests/dashboard_browser_fixtures.py): the login and its throttle, the overview numbers against what
was saved over gRPC, logout.

The data pages are in test_dashboard_browser_data.py, users and boundaries in
test_dashboard_browser_admin.py, the pages for operating (issue #16) in
test_dashboard_operating_browser.py.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from orisun import __version__
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from tests.dashboard_browser import (
    Seed,
    event,
    login,
    read_all,
    save,
    snap,
)
from tests.support import ADMIN, ServerThread

pytest_plugins = ["tests.dashboard_browser_fixtures"]
pytestmark = pytest.mark.browser  # conftest installs Chromium first, where it can


@pytest.mark.timeout(90)
def test_login_refuses_a_wrong_password_and_lands_on_the_overview(
    page: Page, dash_server: ServerThread, shots: Path
) -> None:
    base = dash_server.dashboard_url
    page.goto(f"{base}/")
    expect(page).to_have_url(f"{base}/login")
    expect(page.get_by_test_id("login-error")).to_be_hidden()
    snap(page, shots, "login")

    page.get_by_test_id("login-username").fill("admin")
    page.get_by_test_id("login-password").fill("not-the-password")
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("login-error")).to_have_text("Invalid username or password")
    expect(page).to_have_url(f"{base}/login")
    snap(page, shots, "login-error")

    page.get_by_test_id("login-password").fill(ADMIN[1])
    page.get_by_test_id("login-submit").click()
    expect(page).to_have_url(f"{base}/#/overview")
    expect(page.get_by_test_id("current-user")).to_have_text("admin")
    expect(page.get_by_test_id("nav-overview")).to_have_class(re.compile(r"\bactive\b"))
    expect(page.get_by_test_id("nav-users")).to_be_visible()


@pytest.mark.timeout(90)
def test_overview_numbers_match_what_was_saved_over_grpc(
    page: Page, dash_server: ServerThread, stub: pb_grpc.EventStoreStub, seed: Seed, shots: Path
) -> None:
    login(page, dash_server.dashboard_url)
    for boundary in ("orders", "payments"):
        events = read_all(stub, boundary)
        card = page.locator(f'[data-testid="boundary-card"][data-boundary="{boundary}"]')
        expect(card.get_by_test_id("stat-events")).to_have_text(str(len(events)))
        expect(card.get_by_test_id("stat-head")).to_have_text(str(events[-1].position.prepare_position))
        expect(card.get_by_test_id("stat-streams")).to_have_text(str(len({e.stream_id for e in events})))
        expect(card.get_by_test_id("stat-subscribers")).to_have_text(re.compile(r"^\d+$"))
        expect(card.get_by_test_id("rate-chart")).to_be_visible()
    payments = page.locator('[data-testid="boundary-card"][data-boundary="payments"]')
    expect(payments.get_by_test_id("stat-events")).to_have_text(str(seed.payments_events))
    expect(payments.get_by_test_id("stat-streams")).to_have_text(str(seed.payments_streams))
    expect(page.locator('[data-testid="boundary-card"][data-boundary="orisun_admin"]')).to_be_visible()

    expect(page.get_by_test_id("postgres-status")).to_have_text("OK")
    expect(page.get_by_test_id("nats-status")).to_have_text("OK")
    expect(page.get_by_test_id("server-version")).to_have_text(__version__)
    expect(page.get_by_test_id("server-uptime")).to_have_text(re.compile(r"^\d+(d|h|m|s)"))

    # The numbers follow new writes without a reload.
    save(stub, "payments", "payment-9", [event("PaymentAuthorized", {"payment_id": "payment-9"})])
    expect(payments.get_by_test_id("stat-events")).to_have_text(str(seed.payments_events + 1))
    expect(payments.get_by_test_id("stat-streams")).to_have_text(str(seed.payments_streams + 1))
    seed.payments_events += 1
    seed.payments_streams += 1
    snap(page, shots, "overview")


@pytest.mark.timeout(120)
def test_repeated_failed_logins_are_slowed_down_and_the_page_says_how_long_to_wait(
    page: Page, start_server: Callable[..., ServerThread]
) -> None:
    # A server of its own: the throttle also counts per client address, and every test's browser
    # logs in from 127.0.0.1.
    base = start_server().dashboard_url
    page.goto(f"{base}/login")
    page.get_by_test_id("login-username").fill(f"guesser-{uuid.uuid4().hex[:6]}")
    statuses: list[int] = []
    for attempt in range(10):
        page.get_by_test_id("login-password").fill(f"guess-{attempt}")
        with page.expect_response(f"{base}/api/login") as answer:
            page.get_by_test_id("login-submit").click()
        statuses.append(answer.value.status)
        if statuses[-1] == 429:
            break
        expect(page.get_by_test_id("login-error")).to_have_text("Invalid username or password")
    # Five failures pass; then an attempt right after the last failure must wait (at least 1 s).
    assert statuses[:5] == [401] * 5, statuses
    assert statuses[-1] == 429, statuses
    expect(page.get_by_test_id("login-error")).to_contain_text(re.compile(r"try again in \d+:\d\d"))  # a countdown
    expect(page).to_have_url(f"{base}/login")


@pytest.mark.timeout(90)
def test_logout_returns_to_login_and_the_session_is_gone(page: Page, dash_server: ServerThread) -> None:
    base = dash_server.dashboard_url
    login(page, base)
    page.get_by_test_id("logout").click()
    expect(page).to_have_url(f"{base}/login")
    expect(page.get_by_test_id("login-submit")).to_be_visible()
    page.goto(f"{base}/")
    expect(page).to_have_url(f"{base}/login")
    status = page.evaluate("fetch('/api/session', {credentials: 'same-origin'}).then((r) => r.status)")
    assert status == 401

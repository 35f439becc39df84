"""Fixtures of the dashboard's browser tests (helpers: tests/dashboard_browser.py): one server per
test module with the boundaries orders and payments on a fresh database, its seed, Debian's
Chromium, a fresh page per test that fails it on any script error or CSP violation. Loaded by the
test modules with ``pytest_plugins = ["tests.dashboard_browser_fixtures"]`` (never imported, so that
pytest rewrites its asserts).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

from orisun._proto import eventstore_pb2_grpc as pb_grpc
from orisun.config import parse_boundaries
from orisun.runtime.postgres import EmbeddedPostgres
from tests.dashboard_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    MARKER_DATA,
    MARKER_METADATA,
    ORDERS,
    VIEWPORT,
    Seed,
    event,
    save,
)
from tests.support import ServerThread, running_server


@pytest.fixture(scope="module")
def dash_server(postgres: EmbeddedPostgres) -> Iterator[ServerThread]:
    """One server for the module with the boundaries orders and payments, on a fresh database."""
    boundaries = parse_boundaries("orders,payments", "orisun_admin")
    with running_server(postgres.conninfo, "test_dash_browser", boundaries=boundaries) as server:
        yield server


@pytest.fixture(scope="module")
def stub(dash_server: ServerThread) -> Iterator[pb_grpc.EventStoreStub]:
    with dash_server.stub() as client:
        yield client


@pytest.fixture(scope="module")
def seed(stub: pb_grpc.EventStoreStub) -> Seed:
    """Orders and payments saved over gRPC, with one marked event to find by its tag."""
    marker_tag = ("marker", uuid.uuid4().hex[:12])
    result = Seed(marker_tag=marker_tag, marker_id=str(uuid.uuid4()))
    for n in range(1, ORDERS + 1):
        stream = f"order-{n}"
        region = "eu" if n % 2 else "us"
        events = [event("OrderCreated", {"order_id": stream, "customer": f"c-{n}"},
                        {"order_id": stream, "region": region}, {"source": "api"})]
        events += [event("ItemAdded", {"order_id": stream, "sku": f"SKU-{i}", "qty": i}, {"order_id": stream})
                   for i in range(1, 2 * n + 1)]
        if n % 2 == 0:
            events.append(event("OrderPaid", {"order_id": stream, "amount": n * 10}, {"order_id": stream}))
        save(stub, "orders", stream, events)
        result.order_streams.append(stream)
    save(stub, "orders", "order-3", [event("OrderGiftWrapped", MARKER_DATA, {"order_id": "order-3",
                                                                             marker_tag[0]: marker_tag[1]},
                                           MARKER_METADATA, result.marker_id)])
    for n in range(1, 4):
        stream = f"payment-{n}"
        events = [event("PaymentAuthorized", {"payment_id": stream, "amount": n * 100}, {"payment_id": stream}),
                  event("PaymentCaptured", {"payment_id": stream}, {"payment_id": stream})]
        save(stub, "payments", stream, events)
        result.payments_events += len(events)
        result.payments_streams += 1
    return result


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless (.ci/run installs it, and tests/conftest.py does as root)."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: the browser tests need Debian's Chromium (apt-get install -y chromium)",
                    pytrace=False)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dashboard-screenshots")
    print(f"\ndashboard screenshots: {path}")
    return path


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context (no cookies) and page; the test fails on any script error or CSP
    violation the page reports. Failed requests the test provokes (401, 403) are not errors."""
    context = browser.new_context(viewport=VIEWPORT)
    tab = context.new_page()
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error" and "Failed to load resource" not in message.text:
            problems.append(f"console error: {message.text}")

    tab.on("console", on_console)
    tab.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    try:
        yield tab
    finally:
        context.close()
    assert not problems, "the page reported errors:\n" + "\n".join(problems)

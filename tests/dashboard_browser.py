"""Fixtures and helpers of the dashboard's browser tests (test_dashboard_browser*.py): a real
headless Chromium (Debian's ``chromium`` package, driven by Playwright's Python API; no browser is
downloaded) against a real Orisun server.

Each test uses its own browser context (its own cookies). The page fails the test on any script
error or Content-Security-Policy violation (the dashboard runs under ``default-src 'self'``). Every
page is also screenshotted under the pytest temp dir (``dashboard-screenshots*``); the path is
printed. The test modules load this one with ``pytest_plugins``; its module-scoped fixtures are
then per test module (each module has its own server and seed).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, ViewportSize, expect, sync_playwright

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from orisun.config import parse_boundaries
from orisun.runtime.postgres import EmbeddedPostgres
from tests.support import ADMIN, ServerThread, auth_metadata, running_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
VIEWPORT: ViewportSize = {"width": 1280, "height": 800}
UI_TIMEOUT_MS = 15_000  # how long an expectation on the page may take (the pages poll every 2 s)

expect.set_options(timeout=UI_TIMEOUT_MS)
pytestmark = pytest.mark.browser  # conftest installs Chromium first, where it can

# The orders boundary: 8 order streams; order n gets OrderCreated, 2n ItemAdded (72 in all: three
# pages of 25 to page through), and OrderPaid when n is even.
ORDERS = 8
MARKER_DATA = {"order_id": "order-3", "customer": {"id": "c-42", "name": "Ada Lovelace", "vip": True},
               "lines": [{"sku": "BOOK-1", "qty": 2, "price": 12.5}, {"sku": "PEN-7", "qty": 1, "price": 3}],
               "note": "gift wrap, ünïcode & <b>not html</b>"}
MARKER_METADATA = {"source": "web", "trace_id": "4bf92f3577b34da6"}


# --- Fixtures and helpers ----------------------------------------------------------------------


@dataclass
class Seed:
    """What the module's seeding saved over gRPC."""

    marker_tag: tuple[str, str]
    marker_id: str
    payments_events: int = 0
    payments_streams: int = 0
    order_streams: list[str] = field(default_factory=list)


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


def event(event_type: str, data: Any, tags: dict[str, str] | None = None, metadata: Any = None,
          event_id: str | None = None) -> pb.EventToSave:
    return pb.EventToSave(
        event_id=event_id or str(uuid.uuid4()), event_type=event_type,
        data=json.dumps(data, separators=(",", ":"), ensure_ascii=False),
        metadata="" if metadata is None else json.dumps(metadata, separators=(",", ":")),
        tags=[pb.Tag(key=k, value=v) for k, v in (tags or {}).items()],
    )


def save(stub: pb_grpc.EventStoreStub, boundary: str, stream: str, events: list[pb.EventToSave],
         auth: tuple[str, str] = ADMIN) -> pb.WriteResult:
    request = pb.SaveEventsRequest(boundary=boundary, stream=pb.SaveStreamQuery(name=stream, expected_version=-2),
                                   events=events)
    result: pb.WriteResult = stub.SaveEvents(request, metadata=auth_metadata(*auth), timeout=30)
    return result


def read_all(stub: pb_grpc.EventStoreStub, boundary: str, auth: tuple[str, str] = ADMIN,
             **fields: Any) -> list[pb.Event]:
    """Every event of ``boundary`` (matching ``fields`` of GetEventsRequest), oldest first."""
    response = stub.GetEvents(pb.GetEventsRequest(boundary=boundary, count=10_000, **fields),
                              metadata=auth_metadata(*auth), timeout=30)
    return list(response.events)


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


def snap(page: Page, shots: Path, name: str) -> Path:
    """A full-page screenshot of what is on screen now, kept as a test artifact."""
    path = shots / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
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


def login(page: Page, base: str, username: str = ADMIN[0], password: str = ADMIN[1]) -> None:
    page.goto(f"{base}/login")
    page.get_by_test_id("login-username").fill(username)
    page.get_by_test_id("login-password").fill(password)
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("current-user")).to_have_text(username)


def pick_boundary(page: Page, boundary: str) -> None:
    page.get_by_test_id("boundary-select").select_option(boundary)


def grpc_code(call: Callable[[], Any]) -> grpc.StatusCode | None:
    """The status ``call`` fails with, or None when it succeeds."""
    try:
        call()
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        return code
    return None

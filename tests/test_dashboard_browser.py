"""The admin dashboard end to end, in a real headless Chromium (Debian's ``chromium`` package, driven
by Playwright's Python API; no browser is downloaded) against a real Orisun server.

What is checked is what an operator sees: the login, the overview numbers against what was saved
over gRPC, finding an event by tag and reading its pretty-printed data, paging, the live tail
showing a newly saved event without a reload, adding a user who can then call the gRPC API and
deleting them so that it refuses them, the ADMIN-only user pages, logout. Every page is also
screenshotted under the pytest temp dir (``dashboard-screenshots*``); the path is printed.

Each test uses its own browser context (its own cookies). The page fails the test on any script
error or Content-Security-Policy violation (the dashboard runs under ``default-src 'self'``).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, ViewportSize, expect, sync_playwright

from orisun import __version__
from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from orisun.config import parse_boundaries
from orisun.model import Role
from orisun.runtime.postgres import EmbeddedPostgres
from tests.support import ADMIN, ServerThread, StreamReader, auth_metadata, running_server, wait_for

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


# --- Tests -----------------------------------------------------------------------------------------


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


@pytest.mark.timeout(90)
def test_find_an_event_by_tag_and_read_its_pretty_printed_data(
    page: Page, dash_server: ServerThread, seed: Seed, shots: Path
) -> None:
    login(page, dash_server.dashboard_url)
    page.get_by_test_id("nav-events").click()
    pick_boundary(page, "orders")
    expect(page.get_by_test_id("event-row").first).to_be_visible()
    page.get_by_test_id("filter-tags").fill(f"{seed.marker_tag[0]}:{seed.marker_tag[1]}, order_id:order-3")
    page.get_by_test_id("filter-apply").click()
    rows = page.get_by_test_id("event-row")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-event-id", seed.marker_id)
    expect(rows.first).to_contain_text("OrderGiftWrapped")

    rows.first.click()
    detail = page.get_by_test_id("event-detail")
    expect(detail).to_be_visible()
    expect(detail).to_contain_text(seed.marker_id)
    expect(detail).to_contain_text("order-3")
    expect(detail).to_contain_text(f"{seed.marker_tag[0]}:{seed.marker_tag[1]}")
    # Pretty-printed with two spaces (as stored it is compact); the HTML in it shown as text.
    expect(page.get_by_test_id("event-data")).to_have_text(json.dumps(MARKER_DATA, indent=2, ensure_ascii=False))
    expect(page.get_by_test_id("event-metadata")).to_have_text(json.dumps(MARKER_METADATA, indent=2))
    expect(detail.locator("b")).to_have_count(0)
    snap(page, shots, "events-detail")

    # A tag that matches nothing: an empty table, not an error.
    page.get_by_test_id("filter-tags").fill("marker:no-such-value")
    page.get_by_test_id("filter-apply").click()
    expect(page.get_by_test_id("event-row")).to_have_count(0)
    expect(page.get_by_test_id("event-detail")).to_have_count(0)


@pytest.mark.timeout(90)
def test_page_through_events_in_both_directions(
    page: Page, dash_server: ServerThread, stub: pb_grpc.EventStoreStub, seed: Seed
) -> None:
    login(page, dash_server.dashboard_url)
    page.goto(f"{dash_server.dashboard_url}/#/events?boundary=orders&type=ItemAdded&count=25")
    items = [e.event_id for e in read_all(stub, "orders", query=pb.Query(criteria=[
        pb.Criterion(tags=[pb.Tag(key="event_type", value="ItemAdded")])]))]
    assert len(items) > 50, "the seed must fill more than two pages of 25"
    newest = items[::-1]
    rows = page.get_by_test_id("event-row")

    def shows(ids: list[str]) -> None:
        expect(rows).to_have_count(len(ids))
        expect(rows.first).to_have_attribute("data-event-id", ids[0])
        expect(rows.last).to_have_attribute("data-event-id", ids[-1])

    # Newest first by default; Next goes to older events, Previous comes back.
    expect(page.get_by_test_id("direction-toggle")).to_have_text("Newest first")
    shows(newest[:25])
    expect(page.get_by_test_id("page-prev")).to_be_disabled()
    page.get_by_test_id("page-next").click()
    shows(newest[25:50])
    page.get_by_test_id("page-next").click()
    shows(newest[50:75])
    page.get_by_test_id("page-prev").click()
    shows(newest[25:50])
    page.get_by_test_id("page-prev").click()
    shows(newest[:25])
    expect(page.get_by_test_id("page-prev")).to_be_disabled()

    # Oldest first.
    page.get_by_test_id("direction-toggle").click()
    expect(page.get_by_test_id("direction-toggle")).to_have_text("Oldest first")
    shows(items[:25])
    page.get_by_test_id("page-next").click()
    shows(items[25:50])
    page.get_by_test_id("page-prev").click()
    shows(items[:25])


@pytest.mark.timeout(90)
def test_streams_page_lists_streams_and_opens_their_events(
    page: Page, dash_server: ServerThread, stub: pb_grpc.EventStoreStub, seed: Seed, shots: Path
) -> None:
    login(page, dash_server.dashboard_url)
    page.get_by_test_id("nav-streams").click()
    pick_boundary(page, "orders")
    for stream in seed.order_streams:
        last = read_all(stub, "orders", stream=pb.GetStreamQuery(name=stream))[-1]
        row = page.locator(f'[data-testid="stream-row"][data-stream="{stream}"]')
        expect(row.get_by_test_id("stream-version")).to_have_text(str(last.version))
    snap(page, shots, "streams")

    page.get_by_test_id("filter-prefix").fill("order-1")
    page.get_by_test_id("filter-apply").click()
    expect(page.get_by_test_id("stream-row")).to_have_count(1)

    page.locator('[data-testid="stream-row"][data-stream="order-1"]').click()
    expect(page).to_have_url(re.compile(r"#/events\?.*stream=order-1"))
    expect(page.get_by_test_id("filter-stream")).to_have_value("order-1")
    expected = read_all(stub, "orders", stream=pb.GetStreamQuery(name="order-1"))
    expect(page.get_by_test_id("event-row")).to_have_count(len(expected))
    for row in page.get_by_test_id("event-row").all():
        expect(row).to_contain_text("order-1")


@pytest.mark.timeout(90)
def test_live_tail_shows_a_newly_saved_event_without_reload(
    page: Page, dash_server: ServerThread, stub: pb_grpc.EventStoreStub, seed: Seed, shots: Path
) -> None:
    login(page, dash_server.dashboard_url)
    page.get_by_test_id("nav-tail").click()
    pick_boundary(page, "orders")
    expect(page.get_by_test_id("tail-status")).to_have_text("disconnected")
    page.get_by_test_id("tail-start").click()
    expect(page.get_by_test_id("tail-status")).to_have_text("connected")
    expect(page.get_by_test_id("tail-row")).to_have_count(0)

    first_id = str(uuid.uuid4())
    save(stub, "orders", "order-live", [event("OrderCreated", {"order_id": "order-live"}, {"region": "eu"},
                                              event_id=first_id)])
    expect(page.locator(f'[data-testid="tail-row"][data-event-id="{first_id}"]')).to_be_visible()
    second_id = str(uuid.uuid4())
    save(stub, "orders", "order-live", [event("ItemAdded", {"order_id": "order-live", "sku": "X"},
                                              event_id=second_id)])
    rows = page.get_by_test_id("tail-row")
    expect(rows).to_have_count(2)
    expect(rows.first).to_have_attribute("data-event-id", second_id)  # newest on top
    rows.first.click()
    expect(page.get_by_test_id("event-data")).to_have_text(json.dumps({"order_id": "order-live", "sku": "X"},
                                                                      indent=2))
    snap(page, shots, "tail")

    # Stopped: nothing more arrives. Restarted with a type filter: only matching events.
    page.get_by_test_id("tail-stop").click()
    expect(page.get_by_test_id("tail-status")).to_have_text("disconnected")
    page.get_by_test_id("filter-type").fill("OrderShipped")
    page.get_by_test_id("tail-start").click()
    expect(page.get_by_test_id("tail-status")).to_have_text("connected")
    other_id, shipped_id = str(uuid.uuid4()), str(uuid.uuid4())
    save(stub, "orders", "order-live", [event("ItemAdded", {"sku": "Y"}, event_id=other_id)])
    save(stub, "orders", "order-live", [event("OrderShipped", {"carrier": "DHL"}, event_id=shipped_id)])
    expect(page.locator(f'[data-testid="tail-row"][data-event-id="{shipped_id}"]')).to_be_visible()
    # Committed before the shipped event, so it would have been shown by now: it was filtered out.
    expect(page.locator(f'[data-testid="tail-row"][data-event-id="{other_id}"]')).to_have_count(0)
    expect(rows).to_have_count(3)


@pytest.mark.timeout(120)
def test_subscriptions_page_shows_named_subscriptions_and_pubsub_consumers(
    page: Page, dash_server: ServerThread, seed: Seed, shots: Path
) -> None:
    name, consumer = f"projector-{uuid.uuid4().hex[:6]}", f"mailer-{uuid.uuid4().hex[:6]}"
    channel = grpc.insecure_channel(dash_server.address)
    events_call = pb_grpc.EventStoreStub(channel).SubscribeToEvents(
        pb.CatchUpSubscribeToEventStoreRequest(boundary="orders", subscriber_name=name),
        metadata=auth_metadata(), timeout=110)
    subscription: StreamReader[pb.Event] = StreamReader(events_call, channel, f"subscription {name}")
    pubsub_channel = grpc.insecure_channel(dash_server.address)
    pubsub_call = pb_grpc.EventStoreStub(pubsub_channel).SubscribeToPubSub(
        pb.SubscribeRequest(subject="orders.notifications", consumer_name=consumer), metadata=auth_metadata(),
        timeout=110)
    pubsub: StreamReader[pb.SubscribeResponse] = StreamReader(pubsub_call, pubsub_channel, f"consumer {consumer}")
    try:
        # The subscription holds its name once it delivers (the boundary has history).
        subscription.wait_until(lambda events: len(events) > 0, 15, "the first event")
        login(page, dash_server.dashboard_url)
        page.get_by_test_id("nav-subscriptions").click()
        row = page.locator(f'[data-testid="subscription-row"][data-subscriber="{name}"]')
        expect(row).to_be_visible()
        expect(row).to_contain_text("orders")
        expect(page.locator(f'[data-testid="pubsub-row"][data-consumer="{consumer}"]')).to_contain_text(
            "orders.notifications")
        expect(page.locator('[data-testid="live-count"][data-boundary="orders"]')).to_contain_text(
            re.compile(r"[1-9]"))
        snap(page, shots, "subscriptions")
    finally:
        subscription.close()
        pubsub.close()


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
    expect(page.get_by_test_id("login-error")).to_contain_text(re.compile(r"try again in \d+ s"))
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

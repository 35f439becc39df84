"""The dashboard for operating (issue #16) in a real browser (helpers: tests/dashboard_browser.py,
fixtures: tests/dashboard_browser_fixtures.py): the event detail panel at 1024 px, totals, "page N
of M", the search by event id and position and the stream prefix filter, streams by last write,
subscriptions with connection, rate and lag and without internal names, the internal boundary apart,
the default password banner, the login throttle's countdown, the live tail's pause and resume, the
overview's event types and storage."""

from __future__ import annotations

import collections
import json
import re
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from playwright.sync_api import FloatRect, Page, ViewportSize, expect

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from orisun.service import monitor
from tests.dashboard_browser import Seed, event, login, pick_boundary, read_all, save, snap
from tests.support import ADMIN, ServerThread, StreamReader, auth_metadata, wait_for

pytest_plugins = ["tests.dashboard_browser_fixtures"]
pytestmark = pytest.mark.browser  # conftest installs Chromium first, where it can

NARROW: ViewportSize = {"width": 1024, "height": 768}
LONG_TAGS = {"order_id": "order-long", "correlation_id": "corr-" + "9f" * 40,
             "customer_segment": "enterprise-platinum-north-europe-" + "x" * 60}
LONG_METADATA = {"source": "web", "user_agent": "Mozilla/5.0 " + "very-long-unbroken-token-" * 12}


def detail_box(page: Page) -> FloatRect:
    box = page.get_by_test_id("event-detail").bounding_box()
    assert box is not None
    return box


@pytest.mark.timeout(90)
def test_overview_shows_event_types_of_recent_events_and_storage_size(
    page: Page, dash_server: ServerThread, stub: pb_grpc.EventStoreStub, seed: Seed, shots: Path
) -> None:
    events = read_all(stub, "orders")
    recent = events[-monitor.TYPE_SAMPLE:]
    login(page, dash_server.dashboard_url)
    card = page.locator('[data-testid="boundary-card"][data-boundary="orders"]')
    expect(card.get_by_test_id("event-types-scope")).to_have_text(f"of the last {len(recent)} events")
    for event_type, count in collections.Counter(e.event_type for e in recent).items():
        expect(card.locator(f'[data-testid="event-type"][data-type="{event_type}"]')).to_have_attribute(
            "data-events", str(count))
    expect(card.get_by_test_id("stat-storage")).to_have_text(re.compile(r"^\d+(\.\d)? (KB|MB)$"))
    snap(page, shots, "operating-overview")


@pytest.mark.timeout(90)
def test_the_internal_boundary_is_shown_apart_wherever_boundaries_are_listed(
    page: Page, dash_server: ServerThread, seed: Seed
) -> None:
    login(page, dash_server.dashboard_url)
    expect(page.get_by_test_id("internal-cards").locator('[data-boundary="orisun_admin"]')).to_be_visible()
    expect(page.locator('.cards:not([data-testid="internal-cards"]) [data-boundary="orisun_admin"]')).to_have_count(0)
    page.get_by_test_id("nav-events").click()
    select = page.get_by_test_id("boundary-select")
    expect(select.locator("optgroup option")).to_have_text(["orisun_admin"])
    expect(select.locator(":scope > option")).to_have_text(["orders", "payments"])
    page.get_by_test_id("nav-boundaries").click()
    rows = page.get_by_test_id("boundary-row")
    expect(rows.last).to_have_attribute("data-boundary", "orisun_admin")
    expect(rows.last.get_by_test_id("internal-badge")).to_be_visible()


@pytest.mark.timeout(90)
def test_event_detail_at_1024_px_comes_into_view_and_keeps_long_values_inside(
    page: Page, dash_server: ServerThread, stub: pb_grpc.EventStoreStub, seed: Seed, shots: Path
) -> None:
    long_id = str(uuid.uuid4())
    save(stub, "orders", "order-long", [event("OrderAnnotated", {"note": "long"}, LONG_TAGS, LONG_METADATA, long_id)])
    page.set_viewport_size(NARROW)
    login(page, dash_server.dashboard_url)
    page.get_by_test_id("nav-events").click()
    pick_boundary(page, "orders")
    page.get_by_test_id("page-size").select_option("100")
    row = page.locator(f'[data-testid="event-row"][data-event-id="{long_id}"]')
    expect(row).to_be_visible()
    page.mouse.wheel(0, 2000)  # scrolled down the table, as one is after looking through it
    page.locator('[data-testid="event-row"]').nth(40).click()
    expect(page.get_by_test_id("event-detail")).to_be_in_viewport()
    row.scroll_into_view_if_needed()
    row.click()
    detail = page.get_by_test_id("event-detail")
    expect(detail).to_contain_text("OrderAnnotated")
    expect(detail).to_be_in_viewport()
    box = detail_box(page)
    assert box["y"] >= 0 and box["y"] + 100 < NARROW["height"], box
    assert box["x"] + box["width"] <= NARROW["width"], box
    # The id on one line (never wrapped mid-id), with a copy button.
    event_id = page.get_by_test_id("detail-event-id")
    expect(event_id).to_have_text(long_id)
    assert event_id.evaluate("e => getComputedStyle(e).whiteSpace") == "nowrap"
    id_box = event_id.bounding_box()
    assert id_box is not None and id_box["height"] < 30, id_box
    assert event_id.evaluate("e => e.scrollWidth <= e.clientWidth"), "the id is cut off"
    expect(page.get_by_test_id("copy-event-id")).to_be_visible()
    # Tag chips and metadata end inside the panel: they wrap.
    right = box["x"] + box["width"]
    chips = page.get_by_test_id("detail-tags").locator(".tag")
    expect(chips).to_have_count(len(LONG_TAGS))
    for i in range(len(LONG_TAGS)):
        chip = chips.nth(i).bounding_box()
        assert chip is not None and chip["x"] + chip["width"] <= right, (i, chip, box)
        assert chips.nth(i).evaluate("e => e.scrollWidth <= e.clientWidth + 1"), i
    metadata = page.get_by_test_id("event-metadata")
    expect(metadata).to_have_text(json.dumps(LONG_METADATA, indent=2))
    assert metadata.evaluate("e => e.scrollWidth <= e.clientWidth + 1")
    # Created as in the table, not raw ISO 8601.
    expect(page.get_by_test_id("detail-created")).to_have_text(
        re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} UTC$"))
    snap(page, shots, "operating-detail-1024")


@pytest.mark.timeout(90)
def test_events_show_the_total_and_page_n_of_m_and_find_by_id_position_and_prefix(
    page: Page, dash_server: ServerThread, stub: pb_grpc.EventStoreStub, seed: Seed, shots: Path
) -> None:
    events = read_all(stub, "orders")
    total, pages = len(events), -(-len(events) // 25)
    login(page, dash_server.dashboard_url)
    page.get_by_test_id("nav-events").click()
    pick_boundary(page, "orders")
    page.get_by_test_id("page-size").select_option("25")
    expect(page.get_by_test_id("events-total")).to_contain_text(f"{total:,} events")
    expect(page.get_by_test_id("page-label")).to_have_text(f"page 1 of {pages}")
    page.get_by_test_id("page-next").click()
    expect(page.get_by_test_id("page-label")).to_have_text(f"page 2 of {pages}")

    # By position: the page starts there (newest first).
    page.get_by_test_id("goto-input").fill("10")
    page.get_by_test_id("goto-submit").click()
    rows = page.get_by_test_id("event-row")
    expect(rows.first).to_have_attribute("data-event-id", events[9].event_id)
    expect(page.get_by_test_id("page-label")).to_have_text(f"page {(total - 10) // 25 + 1} of {pages}")

    # By event id: its page, its row selected, its detail open.
    page.get_by_test_id("goto-input").fill(seed.marker_id)
    page.get_by_test_id("goto-input").press("Enter")
    expect(page.get_by_test_id("detail-event-id")).to_have_text(seed.marker_id)
    expect(page.locator(f'tr.selected[data-event-id="{seed.marker_id}"]')).to_be_visible()
    page.get_by_test_id("goto-input").fill(str(uuid.uuid4()))
    page.get_by_test_id("goto-submit").click()
    expect(page.get_by_test_id("events-error")).to_contain_text("no event")

    # Streams by prefix: order-1 matches order-1 (and no other of the seed's order streams).
    page.get_by_test_id("stream-mode").select_option("prefix")
    page.get_by_test_id("filter-stream").fill("order-")
    page.get_by_test_id("filter-apply").click()
    matching = [e for e in events if e.stream_id.startswith("order-")]
    expect(page.get_by_test_id("events-total")).to_contain_text(f"{len(matching):,} events")
    expect(rows.first).to_have_attribute("data-event-id", matching[-1].event_id)
    streams = {rows.nth(i).locator("td").nth(1).inner_text() for i in range(rows.count())}
    assert all(name.startswith("order-") for name in streams) and len(streams) > 1, streams
    assert "prefix" in page.url or "stream_prefix" in page.url
    snap(page, shots, "operating-events")


@pytest.mark.timeout(90)
def test_streams_sort_by_last_write(page: Page, dash_server: ServerThread, stub: pb_grpc.EventStoreStub,
                                    seed: Seed) -> None:
    fresh = f"aaa-latest-{uuid.uuid4().hex[:6]}"  # first by name too late: "aaa" sorts first by name
    save(stub, "orders", "order-2", [event("ItemAdded", {"n": 1})])
    save(stub, "orders", fresh, [event("OrderCreated", {"n": 1})])
    login(page, dash_server.dashboard_url)
    page.get_by_test_id("nav-streams").click()
    pick_boundary(page, "orders")
    page.get_by_test_id("streams-order").select_option("last_write")
    rows = page.get_by_test_id("stream-row")
    expect(rows.nth(0)).to_have_attribute("data-stream", fresh)
    expect(rows.nth(1)).to_have_attribute("data-stream", "order-2")
    expect(page.get_by_test_id("streams-order-hint")).to_contain_text("last write")
    page.get_by_test_id("streams-order").select_option("name")
    expect(rows.nth(0)).to_have_attribute("data-stream", fresh)
    expect(rows.nth(1)).not_to_have_attribute("data-stream", "order-2")


@pytest.mark.timeout(120)
def test_subscriptions_show_connection_since_rate_and_lag_without_internal_names(
    page: Page, dash_server: ServerThread, seed: Seed, shots: Path
) -> None:
    name, consumer = f"projector-{uuid.uuid4().hex[:6]}", f"mailer-{uuid.uuid4().hex[:6]}"
    channel = grpc.insecure_channel(dash_server.address)
    events_call = pb_grpc.EventStoreStub(channel).SubscribeToEvents(  # type: ignore[no-untyped-call]
        pb.CatchUpSubscribeToEventStoreRequest(boundary="orders", subscriber_name=name),
        metadata=auth_metadata(), timeout=110)
    subscription: StreamReader[pb.Event] = StreamReader(events_call, channel, f"subscription {name}")
    pubsub_channel = grpc.insecure_channel(dash_server.address)
    pubsub_call = pb_grpc.EventStoreStub(pubsub_channel).SubscribeToPubSub(  # type: ignore[no-untyped-call]
        pb.SubscribeRequest(subject="orders.notifications", consumer_name=consumer), metadata=auth_metadata(),
        timeout=110)
    pubsub: StreamReader[pb.SubscribeResponse] = StreamReader(pubsub_call, pubsub_channel, f"consumer {consumer}")
    closed = False
    try:
        subscription.wait_until(lambda events: len(events) > 0, 15, "the first event")
        login(page, dash_server.dashboard_url)
        page.get_by_test_id("nav-subscriptions").click()
        row = page.locator(f'[data-testid="subscription-row"][data-subscriber="{name}"]')
        expect(row.get_by_test_id("connected")).to_be_visible()
        expect(row.get_by_test_id("since")).to_contain_text(re.compile(r"\d\d:\d\d:\d\d \(\d+ s ago\)"))
        expect(row.get_by_test_id("rate")).to_have_text(re.compile("(/s|\u2013)$"))
        expect(row.get_by_test_id("lag")).to_be_visible()
        consumer_row = page.locator(f'[data-testid="pubsub-row"][data-consumer="{consumer}"]')
        expect(consumer_row.get_by_test_id("connected")).to_be_visible()
        expect(consumer_row).to_contain_text("orders.notifications")
        expect(consumer_row.get_by_test_id("lag")).to_be_visible()
        expect(page.locator("main")).not_to_contain_text("ORISUN_PUBSUB")
        expect(page.get_by_test_id("live-internal").locator('[data-boundary="orisun_admin"]')).to_be_visible()
        expect(page.locator('.live-grid:not([data-testid="live-internal"]) [data-boundary="orisun_admin"]')
               ).to_have_count(0)
        snap(page, shots, "operating-subscriptions")
        subscription.close()
        pubsub.close()
        closed = True
        expect(row).to_have_attribute("data-connected", "false")
        expect(row.get_by_test_id("disconnected")).to_be_visible()
        expect(consumer_row.get_by_test_id("disconnected")).to_be_visible()
    finally:
        if not closed:
            subscription.close()
            pubsub.close()


@pytest.mark.timeout(120)
def test_live_tail_pauses_holding_events_back_and_resumes_showing_them(
    page: Page, dash_server: ServerThread, stub: pb_grpc.EventStoreStub, seed: Seed
) -> None:
    login(page, dash_server.dashboard_url)
    page.get_by_test_id("nav-tail").click()
    pick_boundary(page, "payments")
    page.get_by_test_id("tail-start").click()
    expect(page.get_by_test_id("tail-status")).to_have_text("connected")
    first = str(uuid.uuid4())
    save(stub, "payments", "payment-tail", [event("PaymentAuthorized", {"n": 0}, event_id=first)])
    rows = page.get_by_test_id("tail-row")
    expect(rows).to_have_count(1)
    page.get_by_test_id("tail-pause").click()
    expect(page.get_by_test_id("tail-pause")).to_have_text("Resume")
    held = [str(uuid.uuid4()) for _ in range(2)]
    save(stub, "payments", "payment-tail", [event("PaymentCaptured", {"n": n}, event_id=i) for n, i in enumerate(held)])
    expect(page.get_by_test_id("tail-paused")).to_contain_text("2 new events waiting")
    expect(rows).to_have_count(1)
    page.get_by_test_id("tail-pause").click()
    expect(rows).to_have_count(3)
    expect(rows.first).to_have_attribute("data-event-id", held[-1])
    expect(page.get_by_test_id("tail-skipped")).to_be_hidden()

    # More than the 500 held back: the oldest are skipped, and resuming says how many.
    page.get_by_test_id("tail-pause").click()
    save(stub, "payments", "payment-burst", [event("PaymentCaptured", {"n": n}) for n in range(505)])
    expect(page.get_by_test_id("tail-paused")).to_contain_text("505 new events waiting")
    page.get_by_test_id("tail-pause").click()
    expect(page.get_by_test_id("tail-skipped")).to_contain_text("5 events arrived while paused")
    expect(rows).to_have_count(500)


@pytest.mark.timeout(120)
def test_a_banner_while_the_admin_has_the_default_password(
    page: Page, start_server: Callable[..., ServerThread]
) -> None:
    server = start_server()
    login(page, server.dashboard_url)
    banner = page.get_by_test_id("default-password-banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("default password")
    # Changed on the Users page: the banner goes at once.
    page.get_by_test_id("nav-users").click()
    row = page.locator('[data-testid="user-row"]', has_text=ADMIN[0]).first
    row.get_by_test_id("user-password").click()
    row.get_by_test_id("user-password-input").fill("Another-Secret-9")
    row.get_by_test_id("user-password-submit").click()
    expect(banner).to_be_hidden()
    page.get_by_test_id("nav-events").click()
    expect(banner).to_be_hidden()
    # Set back to the default elsewhere (over the core, as another node would): back on the next page.
    server.call(server.app.users.change_password(ADMIN[0], ADMIN[1]))  # type: ignore[union-attr]
    page.get_by_test_id("nav-overview").click()
    expect(banner).to_be_visible()


@pytest.mark.timeout(120)
def test_the_login_throttle_message_counts_down(page: Page, start_server: Callable[..., ServerThread]) -> None:
    base = start_server().dashboard_url
    page.goto(f"{base}/login")
    page.get_by_test_id("login-username").fill(f"guesser-{uuid.uuid4().hex[:6]}")
    for attempt in range(10):
        page.get_by_test_id("login-password").fill(f"guess-{attempt}")
        with page.expect_response(f"{base}/api/login") as answer:
            page.get_by_test_id("login-submit").click()
        if answer.value.status == 429:
            break
    assert answer.value.status == 429
    message = page.get_by_test_id("login-error")
    expect(message).to_have_text(re.compile(r"^Too many failed logins — try again in \d+:\d\d$"))
    left = int(message.get_attribute("data-left") or "0")
    assert left >= 1
    wait_for(lambda: int(message.get_attribute("data-left") or "0") < left, 10, "the countdown to move")
    expect(message).to_have_text("Too many failed logins. You can try again now.", timeout=70_000)

"""The dashboard's data pages in a real browser (helpers: tests/dashboard_browser.py, fixtures:
tests/dashboard_browser_fixtures.py): finding an event by tag and reading its pretty-printed data,
paging, the streams page, the live tail showing a newly saved event without a reload, the
subscriptions page."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import grpc
import pytest
from playwright.sync_api import Page, expect

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from tests.dashboard_browser import (
    MARKER_DATA,
    MARKER_METADATA,
    Seed,
    event,
    login,
    pick_boundary,
    read_all,
    save,
    snap,
)
from tests.support import ServerThread, StreamReader, auth_metadata

pytest_plugins = ["tests.dashboard_browser_fixtures"]
pytestmark = pytest.mark.browser  # conftest installs Chromium first, where it can


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

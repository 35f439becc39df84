"""Helpers of the dashboard's browser tests (test_dashboard_*browser*.py): a real headless
Chromium (Debian's ``chromium`` package, driven by Playwright's Python API; no browser is
downloaded) against a real Orisun server. The fixtures are in tests/dashboard_browser_fixtures.py,
which the test modules load with ``pytest_plugins`` (its module-scoped fixtures are then per test
module: each has its own server and seed).

Each test uses its own browser context (its own cookies). The page fails the test on any script
error or Content-Security-Policy violation (the dashboard runs under ``default-src 'self'``). Every
page is also screenshotted under the pytest temp dir (``dashboard-screenshots*``); the path is
printed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from playwright.sync_api import Page, ViewportSize, expect

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from tests.support import ADMIN, auth_metadata

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


def snap(page: Page, shots: Path, name: str) -> Path:
    """A full-page screenshot of what is on screen now, kept as a test artifact."""
    path = shots / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


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

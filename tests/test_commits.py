"""Commit routing: which report reaches which consumer, with which arguments (``orisun.service.commits``).

The consumers here record what they are told; the real live feed and subscriptions behind the
same routing are exercised end to end by test_live_feed.py, test_feed_handoff.py and the
subscription suites.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from orisun.model import Event, Position
from orisun.service.commits import Commits, Source

pytestmark = pytest.mark.timeout(30)

SCHEMAS = ("orders", "admin")


class Recorder:
    def __init__(self, name: str, calls: list[tuple[object, ...]]) -> None:
        self.name, self.calls = name, calls


class Feed(Recorder):
    def committed(self, schema: str, events: list[Event] | None = None, head: int | None = None) -> None:
        self.calls.append((self.name, schema, events, head))


class Subscriptions(Recorder):
    def committed(self, schema: str, head: int | None, events: list[Event] | None = None) -> None:
        self.calls.append((self.name, schema, head, events))


def event(position: int) -> Event:
    return Event(event_id=f"id-{position}", event_type="T", data="{}", metadata="{}", tags=(),
                 position=Position(position, position), created_at=datetime(2026, 1, 1, tzinfo=UTC),
                 stream="s", version=position - 1)


@pytest.fixture
def routed() -> tuple[Commits, list[tuple[object, ...]]]:
    calls: list[tuple[object, ...]] = []
    commits = Commits(SCHEMAS)
    commits.route_to(Feed("feed", calls), Subscriptions("subscriptions", calls))
    return commits, calls


def test_the_writer_reaches_the_feed_then_the_subscriptions_with_the_events(
    routed: tuple[Commits, list[tuple[object, ...]]],
) -> None:
    commits, calls = routed
    events = [event(7), event(8)]
    commits.written("orders", events)
    assert calls == [("feed", "orders", events, None), ("subscriptions", "orders", 8, events)]


def test_the_feed_publisher_reaches_only_the_subscriptions(routed: tuple[Commits, list[tuple[object, ...]]]) -> None:
    commits, calls = routed
    events = [event(3)]
    commits.published("orders", events)
    assert calls == [("subscriptions", "orders", 3, events)]


def test_a_notification_reaches_both_with_the_head_only(routed: tuple[Commits, list[tuple[object, ...]]]) -> None:
    commits, calls = routed
    commits.notified({"schema": "orders", "head": 42})
    assert calls == [("feed", "orders", None, 42), ("subscriptions", "orders", 42, None)]


def test_a_reconnected_listener_makes_every_boundary_check(routed: tuple[Commits, list[tuple[object, ...]]]) -> None:
    commits, calls = routed
    commits.notified(None)
    assert calls == [call for schema in SCHEMAS
                     for call in (("feed", schema, None, None), ("subscriptions", schema, None, None))]


@pytest.mark.parametrize("payload", [
    {}, {"schema": "orders"}, {"schema": 1, "head": 2}, {"schema": "orders", "head": "2"},
])
def test_a_malformed_notification_is_ignored(
    routed: tuple[Commits, list[tuple[object, ...]]], payload: dict[str, object]
) -> None:
    commits, calls = routed
    commits.notified(payload)
    assert calls == []


def test_one_signature_for_every_source(routed: tuple[Commits, list[tuple[object, ...]]]) -> None:
    commits, calls = routed
    events = [event(5)]
    commits.committed("orders", 5, events, source=Source.WRITER)
    commits.committed("orders", 5, events, source=Source.FEED)
    commits.committed("orders", 5, source=Source.NOTIFY)
    assert calls == [("feed", "orders", events, None), ("subscriptions", "orders", 5, events),
                     ("subscriptions", "orders", 5, events),
                     ("feed", "orders", None, 5), ("subscriptions", "orders", 5, None)]


def test_reports_before_routing_go_nowhere() -> None:
    commits = Commits(SCHEMAS)
    commits.written("orders", [event(1)])
    commits.notified(None)  # nothing to reach yet, and no error

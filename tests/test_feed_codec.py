"""The live feed's message codec and the Python twin of the SQL tag match, without a server.

The codec must carry an event exactly (data and metadata byte-for-byte, tags in order with
duplicates, the timestamp to the microsecond) in no more bytes than validation allows for an event,
so that every event that can be saved fits in one NATS message. ``matches`` must agree with the SQL
query semantics; tests/test_subscriptions.py checks the two against each other on a real server.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from orisun.messaging.feed import decode, encode
from orisun.model import Criterion, Event, EventToSave, Position, Query, SaveRequest, Tag
from orisun.service import validation
from orisun.service.subscriptions import matches

pytestmark = pytest.mark.timeout(30)


def event(**changes: object) -> Event:
    base: dict[str, object] = {
        "event_id": "0191b93c-5f3c-75c8-92ce-5a3300709178",
        "event_type": "OrderPlaced",
        "data": '{"a": "ünïcödé \\" quote", "n": 1.50}',
        "metadata": "",
        "tags": (Tag("order", "1"), Tag("order", "1"), Tag("", "empty key allowed in storage"), Tag("k", "")),
        "position": Position(7, 5),
        "created_at": datetime(2026, 11, 30, 1, 2, 3, 456789, tzinfo=UTC),
        "stream": "order-1 with spaces/and:colons",
        "version": 4,
    }
    base.update(changes)
    return Event(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"metadata": '{"m": true}', "tags": ()},
        {"data": "[" + ",".join(['"\\"x\\""'] * 1000) + "]"},  # JSON escaping would double this
        {"position": Position(2**53 + 7, 2**53), "version": 2**31 - 1},
        {"created_at": datetime(1999, 1, 1, tzinfo=UTC)},
        {"event_type": "🚀" * 50, "stream": "ß" * 200},
    ],
)
def test_codec_round_trips_an_event_exactly(changes: dict[str, object]) -> None:
    original = event(**changes)
    assert decode(encode(original)) == original


def test_encoded_event_is_no_larger_than_validation_allows() -> None:
    # The largest event validation accepts for a 1 MiB max payload must encode into fewer bytes
    # than that (the feed also keeps room for headers), tags at their maximum count and size.
    limit = 1024 * 1024
    tags = tuple(Tag("k" * validation.MAX_TAG_KEY_BYTES, "v" * validation.MAX_TAG_VALUE_BYTES)
                 for _ in range(validation.MAX_TAGS_PER_EVENT))
    stream = "s" * validation.MAX_STREAM_NAME_BYTES
    event_type = "t" * validation.MAX_EVENT_TYPE_BYTES
    fixed = len(stream) + len(event_type) + validation.EVENT_ENVELOPE_BYTES + sum(
        len(t.key) + len(t.value) + validation.TAG_ENVELOPE_BYTES for t in tags)
    data = '"' + "x" * (limit - fixed - 2) + '"'
    request = SaveRequest("b", stream, -2, None, (EventToSave(
        "0191b93c-5f3c-75c8-92ce-5a3300709178", event_type, data, "", tags),))
    validation.check_save(request, max_event_bytes=limit)  # accepted: exactly at the limit
    big = event(data=data, tags=tags, stream=stream, event_type=event_type)
    assert len(encode(big)) <= limit - 256


def q(*criteria: tuple[tuple[str, str], ...]) -> Query:
    return Query(tuple(Criterion(tuple(Tag(k, v) for k, v in c)) for c in criteria))


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (None, True),
        (q(), True),  # no criteria: everything
        (q(()), True),  # a criterion without tags matches vacuously
        (q((("order", "1"),)), True),
        (q((("order", "2"),)), False),
        (q((("order", "1"), ("k", ""))), True),  # AND inside a criterion
        (q((("order", "1"), ("k", "x"))), False),
        (q((("order", "2"),), (("k", ""),)), True),  # OR across criteria
        (q((("event_type", "OrderPlaced"),)), True),  # the pseudo-tag matches the type
        (q((("eventType", "OrderPlaced"),)), True),
        (q((("event_type", "Other"),)), False),
        (q((("event_type", "OrderPlaced"), ("order", "2"))), False),
    ],
)
def test_matches(query: Query | None, expected: bool) -> None:
    assert matches(query, event()) is expected


def test_stored_event_type_tags_never_match() -> None:
    # A saved tag named event_type is not indexed (storage/sql/boundary/0002_event_tags.sql): a
    # query for that key reads the pseudo-tag, the event's real type, in SQL and here alike.
    tagged = event(tags=(Tag("event_type", "Fake"), Tag("eventType", "Fake")))
    assert not matches(q((("event_type", "Fake"),)), tagged)
    assert not matches(q((("eventType", "Fake"),)), tagged)
    assert matches(q((("eventType", "OrderPlaced"),)), tagged)

"""The transport's converters: the row path GetEvents takes equals the Event path everything else takes."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from orisun import model
from orisun._proto import eventstore_pb2 as pb
from orisun.model import EventRow, Tag, event_from_row
from orisun.transport import convert
from orisun.transport.convert import PageBuilder, add_rows, event_to_proto
from tests.support import event_entry

MOMENT = datetime(2026, 12, 4, 21, 0, 0, 123456, tzinfo=UTC)
MICROS = int(MOMENT.timestamp()) * 1_000_000 + MOMENT.microsecond


def _rows(sizes: tuple[int, ...] = (0, 1, 90, 127, 128, 16_000, 16_400, 300_000)) -> list[EventRow]:
    tag_sets = [[], [["k", "v"]], [["k", "v"], ["n", "x"]], [["k", "v"], ["k", "v"]], [["é", "\u2603"], ["", ""]]]
    return [
        (n + 1, n + 3, f"stream-{n}", n, str(uuid.uuid4()), "Thing", json.dumps({"pad": "p" * size}),
         "" if n % 2 else '{"m": 1}', json.dumps(tag_sets[n % len(tag_sets)]),
         MICROS + n * 999_999 - (n % 2) * 10**12)
        for n, size in enumerate(sizes)
    ]


def test_rows_convert_as_events_do() -> None:
    rows = _rows()
    for _ in range(2):  # the second time with the tags' bytes cached
        response = pb.GetEventsResponse()
        add_rows(response, rows)
        assert list(response.events) == [event_to_proto(event_from_row(row)) for row in rows]
    assert event_from_row(rows[0]).created_at == MOMENT


def test_the_tags_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(convert, "_TAGS_BYTES", model.TextCache(max_entries=3))
    monkeypatch.setattr(model, "_TAGS", model.TextCache(max_entries=3))
    rows = [(n + 1, n + 1, "s", n, str(uuid.uuid4()), "T", "{}", "", json.dumps([["n", str(n)]]), MICROS)
            for n in range(10)]
    rows.append((11, 11, "s", 10, str(uuid.uuid4()), "T", "{}", "", json.dumps([["x", "y" * 600]]), MICROS))
    response = pb.GetEventsResponse()
    add_rows(response, rows)
    assert [[(t.key, t.value) for t in e.tags] for e in response.events] == [
        [("n", str(n))] for n in range(10)] + [[("x", "y" * 600)]]
    assert 0 < len(convert._TAGS_BYTES) <= 3
    assert all(len(text) <= convert._TAGS_BYTES.max_chars for text in convert._TAGS_BYTES)
    for _ in range(2):  # the events made from rows (subscriptions), parsed and then cached
        assert [event_from_row(row).tags for row in rows] == [(Tag("n", str(n)),) for n in range(10)] + [
            (Tag("x", "y" * 600),)]
    assert 0 < len(model._TAGS) <= 3
    assert all(len(text) <= model._TAGS.max_chars for text in model._TAGS)


def test_a_page_in_chunks_is_the_response_with_all_events() -> None:
    rows = _rows()
    builder = PageBuilder()
    assert builder.add(rows[:3]) == len(builder.page(False))
    builder.add([])
    size = builder.add(rows[3:])
    expected = pb.GetEventsResponse(events=[event_to_proto(event_from_row(row)) for row in rows])
    assert size == expected.ByteSize() == len(builder.page(False))
    assert pb.GetEventsResponse.FromString(builder.page(False)) == expected
    expected.truncated = True
    assert pb.GetEventsResponse.FromString(builder.page(True)) == expected
    assert PageBuilder().page(False) == b""


@pytest.mark.parametrize("first", [0, 2, 5])
def test_cut_keeps_the_longest_prefix_that_fits(first: int) -> None:
    """Whatever the chunk the limit falls in, the page keeps exactly the events that fit."""
    rows = _rows()
    sizes = [event_entry(event_from_row(row))[1] for row in rows]
    for limit in range(sum(sizes[:first]) if first else 1, sum(sizes) + 1, 97):
        builder = PageBuilder()
        if first:
            builder.add(rows[:first])
        if builder.add(rows[first:]) <= limit:
            continue
        kept = builder.cut(limit)
        fits = max(1, max(k for k in range(len(rows) + 1) if sum(sizes[:k]) <= limit))
        assert kept == fits, limit
        page = builder.page(True)
        assert len(page) == sum(sizes[:kept]) + 2
        assert [e.event_id for e in pb.GetEventsResponse.FromString(page).events] == [r[4] for r in rows[:kept]]


def test_a_lone_first_event_over_the_limit_is_kept() -> None:
    builder = PageBuilder()
    assert builder.add(_rows((1000,))) > 100
    assert builder.cut(100) == 1

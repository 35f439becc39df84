"""The transport's converters: the row path GetEvents takes equals the Event path everything else takes."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

from orisun._proto import eventstore_pb2 as pb
from orisun.model import EventRow, event_from_row
from orisun.transport.convert import event_to_proto, keep_page, row_adder


def _rows() -> list[EventRow]:
    moment = datetime(2026, 12, 4, 21, 0, 0, 123456, tzinfo=UTC)
    return [
        (n + 1, n + 3, f"stream-{n}", n, str(uuid.uuid4()), "Thing", json.dumps({"pad": "p" * size}),
         "" if n % 2 else '{"m": 1}', json.dumps([["k", "v"], ["n", str(n)]][: n % 3]),
         moment + timedelta(microseconds=n))
        for n, size in enumerate((0, 1, 90, 127, 128, 16_000, 16_400, 300_000))
    ]


def test_rows_convert_as_events_do() -> None:
    response = pb.GetEventsResponse()
    encode = row_adder(response)
    rows = _rows()
    entries = [encode(row) for row in rows]
    assert list(response.events) == [event_to_proto(event_from_row(row)) for row in rows]
    # The sizes add up to the serialized response, lengths' varints included.
    assert sum(size for _, size in entries) == response.ByteSize()
    assert [message for message, _ in entries] == list(response.events)


def test_keep_page_drops_the_event_that_did_not_fit() -> None:
    response = pb.GetEventsResponse()
    encode = row_adder(response)
    rows = _rows()
    for row in rows:
        encode(row)
    keep_page(response, 3)
    assert [e.event_id for e in response.events] == [row[4] for row in rows[:3]]
    keep_page(response, 3)
    assert len(response.events) == 3

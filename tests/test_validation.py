"""The JSON syntax check of SaveEvents' data and metadata, with its one shared decoder, and the
fast check of a valid event beside the full one that names the problem."""

from __future__ import annotations

import dataclasses
import json

import pytest

from orisun.errors import InvalidArgument
from orisun.model import EventToSave, SaveRequest, Tag
from orisun.service.validation import (
    MAX_EVENT_TYPE_BYTES,
    MAX_TAG_KEY_BYTES,
    MAX_TAG_VALUE_BYTES,
    MAX_TAGS_PER_EVENT,
    _check_event,
    _event_size,
    _json,
    _reject_constant,
    check_save,
)


@pytest.mark.parametrize("text", ["{}", " [1, 2.5e300, 99999999999999999999999] ", '"x"', "null", "\ufeff{}", "[1,",
                                  "{} x", "NaN", "-Infinity", "{\"a\": Infinity}", "", "'a'"])
def test_the_check_answers_as_json_loads_with_its_arguments_did(text: str) -> None:
    try:
        json.loads(text, parse_constant=_reject_constant, parse_int=str, parse_float=str)
        expected = None
    except ValueError as exc:
        expected = f"data: must be JSON text ({exc})"
    if expected is None:
        _json("data", text)
    else:
        with pytest.raises(InvalidArgument) as raised:
            _json("data", text)
        assert expected in str(raised.value)


# --- SaveEvents' fast check of a valid event agrees with the full one (issue #13) ------------------

_ID = "0191b93c-5f3c-75c8-92ce-5a3300709178"
_EVENTS = [
    EventToSave(_ID, "Type", "{}", "", ()),
    EventToSave(_ID.upper(), "Tÿpe", '{"é": 1}', '{"m": [1, 2]}', (Tag("k", "v"), Tag("ķ", ""))),
    EventToSave("not-a-uuid", "Type", "{}", "", ()),
    EventToSave(_ID, "", "{}", "", ()),
    EventToSave(_ID, "T\x00", "{}", "", ()),
    EventToSave(_ID, "x" * (MAX_EVENT_TYPE_BYTES + 1), "{}", "", ()),
    EventToSave(_ID, "é" * (MAX_EVENT_TYPE_BYTES // 2 + 1), "{}", "", ()),  # few characters, too many bytes
    EventToSave(_ID, "Type", "{", "", ()),
    EventToSave(_ID, "Type", "\ufeff{}", "", ()),
    EventToSave(_ID, "Type", '{"a": "\x00"}', "", ()),
    EventToSave(_ID, "Type", "NaN", "", ()),
    EventToSave(_ID, "Type", "{}", "{", ()),
    EventToSave(_ID, "Type", "{}", "\ufeff{}", ()),
    EventToSave(_ID, "Type", "{}", "", (Tag("", "v"),)),
    EventToSave(_ID, "Type", "{}", "", (Tag("k\x00", "v"),)),
    EventToSave(_ID, "Type", "{}", "", (Tag("k", "v\x00"),)),
    EventToSave(_ID, "Type", "{}", "", (Tag("k" * (MAX_TAG_KEY_BYTES + 1), "v"),)),
    EventToSave(_ID, "Type", "{}", "", (Tag("k", "v" * (MAX_TAG_VALUE_BYTES + 1)),)),
    EventToSave(_ID, "Type", "{}", "", tuple(Tag("k", "v") for _ in range(MAX_TAGS_PER_EVENT + 1))),
    EventToSave(_ID, "Type", '"' + "d" * 900 + '"', "", ()),  # too large for max_event_bytes below
    EventToSave(_ID, "Type", "[" * 100_000, "", ()),  # nested too deeply
]


@pytest.mark.parametrize("event", _EVENTS, ids=range(len(_EVENTS)))
def test_the_fast_check_of_an_event_passes_exactly_what_the_full_one_passes(event: EventToSave) -> None:
    stream_bytes, limit = 10, 1_000
    size = _event_size(event, event.event_id.lower(), {})
    try:
        _check_event(0, event, event.event_id.lower(), {}, stream_bytes, limit)
        passed = True
    except InvalidArgument:
        passed = False
    assert (size >= 0 and size + stream_bytes <= limit) == passed
    if passed:  # the same size as the full check counts
        too_small = size + stream_bytes - 1
        with pytest.raises(InvalidArgument, match=f"is about {size + stream_bytes} bytes"):
            _check_event(0, event, event.event_id.lower(), {}, stream_bytes, too_small)


def test_a_repeated_event_id_is_refused_by_both_checks() -> None:
    event = EventToSave(_ID, "Type", "{}", "", ())
    assert _event_size(event, _ID, {_ID: 0}) < 0
    request = SaveRequest("b", "s", -2, None, (event, dataclasses.replace(event, event_id=_ID.upper())))
    with pytest.raises(InvalidArgument, match=r"events\[1\]\.event_id: .* repeats events\[0\]\.event_id"):
        check_save(request, max_event_bytes=1_000_000)

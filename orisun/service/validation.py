"""Input rules for SaveEvents, GetEvents and subscriptions (docs/contract.md §3 to §5).

Every violation is an ``InvalidArgument`` whose message starts with the field's path, as a
client wrote it (``events[3].event_id``), so that a client can tell exactly what to fix.
"""

from __future__ import annotations

import json
import re
from typing import NoReturn

from orisun.errors import InvalidArgument, quoted
from orisun.model import ANY_VERSION, EventToSave, Query, ReadRequest, SaveRequest

# Documented in the README ("Limits"). Keys and values sit in a B-tree index whose entries must
# stay below PostgreSQL's ~2.7 kB limit, hence the tag sizes.
MAX_EVENTS_PER_WRITE = 10_000
# A boundary is configured as a PostgreSQL identifier (config.validate_identifier), so no longer
# name can exist; refusing it here keeps it out of every later message.
MAX_BOUNDARY_BYTES = 63
MAX_STREAM_NAME_BYTES = 512
MAX_EVENT_TYPE_BYTES = 512
MAX_TAGS_PER_EVENT = 100
MAX_TAG_KEY_BYTES = 256
MAX_TAG_VALUE_BYTES = 1024
MAX_CRITERIA = 100
MAX_TAGS_PER_CRITERION = 32
DEFAULT_COUNT = 100
MAX_COUNT = 10_000
# What an event adds besides its fields in its live-feed message (id, positions, time and framing,
# about 90 bytes, plus room for the NATS headers): every event that can be saved must fit into one
# NATS message (messaging/feed.py). Each tag adds its key's and value's length prefixes.
EVENT_ENVELOPE_BYTES = 512
TAG_ENVELOPE_BYTES = 4

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def _fail(field: str, problem: str) -> NoReturn:
    raise InvalidArgument(field, problem)


def _text(field: str, value: str, *, max_bytes: int, required: bool = True) -> int:
    """Check a string field; returns its size in bytes."""
    size = len(value.encode())
    if required and not value:
        _fail(field, "is required")
    if size > max_bytes:
        _fail(field, f"is {size} bytes, more than the {max_bytes} allowed")
    if "\x00" in value:
        _fail(field, "must not contain NUL characters")
    return size


def is_storable(value: str) -> bool:
    """Whether PostgreSQL can store ``value`` as text: no NUL, and valid UTF-8 (no lone surrogate)."""
    if "\x00" in value:
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def check_storable(field: str, value: str) -> None:
    if not is_storable(value):
        _fail(field, "must be text without NUL characters or lone surrogates")


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


# Syntax only: numbers stay text, so no integer-size limit and no float rounding matters. One
# decoder for every check: json.loads with these arguments builds a new one per call, which was
# ~1.3 us of the ~2 us a small event's check took.
_SYNTAX = json.JSONDecoder(parse_constant=_reject_constant, parse_int=str, parse_float=str)


def _json(field: str, value: str) -> None:
    if "\x00" in value:
        _fail(field, "must not contain NUL characters")
    try:
        if value.startswith("\ufeff"):
            json.loads(value)  # json's own message for a byte order mark, which decode() does not check
        _SYNTAX.decode(value)
    except ValueError as exc:
        _fail(field, f"must be JSON text ({exc})")
    except RecursionError:
        _fail(field, "is JSON nested too deeply to check (about 1,000 levels at most)")


def check_boundary(boundary: str, field: str = "boundary") -> None:
    _text(field, boundary, max_bytes=MAX_BOUNDARY_BYTES)


def check_query(field: str, query: Query | None) -> None:
    if query is None:
        return
    if len(query.criteria) > MAX_CRITERIA:
        _fail(f"{field}.criteria", f"has {len(query.criteria)} criteria, more than the {MAX_CRITERIA} allowed")
    for c, criterion in enumerate(query.criteria):
        if len(criterion.tags) > MAX_TAGS_PER_CRITERION:
            _fail(f"{field}.criteria[{c}].tags", f"has more than the {MAX_TAGS_PER_CRITERION} tags allowed")
        for t, tag in enumerate(criterion.tags):
            _text(f"{field}.criteria[{c}].tags[{t}].key", tag.key, max_bytes=MAX_TAG_KEY_BYTES)
            _text(f"{field}.criteria[{c}].tags[{t}].value", tag.value, max_bytes=MAX_TAG_VALUE_BYTES, required=False)


def check_save(request: SaveRequest, *, max_event_bytes: int) -> None:
    """Validate a SaveEvents request; ``max_event_bytes`` is the NATS max payload."""
    check_boundary(request.boundary)
    stream_bytes = _text("stream.name", request.stream, max_bytes=MAX_STREAM_NAME_BYTES)
    if request.expected_version < ANY_VERSION:
        _fail("stream.expected_version", f"must be -1 (no stream yet), -2 (any) or a version >= 0, "
              f"not {request.expected_version}")
    check_query("stream.subsetQuery", request.subset)
    if not request.events:
        _fail("events", "at least one event is required")
    if len(request.events) > MAX_EVENTS_PER_WRITE:
        _fail("events", f"has {len(request.events)} events, more than the {MAX_EVENTS_PER_WRITE} allowed per call")
    seen: dict[str, int] = {}
    for i, event in enumerate(request.events):
        lowered = event.event_id.lower()
        size = _event_size(event, lowered, seen)
        if size < 0 or size + stream_bytes > max_event_bytes:
            _check_event(i, event, lowered, seen, stream_bytes, max_event_bytes)  # raises, naming the field
        seen[lowered] = i


def _size(value: str) -> int:
    # str.isascii() is O(1) in CPython: an ASCII string is measured without encoding a copy.
    return len(value) if value.isascii() else len(value.encode())


def _event_size(event: EventToSave, lowered: str, seen: dict[str, int]) -> int:
    """The event's size as ``_check_event`` counts it (without its stream name) when the event
    passes every check of ``_check_event`` but the size limit; -1 otherwise.

    The common case, a valid event, in few steps: no field paths or messages built. An event
    this refuses is checked again by ``_check_event``, which says why (the first problem, in the
    order of the fields), so the two must agree on what passes.
    """
    event_type, data, metadata, tags = event.event_type, event.data, event.metadata, event.tags
    if (not _UUID.fullmatch(event.event_id) or lowered in seen or not event_type
            or "\x00" in event_type or "\x00" in data or "\x00" in metadata or len(tags) > MAX_TAGS_PER_EVENT):
        return -1
    type_bytes = _size(event_type)
    if type_bytes > MAX_EVENT_TYPE_BYTES:
        return -1
    try:
        if data.startswith("\ufeff") or metadata.startswith("\ufeff"):
            return -1
        _SYNTAX.decode(data)
        if metadata:
            _SYNTAX.decode(metadata)
    except (ValueError, RecursionError):
        return -1
    size = EVENT_ENVELOPE_BYTES + type_bytes + _size(data) + _size(metadata)
    for tag in tags:
        key, value = tag.key, tag.value
        key_bytes, value_bytes = _size(key), _size(value)
        if (not key or key_bytes > MAX_TAG_KEY_BYTES or value_bytes > MAX_TAG_VALUE_BYTES
                or "\x00" in key or "\x00" in value):
            return -1
        size += key_bytes + value_bytes + TAG_ENVELOPE_BYTES
    return size


def _check_event(i: int, event: EventToSave, lowered: str, seen: dict[str, int], stream_bytes: int,
                 max_event_bytes: int) -> None:
    """Raise InvalidArgument for the event's first problem, naming its field."""
    field = f"events[{i}]"
    if not _UUID.fullmatch(event.event_id):
        _fail(f"{field}.event_id",
              f"{quoted(event.event_id)} is not a UUID (like 0191b93c-5f3c-75c8-92ce-5a3300709178)")
    if lowered in seen:
        _fail(f"{field}.event_id", f"{event.event_id} repeats events[{seen[lowered]}].event_id")
    size = stream_bytes + EVENT_ENVELOPE_BYTES
    size += _text(f"{field}.event_type", event.event_type, max_bytes=MAX_EVENT_TYPE_BYTES)
    _json(f"{field}.data", event.data)
    if event.metadata:
        _json(f"{field}.metadata", event.metadata)
    size += len(event.data.encode()) + len(event.metadata.encode())
    if len(event.tags) > MAX_TAGS_PER_EVENT:
        _fail(f"{field}.tags", f"has {len(event.tags)} tags, more than the {MAX_TAGS_PER_EVENT} allowed")
    for t, tag in enumerate(event.tags):
        size += _text(f"{field}.tags[{t}].key", tag.key, max_bytes=MAX_TAG_KEY_BYTES)
        size += _text(f"{field}.tags[{t}].value", tag.value, max_bytes=MAX_TAG_VALUE_BYTES, required=False)
        size += TAG_ENVELOPE_BYTES
    if size > max_event_bytes:
        _fail(field, f"is about {size} bytes, more than the {max_event_bytes} a live subscriber can receive "
              "(ORISUN_NATS_MAX_PAYLOAD)")


def check_stream_subscription(stream: str, after_version: int) -> None:
    """CatchUpSubscribeToStream's own fields: the stream's name as SaveEvents takes it, and an
    exclusive start version (-1: from the stream's first event, version 0)."""
    _text("stream", stream, max_bytes=MAX_STREAM_NAME_BYTES)
    if after_version < -1:
        _fail("afterVersion", f"must be -1 (from the start) or a version >= 0, not {after_version}")


def check_read(request: ReadRequest) -> None:
    check_boundary(request.boundary)
    if not 0 <= request.count <= MAX_COUNT:
        _fail("count", f"must be at most {MAX_COUNT}, not {request.count}")
    if request.stream is not None:
        _text("stream.name", request.stream, max_bytes=MAX_STREAM_NAME_BYTES)
        if request.from_version < 0:
            _fail("stream.from_version", f"must be >= 0, not {request.from_version}")
        check_query("stream.subsetQuery", request.stream_subset)
    check_query("query", request.query)

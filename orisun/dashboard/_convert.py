"""The dashboard's conversions: query parameters to core requests, core objects to JSON."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from multidict import MultiMapping

from orisun.errors import InvalidArgument
from orisun.model import EVENT_TYPE_TAG, Criterion, Direction, Event, Position, Query, ReadRequest, Tag, User
from orisun.service import validation
from orisun.service.monitor import PrefixFilter

DEFAULT_COUNT = 50
MAX_COUNT = 500
MAX_POSITION = 2**63 - 1  # positions are PostgreSQL bigints
QUOTE_CHARS = 64  # how much of a client's value an error message quotes
# ASCII digits only: str.isdigit() also accepts '²' and '٣', which int() then refuses or misreads.
_DIGITS = re.compile(r"[0-9]{1,19}")


def quote(text: str) -> str:
    """``text`` for an error message: its repr (control characters escaped), at most QUOTE_CHARS long."""
    return repr(text[:QUOTE_CHARS]) + ("..." if len(text) > QUOTE_CHARS else "")


def parse_int(field: str, text: str, low: int, high: int) -> int:
    """A query parameter that must be a whole number from ``low`` to ``high``, in ASCII digits."""
    if not (_DIGITS.fullmatch(text) and low <= int(text) <= high):
        raise InvalidArgument(field, f"{quote(text)} is not a number from {low} to {high}")
    return int(text)


def check_text(field: str, text: str, max_bytes: int, what: str = "") -> None:
    """Text a client sends for the core: storable (no NUL, no lone surrogate) and not too long.

    Checked here, with the parameter's own name, so that the answer names what the client wrote
    and so that the live tail can refuse it before it starts streaming (the core would only find
    out once the stream had been answered with 200)."""
    subject = f"{what} " if what else ""
    if not validation.is_storable(text):
        raise InvalidArgument(field, f"{subject}must be text without NUL characters or lone surrogates")
    if len(text.encode()) > max_bytes:
        raise InvalidArgument(field, f"{subject}is longer than {max_bytes} bytes")


def event_json(event: Event) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "event_type": event.event_type,
        "stream": event.stream,
        "version": event.version,
        "position": {"commit": event.position.commit, "prepare": event.position.prepare},
        "created_at": event.created_at.isoformat(),
        "tags": [{"key": t.key, "value": t.value} for t in event.tags],
        "data": event.data,
        "metadata": event.metadata,
    }


def user_json(user: User) -> dict[str, Any]:
    return {"id": user.id, "name": user.name, "username": user.username, "roles": sorted(user.roles)}


def parse_cursor(text: str, field: str = "after") -> Position:
    """A cursor ``commit:prepare`` as the API hands them out."""
    commit, sep, prepare = text.partition(":")
    if not (sep and _DIGITS.fullmatch(commit) and _DIGITS.fullmatch(prepare)
            and int(commit) <= MAX_POSITION and int(prepare) <= MAX_POSITION):
        raise InvalidArgument(field, f"{quote(text)} is not a cursor like 12:12 (commit:prepare)")
    return Position(int(commit), int(prepare))


def _tags(params: MultiMapping[str]) -> list[Tag]:
    tags = []
    event_type = params.get("type", "")
    if event_type:
        check_text("type", event_type, validation.MAX_TAG_VALUE_BYTES)
        tags.append(Tag(EVENT_TYPE_TAG, event_type))
    for text in params.getall("tag", []):
        key, sep, value = text.partition(":")
        if not (sep and key):
            raise InvalidArgument("tag", f"{quote(text)} is not key:value")
        check_text("tag", key, validation.MAX_TAG_KEY_BYTES, "the key")
        check_text("tag", value, validation.MAX_TAG_VALUE_BYTES, "the value")
        tags.append(Tag(key, value))
    if len(tags) > validation.MAX_TAGS_PER_CRITERION:
        raise InvalidArgument("tag", f"at most {validation.MAX_TAGS_PER_CRITERION} filters (type and tag), "
                              f"not {len(tags)}")
    return tags


def tail_query(params: MultiMapping[str]) -> Query | None:
    """The event type and tags of a request, as one criterion (all must match)."""
    tags = _tags(params)
    return Query((Criterion(tuple(tags)),)) if tags else None


def stream_filter(params: Mapping[str, str]) -> str | None:
    stream = params.get("stream") or None
    if stream is not None:
        check_text("stream", stream, validation.MAX_STREAM_NAME_BYTES)
    return stream


def prefix_filter(params: MultiMapping[str]) -> PrefixFilter | None:
    """``stream_prefix`` (streams whose name starts with it) with the type and tags of the request."""
    prefix = params.get("stream_prefix") or None
    if prefix is None:
        return None
    check_text("stream_prefix", prefix, validation.MAX_STREAM_NAME_BYTES)
    tags = _tags(params)
    event_type = next((t.value for t in tags if t.key == EVENT_TYPE_TAG), None)
    return PrefixFilter(prefix, event_type, tuple((t.key, t.value) for t in tags if t.key != EVENT_TYPE_TAG))


def read_request(boundary: str, params: MultiMapping[str]) -> ReadRequest:
    direction_text = params.get("direction", "asc").upper()
    if direction_text not in Direction.__members__:
        raise InvalidArgument("direction", f"{quote(params.get('direction', ''))} is not asc or desc")
    count = parse_int("count", params.get("count", str(DEFAULT_COUNT)), 1, MAX_COUNT)
    after = params.get("after")
    return ReadRequest(
        boundary=boundary,
        stream=stream_filter(params),
        query=tail_query(params),
        after=parse_cursor(after) if after else None,
        count=count,
        direction=Direction(direction_text),
    )

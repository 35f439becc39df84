"""The dashboard's conversions: query parameters to core requests, core objects to JSON."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from multidict import MultiMapping

from orisun.errors import InvalidArgument
from orisun.model import EVENT_TYPE_TAG, Criterion, Direction, Event, Position, Query, ReadRequest, Tag, User

DEFAULT_COUNT = 50
MAX_COUNT = 500


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
    if not (sep and commit.isdigit() and prepare.isdigit()):
        raise InvalidArgument(f"{field}: {text!r} is not a cursor like 12:12 (commit:prepare)")
    return Position(int(commit), int(prepare))


def _tags(params: MultiMapping[str]) -> list[Tag]:
    tags = []
    event_type = params.get("type", "")
    if event_type:
        tags.append(Tag(EVENT_TYPE_TAG, event_type))
    for text in params.getall("tag", []):
        key, sep, value = text.partition(":")
        if not (sep and key):
            raise InvalidArgument(f"tag: {text!r} is not key:value")
        tags.append(Tag(key, value))
    return tags


def tail_query(params: MultiMapping[str]) -> Query | None:
    """The event type and tags of a request, as one criterion (all must match)."""
    tags = _tags(params)
    return Query((Criterion(tuple(tags)),)) if tags else None


def stream_filter(params: Mapping[str, str]) -> str | None:
    return params.get("stream") or None


def read_request(boundary: str, params: MultiMapping[str]) -> ReadRequest:
    direction_text = params.get("direction", "asc").upper()
    if direction_text not in Direction.__members__:
        raise InvalidArgument(f"direction: {params.get('direction')!r} is not asc or desc")
    count_text = params.get("count", str(DEFAULT_COUNT))
    if not count_text.isdigit() or not 1 <= int(count_text) <= MAX_COUNT:
        raise InvalidArgument(f"count: {count_text!r} is not a number from 1 to {MAX_COUNT}")
    after = params.get("after")
    return ReadRequest(
        boundary=boundary,
        stream=stream_filter(params),
        query=tail_query(params),
        after=parse_cursor(after) if after else None,
        count=int(count_text),
        direction=Direction(direction_text),
    )

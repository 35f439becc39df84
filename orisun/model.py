"""Plain data the layers pass to each other. Nothing here knows gRPC, SQL or NATS."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TypeVar

from orisun.errors import quoted

_T = TypeVar("_T")


class Role(StrEnum):
    """A user's role; ``ADMIN`` and ``OPERATIONS`` may write (docs/contract.md §7)."""

    ADMIN = "ADMIN"
    OPERATIONS = "OPERATIONS"


# Roles that may write events (docs/contract.md §7); any authenticated user may read.
WRITE_ROLES = frozenset({Role.ADMIN, Role.OPERATIONS})


@dataclass(frozen=True)
class User:
    """An authenticated caller."""

    id: str
    name: str
    username: str
    roles: frozenset[Role]
    # As stored (absent for a user not read from storage); not part of the user's identity.
    created_at: datetime | None = field(default=None, compare=False)
    updated_at: datetime | None = field(default=None, compare=False)

    @property
    def is_admin(self) -> bool:
        return Role.ADMIN in self.roles

    @property
    def can_write(self) -> bool:
        return bool(self.roles & WRITE_ROLES)


# --- Boundaries ----------------------------------------------------------------------------------

# Boundary and schema names: PostgreSQL identifiers that need no quoting (ORISUN_PG_SCHEMAS and
# CreateBoundary share the rule).
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def identifier_problem(value: str, what: str) -> str | None:
    """Why ``value`` cannot name a boundary or schema (``what`` says which), or None if it can."""
    if not _IDENTIFIER.fullmatch(value):
        return (f"{what} {quoted(value)} is not a valid identifier "
                "(letters, digits and _, not starting with a digit, at most 63 characters)")
    if value.lower().startswith("pg_") or value.lower() == "information_schema":
        return f"{what} {value!r} is reserved by PostgreSQL"
    return None



@dataclass(frozen=True)
class Boundary:
    """A boundary as the catalog records it (``orisun.service.boundaries``)."""

    name: str
    schema: str
    description: str = ""
    # True for boundaries of ORISUN_PG_SCHEMAS and adopted schemas: their storage existed before
    # the catalog recorded them (upstream's ``existed_before_catalog``).
    existed_before_catalog: bool = False
    created_at: datetime | None = None


# --- Events --------------------------------------------------------------------------------------

ANY_VERSION = -2  # expected_version: no check
EVENT_TYPE_TAG = "event_type"  # query pseudo-tag matching the event's type
EVENT_TYPE_TAG_ALIASES = frozenset({"event_type", "eventType"})


@dataclass(frozen=True, order=True)
class Position:
    """An event's place in its boundary's order. Compares (commit, prepare) lexicographically."""

    commit: int
    prepare: int


@dataclass(frozen=True)
class Tag:
    """A key/value label of an event, matched exactly by queries."""

    key: str
    value: str


@dataclass(frozen=True)
class Criterion:
    """Matches an event carrying every one of ``tags`` (AND)."""

    tags: tuple[Tag, ...]


@dataclass(frozen=True)
class Query:
    """Matches an event matching any one of ``criteria`` (OR)."""

    criteria: tuple[Criterion, ...]


def narrowing(query: Query | None) -> Query | None:
    """``query`` if it filters anything; None when it matches every event (no criteria, or a
    criterion without tags, which an event matches vacuously)."""
    if query is None or not query.criteria or any(not c.tags for c in query.criteria):
        return None
    return query


@dataclass(frozen=True)
class EventToSave:
    """One event of a SaveEvents request, as the client sent it."""

    event_id: str
    event_type: str
    data: str
    metadata: str
    tags: tuple[Tag, ...]


@dataclass(frozen=True)
class SaveRequest:
    """A validated SaveEvents request: events for one stream, with the version the client expects."""

    boundary: str
    stream: str
    expected_version: int
    subset: Query | None
    events: tuple[EventToSave, ...]


@dataclass(frozen=True)
class WriteResult:
    """A stored write's answer: its last event's position and the stream's new version."""

    position: Position
    new_stream_version: int


@dataclass(frozen=True)
class Event:
    """A stored event, as reads and subscriptions return it."""

    event_id: str
    event_type: str
    data: str
    metadata: str
    tags: tuple[Tag, ...]
    position: Position
    created_at: datetime
    stream: str
    version: int


# A stored event as storage reads it, before any object is made of it: (position,
# commit_position, stream, version, event_id, event_type, data, metadata, tags as the JSON text of
# [[key, value], ...], created_at as microseconds since the Unix epoch). A page read only to be sent
# on is converted straight from these rows: an Event (with its Position and Tags) per row cost more
# server CPU than fetching the row. An integer, not a datetime: loading a timestamptz and taking
# it apart again cost ~0.4 us per row.
EventRow = tuple[int, int, str, int, str, str, str, str, str, int]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

class TextCache(dict[str, _T]):
    """Values made from texts that recur (the JSON text of an event's tags): a dict, so a lookup
    is ``.get``, kept bounded by ``keep``: cleared when it holds ``max_entries``, and a text longer
    than ``max_chars`` is not kept at all."""

    def __init__(self, max_entries: int = 4096, max_chars: int = 512) -> None:
        super().__init__()
        self.max_entries = max_entries
        self.max_chars = max_chars

    def keep(self, text: str, value: _T) -> _T:
        """``value``, remembered for ``text`` if the bounds allow."""
        if len(text) <= self.max_chars:
            if len(self) >= self.max_entries:
                self.clear()
            self[text] = value
        return value


# Parsed tags by their JSON text: events share few distinct tag sets, and Tags are immutable, so
# one tuple serves them all (parsing cost ~1.5 us of an event's ~6).
_TAGS: TextCache[tuple[Tag, ...]] = TextCache()


def _tags(text: str) -> tuple[Tag, ...]:
    tags = _TAGS.get(text)
    if tags is None:
        tags = _TAGS.keep(text, tuple(Tag(key, value) for key, value in json.loads(text)))
    return tags


def event_from_row(row: EventRow) -> Event:
    position, commit, stream, version, event_id, event_type, data, metadata, tags, micros = row
    created_at = EPOCH + timedelta(microseconds=micros)
    return Event(
        event_id=event_id,
        event_type=event_type,
        data=data,
        metadata=metadata,
        tags=_tags(tags),
        position=Position(commit, position),
        created_at=created_at,
        stream=stream,
        version=version,
    )


def row_position(row: EventRow) -> Position:
    return Position(row[1], row[0])


class Direction(StrEnum):
    """The order a read walks the boundary's global positions."""

    ASC = "ASC"
    DESC = "DESC"


@dataclass(frozen=True)
class ReadRequest:
    """GetEvents: filters combine with AND (docs/contract.md §4)."""

    boundary: str
    stream: str | None = None
    from_version: int = 0
    stream_subset: Query | None = None
    query: Query | None = None
    after: Position | None = None  # the exclusive cursor
    count: int = 100
    direction: Direction = Direction.ASC

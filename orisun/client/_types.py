"""The values the client takes and returns: plain, typed dataclasses instead of protobuf messages."""

from __future__ import annotations

import enum
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, TypeAlias

__all__ = [
    "ANY",
    "NO_STREAM",
    "AdminUser",
    "BoundaryInfo",
    "Direction",
    "EventData",
    "ExpectedVersion",
    "Position",
    "PubSubMessage",
    "Query",
    "QueryLike",
    "RecordedEvent",
    "RetryPolicy",
    "Tags",
    "WriteResult",
    "query",
]

#: ``expected_version``: no check, the write succeeds whatever the stream's version.
ANY: Final = -2
#: ``expected_version``: the stream must not exist yet (or, with a subset query, have no matching event).
NO_STREAM: Final = -1


class ExpectedVersion:
    """The named values of ``expected_version``. Any int >= 0 means "the stream's last version
    (0-based) is exactly this"."""

    ANY: Final = ANY
    NO_STREAM: Final = NO_STREAM


class Direction(enum.Enum):
    """The order of a read, in the boundary's global (position) order."""

    ASC = 0
    DESC = 1


@dataclass(frozen=True, order=True)
class Position:
    """An event's place in its boundary's global order. ``prepare`` is the event's own position
    (1, 2, 3, ... dense), ``commit`` the position of the last event of the write that stored it.
    Positions compare as (commit, prepare); used as a cursor, a position means "after this one"."""

    commit: int
    prepare: int


#: Tags as a mapping or as (key, value) pairs (pairs keep their order and allow a key twice).
Tags: TypeAlias = Mapping[str, str] | Sequence[tuple[str, str]]


def _pairs(tags: Tags) -> tuple[tuple[str, str], ...]:
    items = tags.items() if isinstance(tags, Mapping) else tags
    return tuple((str(key), str(value)) for key, value in items)


def _text(value: Any) -> str:
    """JSON text for ``data``/``metadata``: strings are sent as they are, anything else is encoded."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class EventData:
    """An event to save.

    ``data`` and ``metadata`` are JSON text, or any JSON-encodable value (a dict, a list, ...) that
    is encoded here. ``event_id`` is a UUID generated when the object is made, so that a retry of
    the same write (by the client after ``UNAVAILABLE``, or by you with the same objects) sends the
    same ids and the server recognises it as the same write instead of storing it twice.
    """

    event_type: str
    data: Any
    metadata: Any = None
    tags: Tags = ()
    event_id: str | None = None

    def __post_init__(self) -> None:
        # Normalised once, at construction: the object is what gets sent, retry after retry.
        object.__setattr__(self, "data", _text(self.data))
        object.__setattr__(self, "metadata", "" if self.metadata is None else _text(self.metadata))
        object.__setattr__(self, "tags", _pairs(self.tags))
        if self.event_id is None:
            object.__setattr__(self, "event_id", str(uuid.uuid4()))


@dataclass(frozen=True)
class RecordedEvent:
    """A stored event, as reads and subscriptions return it."""

    event_id: str
    event_type: str
    #: The JSON text exactly as saved; `json` decodes it.
    data: str
    #: The metadata text exactly as saved (JSON or empty); `metadata_json` decodes it.
    metadata: str
    tags: tuple[tuple[str, str], ...]
    position: Position
    stream: str
    #: The event's 0-based version in its stream.
    version: int
    #: When the event was stored (UTC, timezone-aware).
    created: datetime

    def json(self) -> Any:
        """``data`` decoded from JSON."""
        return json.loads(self.data)

    def metadata_json(self) -> Any:
        """``metadata`` decoded from JSON; ``None`` when it is empty."""
        return json.loads(self.metadata) if self.metadata else None

    @property
    def tag_dict(self) -> dict[str, str]:
        """The tags as a dict (for a key given twice, the last value)."""
        return dict(self.tags)


@dataclass(frozen=True)
class WriteResult:
    """The answer to a successful ``save_events``."""

    #: The position of the write's last event, as reads return it.
    log_position: Position
    #: The stream's version after the write (that of its last event, 0-based).
    new_stream_version: int


@dataclass(frozen=True)
class Query:
    """A tag filter: an event matches when it matches ANY criterion, and matches a criterion when
    it carries ALL its tags. The tag key ``event_type`` matches the event's type. Build it with
    `query`."""

    criteria: tuple[tuple[tuple[str, str], ...], ...] = ()


#: What the ``query`` parameters take: a `Query`, one criterion as a dict, or a list of criteria.
QueryLike: TypeAlias = Query | Mapping[str, str] | Sequence[Mapping[str, str]]


def query(*criteria: Tags) -> Query:
    """A `Query` from criteria given as dicts (or lists of pairs), OR'd; the tags of each are AND'd.

    ``query({"event_type": "OrderPlaced"}, {"event_type": "OrderShipped", "region": "eu"})``
    matches every OrderPlaced event and the OrderShipped events tagged ``region=eu``.
    """
    return Query(tuple(_pairs(criterion) for criterion in criteria))


def as_query(value: QueryLike | None) -> Query | None:
    if value is None or isinstance(value, Query):
        return value
    if isinstance(value, Mapping):
        return query(value)
    return query(*value)


@dataclass(frozen=True)
class PubSubMessage:
    """A pub/sub message as delivered."""

    id: str
    subject: str
    data: str
    metadata: str

    def json(self) -> Any:
        """``data`` decoded from JSON."""
        return json.loads(self.data)


@dataclass(frozen=True)
class AdminUser:
    """A user, as the Admin API lists it (never with a password)."""

    user_id: str
    name: str
    username: str
    roles: tuple[str, ...]
    created_at: datetime | None
    updated_at: datetime | None


@dataclass(frozen=True)
class BoundaryInfo:
    """A boundary, as the Admin API lists it."""

    name: str
    description: str
    #: The storage backend ("postgres").
    backend: str
    #: The PostgreSQL schema holding the boundary.
    schema: str
    #: The catalog's lifecycle status without its prefix: "ACTIVE", ...
    status: str
    #: True for boundaries from ORISUN_PG_SCHEMAS or adopted schemas.
    existed_before_catalog: bool


@dataclass(frozen=True)
class RetryPolicy:
    """How calls are retried after ``UNAVAILABLE``: up to ``max_attempts`` attempts in all (``None``:
    no limit) within ``deadline`` seconds of the first, waiting ``initial_backoff`` seconds before
    the second, then ``multiplier`` times longer each time, up to ``max_backoff``.

    Subscriptions reconnect with the same rules, counted from the first failure since the last
    event delivered or the last connection that had stayed up for a while.
    """

    max_attempts: int | None = 10
    deadline: float | None = 30.0
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0

    def delays(self) -> _Backoff:
        return _Backoff(self)


@dataclass
class _Backoff:
    """The waits between attempts of one retried operation."""

    policy: RetryPolicy
    attempts: int = 1
    next_delay: float = field(init=False)

    def __post_init__(self) -> None:
        self.next_delay = self.policy.initial_backoff

    def next(self, elapsed: float) -> float | None:
        """The wait before the next attempt, or ``None`` when the policy allows none."""
        policy = self.policy
        if policy.max_attempts is not None and self.attempts >= policy.max_attempts:
            return None
        delay = self.next_delay
        if policy.deadline is not None and elapsed + delay > policy.deadline:
            return None
        self.attempts += 1
        self.next_delay = min(self.next_delay * policy.multiplier, policy.max_backoff)
        return delay

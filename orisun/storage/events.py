"""Reading events (GetEvents): one SQL statement per call, so one consistent snapshot.

Three shapes, each led by an index:
- a stream: UNIQUE (stream_name, stream_version), tags checked per event;
- a tag query without a stream: each criterion finds its first ``count`` positions through the
  (key, value, position) primary key of event_tags, the union is cut to ``count``;
- neither: the events primary key (position).
Within a stream, version order is position order, so every shape returns global order.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import cast

from psycopg import sql
from psycopg.types.numeric import Int8

from orisun.model import (
    EVENT_TYPE_TAG,
    EVENT_TYPE_TAG_ALIASES,
    Direction,
    Event,
    EventRow,
    Position,
    Query,
    ReadRequest,
    Tag,
    event_from_row,
    narrowing,
)
from orisun.storage._errors import translate_errors
from orisun.storage.database import Database

# In EventRow's order. The tags as JSON text: psycopg's jsonb loader cost ~1.6 us more per row
# than json.loads on the text (measured on 1,000-row pages). created_at as integer microseconds
# since the epoch (exact: extract returns numeric): cheaper to load than a timestamptz.
_COLUMNS = sql.SQL(
    "e.position, e.commit_position, e.stream_name, e.stream_version, e.event_id::text, e.event_type, "
    "e.data, e.metadata, e.tags::text, (extract(epoch FROM e.created_at) * 1000000)::bigint AS created"
)


def _key(tag: Tag) -> str:
    return EVENT_TYPE_TAG if tag.key in EVENT_TYPE_TAG_ALIASES else tag.key


# --- Statements by shape --------------------------------------------------------------------------
# A read's statement text depends only on its *shape* (schema, direction, filters present, number
# of criteria and of tags in each); every value is a named parameter. The text of a shape is
# composed once (lru_cache) and the same bytes go to PostgreSQL every time, so psycopg prepares it
# after prepare_threshold runs and PostgreSQL parses and plans it once per connection, not per call
# (composing with literals cost ~0.2 ms of Python and a parse and plan per call). Integers go as
# int8 (Int8): psycopg otherwise picks int2/int4/int8 by value, and each type would be a separate
# prepared statement.

# A query's shape: the number of tags of each criterion.
_QueryShape = tuple[int, ...]


def _query_shape(query: Query | None) -> _QueryShape | None:
    return None if query is None else tuple(len(c.tags) for c in query.criteria)


def _tag_params(prefix: str, query: Query, params: dict[str, object]) -> None:
    """The values of ``query``'s tags, named as the placeholders of ``_matches``/``_positions``."""
    for i, criterion in enumerate(query.criteria):
        for j, tag in enumerate(criterion.tags):
            params[f"{prefix}{i}_{j}k"] = _key(tag)
            params[f"{prefix}{i}_{j}v"] = tag.value


def _tag(prefix: str, i: int, j: int) -> tuple[sql.Placeholder, sql.Placeholder]:
    return sql.Placeholder(f"{prefix}{i}_{j}k"), sql.Placeholder(f"{prefix}{i}_{j}v")


def _matches(prefix: str, shape: _QueryShape, tags_table: sql.Identifier) -> sql.Composable:
    """A condition on events ``e``: some criterion has all its tags on the event."""
    alternatives = []
    for i, size in enumerate(shape):
        tags = [
            sql.SQL("EXISTS (SELECT 1 FROM {} t WHERE t.key = {} AND t.value = {} AND t.position = e.position)")
            .format(tags_table, *_tag(prefix, i, j))
            for j in range(size)
        ]
        alternatives.append(sql.SQL("({})").format(sql.SQL(" AND ").join(tags)))
    return sql.SQL("({})").format(sql.SQL(" OR ").join(alternatives))


def _criterion(i: int, size: int, tags_table: sql.Identifier) -> tuple[sql.Composable, sql.Composable]:
    """(joins, condition) selecting the index entries ``t0`` of events carrying all tags of
    criterion ``i`` (of ``size`` tags)."""
    joins = [
        sql.SQL("JOIN {t} {a} ON {a}.position = t0.position AND {a}.key = {k} AND {a}.value = {v}").format(
            t=tags_table, a=sql.Identifier(f"t{j}"), k=_tag("q", i, j)[0], v=_tag("q", i, j)[1]
        )
        for j in range(1, size)
    ]
    return sql.SQL(" ").join(joins), sql.SQL("t0.key = {} AND t0.value = {}").format(*_tag("q", i, 0))


def _positions(
    i: int, size: int, tags_table: sql.Identifier, bound: sql.Composable, order: sql.Composable
) -> sql.Composable:
    """The first ``%(limit)s`` positions carrying all tags of criterion ``i`` (of ``size`` tags),
    in ``order``."""
    joins, condition = _criterion(i, size, tags_table)
    return sql.SQL(
        "(SELECT t0.position FROM {t} t0 {joins} WHERE {condition} {bound} "
        "ORDER BY t0.position {order} LIMIT %(limit)s)"
    ).format(t=tags_table, joins=joins, condition=condition, bound=bound, order=order)


def _joined(
    size: int, events_table: sql.Identifier, tags_table: sql.Identifier, bound: sql.Composable,
    conditions: list[sql.Composable], order: sql.Composable, columns: sql.Composable = _COLUMNS,
) -> sql.Composable:
    """A query of one criterion (of ``size`` tags): its index entries joined to their events in
    index order, as one would write it by hand. The general form (``e.position IN`` a UNION of
    ``_positions``) costs PostgreSQL a hash aggregate and a sort more per call."""
    joins, condition = _criterion(0, size, tags_table)
    where = sql.SQL(" AND ").join([sql.SQL("{} {}").format(condition, bound), *conditions])
    return sql.SQL(
        "SELECT {cols} FROM {t} t0 {joins} JOIN {events} e ON e.position = t0.position WHERE {where} "
        "ORDER BY t0.position {order} LIMIT %(limit)s"
    ).format(cols=columns, t=tags_table, joins=joins, events=events_table, where=where, order=order)


@dataclass(frozen=True)
class ReadShape:
    """What a GetEvents statement's text depends on (see ``read_statement``)."""

    schema: str
    asc: bool
    cursor: bool  # a cursor (from_position) is set and not (0, 0)
    stream: bool
    from_version: bool  # a stream's from_version bound applies
    subset: _QueryShape | None  # a stream's subset query, narrowed
    query: _QueryShape | None  # the query, narrowed


@functools.lru_cache(maxsize=512)
def read_statement(shape: ReadShape) -> bytes:
    """The GetEvents SELECT of ``shape``, with named placeholders for every value."""
    return _read_select(shape, _COLUMNS).as_bytes(None)


def _read_select(shape: ReadShape, columns: sql.Composable) -> sql.Composable:
    events_table = sql.Identifier(shape.schema, "events")
    tags_table = sql.Identifier(shape.schema, "event_tags")
    order = sql.SQL("ASC" if shape.asc else "DESC")
    conditions: list[sql.Composable] = []
    bound: sql.Composable = sql.SQL("")  # the cursor as a plain position range, for the tag branches
    if shape.cursor:
        if shape.asc:
            # Real cursors satisfy prepare <= commit and name an event; then "after" is exactly
            # position > prepare. The pair comparison keeps the lexicographic order of docs/contract.md §2.
            conditions.append(sql.SQL(
                "e.position > %(prepare)s AND (e.commit_position, e.position) > (%(commit)s, %(prepare)s)"))
            bound = sql.SQL("AND t0.position > %(prepare)s")
        else:
            # (commit, position) < (C, P) implies position < P, or < C when P is 0 (%(below)s).
            conditions.append(sql.SQL(
                "e.position < %(below)s AND (e.commit_position, e.position) < (%(commit)s, %(prepare)s)"))
            bound = sql.SQL("AND t0.position < %(below)s")
    if shape.stream:
        conditions.insert(0, sql.SQL("e.stream_name = %(stream)s"))
        if shape.from_version:
            conditions.append(sql.SQL("e.stream_version >= %(version)s" if shape.asc
                                      else "e.stream_version <= %(version)s"))
        if shape.subset is not None:
            conditions.append(_matches("s", shape.subset, tags_table))
        if shape.query is not None:
            conditions.append(_matches("q", shape.query, tags_table))
        ordering = sql.SQL("e.stream_version")
    else:
        if shape.query is not None and len(shape.query) == 1:
            return _joined(shape.query[0], events_table, tags_table, bound, conditions, order, columns)
        if shape.query is not None:
            branches = [_positions(i, size, tags_table, bound, order) for i, size in enumerate(shape.query)]
            conditions.append(sql.SQL("e.position IN ({})").format(sql.SQL(" UNION ").join(branches)))
        ordering = sql.SQL("e.position")
    where = sql.SQL("WHERE {}").format(sql.SQL(" AND ").join(conditions)) if conditions else sql.SQL("")
    return sql.SQL("SELECT {cols} FROM {events} e {where} ORDER BY {ordering} {order} LIMIT %(limit)s").format(
        cols=columns, events=events_table, where=where, ordering=ordering, order=order,
    )


# Positions arrive as uint64 (the proto's type), PostgreSQL's bigint stops at 2**63 - 1. Every
# stored position is below that, so a larger cursor value compares with every event exactly as
# 2**63 - 1 does: clamping keeps the answer and makes it a valid int8 parameter.
_INT8_MAX = 2**63 - 1


def _int8(value: int) -> Int8:
    return Int8(min(value, _INT8_MAX))


def build_read(schema: str, request: ReadRequest) -> tuple[bytes, dict[str, object]]:
    """The one SELECT for a GetEvents call on the boundary stored in ``schema``, and its values."""
    shape, params = _read_shape(schema, request)
    return read_statement(shape), params


def _read_shape(schema: str, request: ReadRequest) -> tuple[ReadShape, dict[str, object]]:
    asc = request.direction == Direction.ASC
    params: dict[str, object] = {"limit": Int8(request.count)}
    after = request.after
    cursor = after is not None and bool(after.commit or after.prepare)
    if after is not None and cursor:
        params["commit"] = _int8(after.commit)
        params["prepare"] = _int8(after.prepare)
        if not asc:
            params["below"] = _int8(after.prepare or after.commit)
    query = narrowing(request.query)
    subset = None
    from_version = False
    if request.stream is not None:
        params["stream"] = request.stream
        from_version = asc or request.from_version > 0
        if from_version:
            params["version"] = Int8(request.from_version)
        subset = narrowing(request.stream_subset)
        if subset is not None:
            _tag_params("s", subset, params)
    if query is not None:
        _tag_params("q", query, params)
    shape = ReadShape(schema, asc, cursor, request.stream is not None, from_version,
                      _query_shape(subset), _query_shape(query))
    return shape, params


async def read_rows(db: Database, schema: str, request: ReadRequest) -> list[EventRow]:
    """The events of a GetEvents call as plain rows (see EventRow)."""
    statement, params = build_read(schema, request)
    with translate_errors(f"reading boundary {request.boundary!r}"):
        async with db.pool.connection() as conn:
            cursor = await conn.execute(statement, params)
            return cast(list[EventRow], await cursor.fetchall())


# --- Pages that never load `count` large events --------------------------------------------------
# A GetEvents page holds at most `count` events and `max_bytes` (the gRPC message limit). It is
# read with one statement in the usual case: `count` rows, but a row whose data, metadata and
# stored tags together pass %(large)s bytes (max_bytes / count, so that the rows below it hold
# about max_bytes together, whatever their number: their ids, type and stream name are not
# counted, nor their tags' compression) comes without them: data NULL, and in metadata a lower
# bound of its encoded size: the octet length of its data and metadata, plus 4 + len(key) +
# len(value) per tag (what a tag costs at least in protobuf). octet_length and pg_column_size
# read only the header of a TOASTed value, so a large event's data is not loaded. The caller then
# reads exactly the events that can fit, by those sizes (see EventStore.read_page): a page with a
# large event takes two statements and still never holds far more than `max_bytes`. The per-row
# CASEs cost PostgreSQL nothing measurable on 1,000-row pages, where a window function keeping a
# running sum of sizes (a first design) cost ~0.6 us per row, more than the second statement it
# saved.
_LARGE = sql.SQL("octet_length(e.data) + octet_length(e.metadata) + pg_column_size(e.tags) > %(large)s")
_PAGE_COLUMNS = sql.SQL(
    "e.position, e.commit_position, e.stream_name, e.stream_version, e.event_id::text, e.event_type, "
    "CASE WHEN {large} THEN NULL ELSE e.data END, "
    "CASE WHEN {large} THEN (octet_length(e.data) + octet_length(e.metadata) + coalesce(("
    "SELECT sum(4 + octet_length(t.tag ->> 0) + octet_length(t.tag ->> 1)) FROM jsonb_array_elements(e.tags) t(tag)"
    "), 0))::text ELSE e.metadata END, "
    "CASE WHEN {large} THEN NULL ELSE e.tags::text END, "
    "(extract(epoch FROM e.created_at) * 1000000)::bigint AS created"
).format(large=_LARGE)


@functools.lru_cache(maxsize=512)
def page_statement(shape: ReadShape) -> bytes:
    """``read_statement`` of ``shape`` with its large rows left out (see _PAGE_COLUMNS)."""
    return _read_select(shape, _PAGE_COLUMNS).as_bytes(None)


def build_page(schema: str, request: ReadRequest, large: int) -> tuple[bytes, dict[str, object]]:
    """The first SELECT of a GetEvents page, leaving out rows larger than ``large``, and its values."""
    shape, params = _read_shape(schema, request)
    params["large"] = Int8(large)
    return page_statement(shape), params


# A row of the page statement: an EventRow, or a large one: data None, metadata its size (see above).
PageRow = tuple[int, int, str, int, str, str, str | None, str, str | None, int]


async def read_page_rows(db: Database, schema: str, request: ReadRequest, large: int) -> list[PageRow]:
    """The rows of a GetEvents call; those whose data, metadata and stored tags pass ``large``
    bytes without them (data None, metadata a lower bound of their data, metadata and tags'
    encoded size, as text)."""
    statement, params = build_page(schema, request, large)
    with translate_errors(f"reading boundary {request.boundary!r}"):
        async with db.pool.connection() as conn:
            cursor = await conn.execute(statement, params)
            return cast(list[PageRow], await cursor.fetchall())


async def read_events(db: Database, schema: str, request: ReadRequest) -> list[Event]:
    return [event_from_row(row) for row in await read_rows(db, schema, request)]


# --- Subscriptions and the live feed -------------------------------------------------------------


def range_end(after: Position, upto: int, query: Query | None, limit: int) -> int:
    """The last position a range read examines. Without a query, positions are dense, so the
    ``limit`` events after the cursor end at ``after + limit``: bounding the scan there keeps the
    plan an index range of ``limit`` rows whatever the planner's statistics say (a wide range
    with stale statistics was planned as a bitmap scan of the whole range plus a sort)."""
    return upto if narrowing(query) is not None else min(upto, after.prepare + limit)


@functools.lru_cache(maxsize=256)
def range_statement(schema: str, query: _QueryShape | None) -> bytes:
    """The range SELECT of ``build_range`` for a narrowed query of shape ``query`` (or none)."""
    events_table = sql.Identifier(schema, "events")
    tags_table = sql.Identifier(schema, "event_tags")
    conditions: list[sql.Composable] = [
        sql.SQL("e.position > %(prepare)s AND e.position <= %(end)s"),
        # The lexicographic cursor of docs/contract.md §2; for real cursors the line above already implies it.
        sql.SQL("(e.commit_position, e.position) > (%(commit)s, %(prepare)s)"),
    ]
    if query is not None:
        bound = sql.SQL("AND t0.position > %(prepare)s AND t0.position <= %(end)s")
        if len(query) == 1:
            return _joined(query[0], events_table, tags_table, bound, conditions, sql.SQL("ASC")).as_bytes(None)
        branches = [_positions(i, size, tags_table, bound, sql.SQL("ASC")) for i, size in enumerate(query)]
        conditions.append(sql.SQL("e.position IN ({})").format(sql.SQL(" UNION ").join(branches)))
    return sql.SQL("SELECT {cols} FROM {events} e WHERE {where} ORDER BY e.position LIMIT %(limit)s").format(
        cols=_COLUMNS, events=events_table, where=sql.SQL(" AND ").join(conditions)
    ).as_bytes(None)


def build_range(
    schema: str, after: Position, upto: int, query: Query | None, limit: int
) -> tuple[bytes, dict[str, object]]:
    """Events after the cursor ``after`` up to ``range_end(...)``, matching ``query``, in order:
    the statement and its values."""
    query = narrowing(query)
    params: dict[str, object] = {
        "prepare": _int8(after.prepare), "commit": _int8(after.commit),
        "end": _int8(range_end(after, upto, query, limit)), "limit": Int8(limit),
    }
    if query is not None:
        _tag_params("q", query, params)
    return range_statement(schema, _query_shape(query)), params


async def read_range(
    db: Database, schema: str, after: Position, upto: int, query: Query | None = None, limit: int = 1000
) -> tuple[list[Event], int]:
    """(at most ``limit`` events in (after, upto] matching ``query``, the position read through).

    Every event up to the second value has been examined: continue after it. It is the last
    event's position for a full page, else the end of the range read (see range_end)."""
    statement, params = build_range(schema, after, upto, query, limit)
    with translate_errors(f"reading boundary schema {schema}"):
        async with db.pool.connection() as conn:
            cursor = await conn.execute(statement, params)
            events = [event_from_row(cast(EventRow, row)) for row in await cursor.fetchall()]
    through = events[-1].position.prepare if len(events) == limit else range_end(after, upto, query, limit)
    return events, through


@functools.lru_cache(maxsize=256)
def stream_range_statement(schema: str, query: _QueryShape | None) -> bytes:
    """The SELECT of ``build_stream_range`` for a narrowed query of shape ``query`` (or none)."""
    tags_table = sql.Identifier(schema, "event_tags")
    conditions: list[sql.Composable] = [
        # Led by UNIQUE (stream_name, stream_version): the scan starts at the version examined last.
        sql.SQL("e.stream_name = %(stream)s AND e.stream_version > %(version)s"),
        sql.SQL("e.position > %(prepare)s AND e.position <= %(end)s"),
    ]
    if query is not None:
        conditions.append(_matches("q", query, tags_table))
    # Within a stream, version order is position order: ordering by version follows the index.
    return sql.SQL(
        "SELECT {cols} FROM {events} e WHERE {where} ORDER BY e.stream_version LIMIT %(limit)s"
    ).format(cols=_COLUMNS, events=sql.Identifier(schema, "events"),
             where=sql.SQL(" AND ").join(conditions)).as_bytes(None)


def build_stream_range(
    schema: str, stream: str, after_version: int, after: int, upto: int, query: Query | None, limit: int
) -> tuple[bytes, dict[str, object]]:
    """The events of ``stream`` with a version above ``after_version`` and a position in
    (after, upto], matching ``query``, in order: the statement and its values."""
    query = narrowing(query)
    params: dict[str, object] = {
        "stream": stream, "version": _int8(max(after_version, -1)), "prepare": _int8(after),
        "end": _int8(upto), "limit": Int8(limit),
    }
    if query is not None:
        _tag_params("q", query, params)
    return stream_range_statement(schema, _query_shape(query)), params


async def read_stream_range(
    db: Database, schema: str, stream: str, after_version: int, after: int, upto: int,
    query: Query | None = None, limit: int = 1000,
) -> tuple[list[Event], int]:
    """(at most ``limit`` events of ``stream`` after ``after_version`` in (after, upto] matching
    ``query``, the position read through): CatchUpSubscribeToStream's catch-up, through the
    stream's index rather than the boundary's order.

    Every event of the stream up to the second value has been examined: it is the last event's
    position for a full page, else ``upto``."""
    statement, params = build_stream_range(schema, stream, after_version, after, upto, query, limit)
    with translate_errors(f"reading boundary schema {schema}"):
        async with db.pool.connection() as conn:
            cursor = await conn.execute(statement, params)
            events = [event_from_row(cast(EventRow, row)) for row in await cursor.fetchall()]
    through = events[-1].position.prepare if len(events) == limit else max(after, upto)
    return events, through


async def read_head(db: Database, schema: str) -> int:
    """The boundary's last committed position (0 when empty)."""
    with translate_errors(f"reading the head of boundary schema {schema}"):
        async with db.pool.connection() as conn:
            cursor = await conn.execute(sql.SQL("SELECT position FROM {}").format(sql.Identifier(schema, "head")))
            row = await cursor.fetchone()
    assert row is not None, "the head table has exactly one row"
    position = row[0]
    assert isinstance(position, int)
    return position

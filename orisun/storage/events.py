"""Reading events (GetEvents): one SQL statement per call, so one consistent snapshot.

Three shapes, each led by an index:
- a stream: UNIQUE (stream_name, stream_version), tags checked per event;
- a tag query without a stream: each criterion finds its first ``count`` positions through the
  (key, value, position) primary key of event_tags, the union is cut to ``count``;
- neither: the events primary key (position).
Within a stream, version order is position order, so every shape returns global order.
"""

from __future__ import annotations

from typing import cast

from psycopg import sql

from orisun.model import (
    EVENT_TYPE_TAG,
    EVENT_TYPE_TAG_ALIASES,
    Criterion,
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
# than json.loads on the text (measured on 1,000-row pages).
_COLUMNS = sql.SQL(
    "e.position, e.commit_position, e.stream_name, e.stream_version, e.event_id::text, e.event_type, "
    "e.data, e.metadata, e.tags::text, e.created_at"
)


def _key(tag: Tag) -> str:
    return EVENT_TYPE_TAG if tag.key in EVENT_TYPE_TAG_ALIASES else tag.key


def _matches(query: Query, tags_table: sql.Identifier) -> sql.Composable:
    """A condition on events ``e``: some criterion has all its tags on the event."""
    alternatives = []
    for criterion in query.criteria:
        tags = [
            sql.SQL("EXISTS (SELECT 1 FROM {} t WHERE t.key = {} AND t.value = {} AND t.position = e.position)")
            .format(tags_table, sql.Literal(_key(tag)), sql.Literal(tag.value))
            for tag in criterion.tags
        ]
        alternatives.append(sql.SQL("({})").format(sql.SQL(" AND ").join(tags)))
    return sql.SQL("({})").format(sql.SQL(" OR ").join(alternatives))


def _positions(
    criterion: Criterion, tags_table: sql.Identifier, bound: sql.Composable, order: sql.Composable, limit: int
) -> sql.Composable:
    """The first ``limit`` positions carrying all of ``criterion``'s tags, in ``order``."""
    first, *others = criterion.tags
    joins = [
        sql.SQL("JOIN {t} {a} ON {a}.position = t0.position AND {a}.key = {k} AND {a}.value = {v}").format(
            t=tags_table, a=sql.Identifier(f"t{i}"), k=sql.Literal(_key(tag)), v=sql.Literal(tag.value)
        )
        for i, tag in enumerate(others, start=1)
    ]
    return sql.SQL(
        "(SELECT t0.position FROM {t} t0 {joins} WHERE t0.key = {k} AND t0.value = {v} {bound} "
        "ORDER BY t0.position {order} LIMIT {limit})"
    ).format(
        t=tags_table,
        joins=sql.SQL(" ").join(joins),
        k=sql.Literal(_key(first)),
        v=sql.Literal(first.value),
        bound=bound,
        order=order,
        limit=sql.Literal(limit),
    )


def build_read(schema: str, request: ReadRequest) -> sql.Composed:
    """The one SELECT for a GetEvents call on the boundary stored in ``schema``."""
    events_table = sql.Identifier(schema, "events")
    tags_table = sql.Identifier(schema, "event_tags")
    asc = request.direction == Direction.ASC
    order = sql.SQL("ASC" if asc else "DESC")
    conditions: list[sql.Composable] = []
    bound: sql.Composable = sql.SQL("")  # the cursor as a plain position range, for the tag branches
    after = request.after
    if after is not None and (after.commit or after.prepare):
        if asc:
            # Real cursors satisfy prepare <= commit and name an event; then "after" is exactly
            # position > prepare. The pair comparison keeps the contract's lexicographic order.
            conditions.append(sql.SQL("e.position > {} AND (e.commit_position, e.position) > ({}, {})").format(
                after.prepare, after.commit, after.prepare))
            bound = sql.SQL("AND t0.position > {}").format(after.prepare)
        else:
            # (commit, position) < (C, P) implies position < P, or < C when P is 0.
            below = after.prepare or after.commit
            conditions.append(sql.SQL("e.position < {} AND (e.commit_position, e.position) < ({}, {})").format(
                below, after.commit, after.prepare))
            bound = sql.SQL("AND t0.position < {}").format(below)

    query = narrowing(request.query)
    if request.stream is not None:
        conditions.insert(0, sql.SQL("e.stream_name = {}").format(request.stream))
        if asc:
            conditions.append(sql.SQL("e.stream_version >= {}").format(request.from_version))
        elif request.from_version > 0:
            conditions.append(sql.SQL("e.stream_version <= {}").format(request.from_version))
        subset = narrowing(request.stream_subset)
        if subset is not None:
            conditions.append(_matches(subset, tags_table))
        if query is not None:
            conditions.append(_matches(query, tags_table))
        ordering = sql.SQL("e.stream_version")
    else:
        if query is not None:
            branches = [_positions(c, tags_table, bound, order, request.count) for c in query.criteria]
            conditions.append(sql.SQL("e.position IN ({})").format(sql.SQL(" UNION ").join(branches)))
        ordering = sql.SQL("e.position")
    where = sql.SQL("WHERE {}").format(sql.SQL(" AND ").join(conditions)) if conditions else sql.SQL("")
    return sql.SQL("SELECT {cols} FROM {events} e {where} ORDER BY {ordering} {order} LIMIT {limit}").format(
        cols=_COLUMNS,
        events=events_table,
        where=where,
        ordering=ordering,
        order=order,
        limit=sql.Literal(request.count),
    )


async def read_rows(db: Database, schema: str, request: ReadRequest) -> list[EventRow]:
    """The events of a GetEvents call as plain rows (see EventRow)."""
    statement = build_read(schema, request)
    with translate_errors(f"reading boundary {request.boundary!r}"):
        async with db.pool.connection() as conn:
            cursor = await conn.execute(statement)
            return cast(list[EventRow], await cursor.fetchall())


async def read_events(db: Database, schema: str, request: ReadRequest) -> list[Event]:
    return [event_from_row(row) for row in await read_rows(db, schema, request)]


# --- Subscriptions and the live feed -------------------------------------------------------------


def range_end(after: Position, upto: int, query: Query | None, limit: int) -> int:
    """The last position a range read examines. Without a query, positions are dense, so the
    ``limit`` events after the cursor end at ``after + limit``: bounding the scan there keeps the
    plan an index range of ``limit`` rows whatever the planner's statistics say (a wide range
    with stale statistics was planned as a bitmap scan of the whole range plus a sort)."""
    return upto if narrowing(query) is not None else min(upto, after.prepare + limit)


def build_range(schema: str, after: Position, upto: int, query: Query | None, limit: int) -> sql.Composed:
    """Events after the cursor ``after`` up to ``range_end(...)``, matching ``query``, in order."""
    events_table = sql.Identifier(schema, "events")
    tags_table = sql.Identifier(schema, "event_tags")
    end = range_end(after, upto, query, limit)
    conditions: list[sql.Composable] = [
        sql.SQL("e.position > {} AND e.position <= {}").format(after.prepare, end),
        # The contract's lexicographic cursor; for real cursors the line above already implies it.
        sql.SQL("(e.commit_position, e.position) > ({}, {})").format(after.commit, after.prepare),
    ]
    query = narrowing(query)
    if query is not None:
        bound = sql.SQL("AND t0.position > {} AND t0.position <= {}").format(after.prepare, end)
        branches = [_positions(c, tags_table, bound, sql.SQL("ASC"), limit) for c in query.criteria]
        conditions.append(sql.SQL("e.position IN ({})").format(sql.SQL(" UNION ").join(branches)))
    return sql.SQL("SELECT {cols} FROM {events} e WHERE {where} ORDER BY e.position LIMIT {limit}").format(
        cols=_COLUMNS, events=events_table, where=sql.SQL(" AND ").join(conditions), limit=sql.Literal(limit)
    )


async def read_range(
    db: Database, schema: str, after: Position, upto: int, query: Query | None = None, limit: int = 1000
) -> tuple[list[Event], int]:
    """(at most ``limit`` events in (after, upto] matching ``query``, the position read through).

    Every event up to the second value has been examined: continue after it. It is the last
    event's position for a full page, else the end of the range read (see range_end)."""
    with translate_errors(f"reading boundary schema {schema}"):
        async with db.pool.connection() as conn:
            cursor = await conn.execute(build_range(schema, after, upto, query, limit))
            events = [event_from_row(cast(EventRow, row)) for row in await cursor.fetchall()]
    through = events[-1].position.prepare if len(events) == limit else range_end(after, upto, query, limit)
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

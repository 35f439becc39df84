-- Writes the events of accepted requests, set-based: used by append_events, which decides
-- positions and versions and calls this once per group (or early, when a later request's check
-- needs the group's earlier events stored).
-- Per accepted request: w_offset (its first event's index in the p_* arrays, minus one), w_count,
-- w_position (its first event's position), w_version (its first event's stream version),
-- w_stream. The p_* arrays are append_events' per-event arguments (all the group's events, also
-- those of requests not accepted).
--
-- No subscripts on the per-event arrays: inside an SQL statement they are constants in the flat
-- form, and p_data[i] on a variable-width array walks it from its start, so a write of n events
-- cost O(n^2) (a 20,000-event write took ~100x the CPU of a 2,000-event one). The arrays are read
-- once, in order, by unnest ... WITH ORDINALITY, and hash-joined on the event's index to the
-- accepted requests expanded one row per event by generate_series. Events of refused requests
-- find no partner in the join. One statement inserts the events and, from what it returns, their
-- tags, so the join is made once.
--
-- PL/pgSQL rather than SQL: it keeps its plans for the session, where a SQL function here was
-- planned on every call (~1 ms). SET jit = off: the default row estimates of set-returning
-- functions (generate_series: 1,000; jsonb_array_elements: 100) can put a statement above
-- jit_above_cost, and JIT compilation (Debian's PostgreSQL has it on) then costs milliseconds at
-- every call.
-- SET plan_cache_mode = force_generic_plan: with the arrays as constants (custom plans, the
-- default here, since they look cheaper) every statement was planned again at every call, ~15%
-- of PostgreSQL's CPU for a 1-event group. The generic plans are linear whatever the group's
-- size: a hash or merge join of two function scans, then inserts. (Tried earlier on the
-- subscript form of this function, concurrent mixed groups became ten times slower;
-- tests/test_failures.py's shutdown test is the canary and stays as fast as before.)
-- SET enable_hashagg = off: the generic plan's row estimates are the defaults of set-returning
-- functions (thousands of rows), and a hash aggregate for the tags' UNION sized its table for
-- them, then walked every empty bucket: ~100 us of a 1-event group. Sorting the real rows costs
-- nothing for small groups and the same as hashing for a 10,000-event write.
CREATE OR REPLACE FUNCTION store_events(
    w_offset   integer[],
    w_count    integer[],
    w_position bigint[],
    w_version  integer[],
    w_stream   text[],
    p_ids      uuid[],
    p_types    text[],
    p_data     text[],
    p_metadata text[],
    p_tags     jsonb[]
) RETURNS void
LANGUAGE plpgsql
SET search_path FROM CURRENT
SET jit = off
SET plan_cache_mode = force_generic_plan
SET enable_hashagg = off
AS $$
BEGIN
    WITH accepted AS (
        SELECT (w.off + k)::bigint AS idx, w.pos + k - 1 AS pos, w.pos + w.cnt - 1 AS commit_pos,
               w.stream, w.ver + k - 1 AS ver
          FROM unnest(w_offset, w_count, w_position, w_version, w_stream) AS w (off, cnt, pos, ver, stream),
               generate_series(1, w.cnt) AS k
    ), stored AS (
        INSERT INTO events (position, commit_position, stream_name, stream_version, event_id, event_type, data,
                            metadata, tags)
        SELECT a.pos, a.commit_pos, a.stream, a.ver, e.id, e.type, e.data, e.metadata, e.tags
          FROM accepted a
          JOIN unnest(p_ids, p_types, p_data, p_metadata, p_tags) WITH ORDINALITY
               AS e (id, type, data, metadata, tags, idx)
            ON e.idx = a.idx
        RETURNING position, event_type, tags
    )
    INSERT INTO event_tags (key, value, position)
    SELECT tag ->> 0, tag ->> 1, s.position
      FROM stored s, jsonb_array_elements(s.tags) AS tag
     WHERE tag ->> 0 NOT IN ('event_type', 'eventType')
    UNION
    SELECT 'event_type', s.event_type, s.position
      FROM stored s;

    INSERT INTO streams AS s (name, version, updated_at)
    SELECT DISTINCT ON (w.stream) w.stream, w.ver + w.cnt - 1, now()
      FROM unnest(w_count, w_position, w_version, w_stream) AS w (cnt, pos, ver, stream)
     ORDER BY w.stream, w.pos DESC
    ON CONFLICT (name) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at;
END;
$$;

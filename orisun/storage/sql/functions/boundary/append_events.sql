-- Appends a group of SaveEvents requests in one transaction, in one round trip (group commit,
-- docs/contract.md §2). Requests are taken in order; each is checked against the state that
-- includes the requests before it, and gets its own outcome, so one bad request never fails its
-- neighbours:
--   ok          appended; r_commit = r_prepare = the position of its last event, r_version = the
--               stream's new version
--   idempotent  its events are exactly one stored write (see below): the result of that write
--   duplicate   some event id is stored already otherwise; r_detail is '<id> <why>' (below)
--   conflict    the expected version does not hold; r_version = actual, r_detail = 'expected N, actual M'
-- Positions: the head row is locked FOR UPDATE until commit, so one writer per boundary, across
-- every Orisun node on this database, assigns dense positions in commit order.
-- Notification: each head update also sends pg_notify on channel orisun_appended with payload
-- {"schema": ..., "head": <the new head>}, delivered at commit (never for a rolled-back write):
-- the node publishing the boundary's live feed learns of writes made through other nodes, and
-- every node's subscribers learn that events exist even while the feed is down. (A trigger on
-- the head did this until migration 0010: an after trigger and a second PL/pgSQL call per group.)
--
-- Per request (arrays indexed by request): p_streams, p_expected (-1 no stream yet, -2 any, N),
-- p_subsets (subsetQuery criteria as in last_matching_version, or NULL), p_counts (its number of
-- events). Per event (all requests' events concatenated in order): p_ids, p_types, p_data,
-- p_metadata (stored exactly as given), p_tags ([[key, value], ...] exactly as saved).
--
-- Cost: the stream versions and the already-stored ids of the whole group are read once up
-- front (one statement), checks run in memory, and the accepted events are written set-based by
-- one statement at the end, so a group of many small requests costs a handful of statements,
-- not a handful per request. Only checks that must see earlier events of the same group in the
-- tables (a reused id, a subsetQuery on a stream the group already wrote) write those events
-- first. A 1-request group runs three statements: the head lock, the reads, and the write (which
-- also notifies).
--
-- Exact retries (docs/contract.md §3; issue #12 made the rule exact):
-- A request is a retry only if its events are exactly the events of ONE stored write: the
-- same ids in the same order, no more and no fewer (a part of a write is not a retry, nor are
-- two writes together), in the same stream, each with the same event_type, data, metadata and
-- tags (compared exactly: data and metadata come back byte-for-byte, tags in their saved order,
-- so a retry must resend them unchanged). Events sharing a commit_position are one write, and a
-- write's events hold consecutive positions ending at that commit_position.
-- Any other reuse of a stored id is 'duplicate'; r_detail is '<id> <why>': the first reused id in
-- the request's order that is stored in another stream ('stream') or with other content
-- ('content'); else the first reused id ('write': the ids are not exactly one write's).
--
-- All this runs only for a request that reuses a stored id: the happy path gains nothing per
-- event. A request is checked against the ids accepted earlier in its group only when some id
-- occurs twice in the group (see v_repeated), not by comparing every pair of ids.
--
-- Cost of the check on these arrays: the p_* arguments are kept in PL/pgSQL's expanded form, so
-- p_data[k] in a PL/pgSQL expression is O(1); but a slice of one (p_data[a:b]), or a subscript
-- inside an SQL statement planned with the values as constants, copies or walks the whole
-- array each time. So the stored side is fetched by one statement into local arrays, and the
-- comparison is a PL/pgSQL loop of plain expressions.
--
-- SET jit = off: the statements here are short, but the default row estimates of unnest,
-- generate_series and jsonb_array_elements give some of them an estimated cost above
-- jit_above_cost, and JIT compilation (where PostgreSQL has it, Debian's does) then costs
-- milliseconds at every call.
--
-- SET plan_cache_mode = force_generic_plan: planned once per session rather than at every call
-- with the arrays as constants (custom plans, the default here, since they look cheaper, were
-- made again at every call, ~15% of PostgreSQL's CPU for a 1-event group). Every statement here
-- reads tables only through primary keys and unique indexes, so a plan made while the tables
-- were small stays good as they grow (tests/test_concurrency.py's
-- test_small_appends_on_a_large_table), and the write's plan is linear whatever the group's size.
--
-- SET enable_hashagg = off: the generic plan's row estimates are the defaults of set-returning
-- functions (thousands of rows), and a hash aggregate (a UNION of the group's tags, once; the
-- repeated ids) sized its table for them, then walked every empty bucket: ~100 us of a 1-event
-- group. Sorting the real rows costs nothing for small groups and no more than hashing for a
-- 10,000-event write.
--
-- One function, not two: the write was a second function (store_events, dropped by migration
-- 0010), and each call of a function with SET clauses saves and restores those settings; a
-- search_path change also resets PostgreSQL's cached search path. Per 1-event group that and
-- the statements since merged cost about as much as the inserts themselves.
CREATE OR REPLACE FUNCTION append_events(
    p_streams  text[],
    p_expected integer[],
    p_subsets  jsonb[],
    p_counts   integer[],
    p_ids      uuid[],
    p_types    text[],
    p_data     text[],
    p_metadata text[],
    p_tags     jsonb[]
) RETURNS TABLE (r_request integer, r_outcome text, r_commit bigint, r_prepare bigint, r_version integer,
                 r_detail text)
LANGUAGE plpgsql
SET search_path FROM CURRENT
SET jit = off
SET plan_cache_mode = force_generic_plan
SET enable_hashagg = off
AS $$
DECLARE
    v_head     bigint;
    v_offset   integer := 0;
    v_n        integer;
    v_ids      uuid[];
    v_stream   text;
    v_at       integer;
    v_current  integer;
    v_actual   integer;
    v_last     boolean;
    -- Stream versions: the stored ones, then as this group's accepted requests leave them.
    s_names    text[];
    s_versions integer[];
    -- Ids of this group already in the events table.
    v_stored   uuid[];
    -- Ids sent more than once in this group (usually none).
    v_repeated uuid[];
    -- Ids accepted by this group and not yet written (kept only if some id repeats).
    g_ids      uuid[] := '{}';
    -- Accepted requests not yet written: per request, its first event's index in the p_* arrays
    -- minus one, its number of events, its first event's position and stream version, its stream.
    w_offset   integer[] := '{}';
    w_count    integer[] := '{}';
    w_position bigint[] := '{}';
    w_version  integer[] := '{}';
    w_stream   text[] := '{}';
    -- A request reusing stored ids: the stored event of each of its ids, in the request's order
    -- (NULL where the id is new), and what the comparison found.
    x_position bigint[];
    x_commit   bigint[];
    x_stream   boolean[];
    x_types    text[];
    x_data     text[];
    x_metadata text[];
    x_tags     jsonb[];
    x_version  integer;
    x_end      bigint;
    x_first    integer;
    x_write    boolean;
BEGIN
    -- Its own statement, before the reads: in READ COMMITTED each statement of this (volatile)
    -- function sees what was committed when it began, so the reads below, made once the lock is
    -- ours, see every earlier writer's events.
    SELECT h.position INTO v_head FROM head h WHERE h.singleton FOR UPDATE;
    -- The reads, in one statement (the scalar subqueries are run once each). Only repeated ids
    -- can make a request reuse an id accepted earlier in the group. Testing each request's ids
    -- against all the group's accepted ids instead (v_ids && g_ids, as 0007 did) compares every
    -- pair: two writes of 10,000 events in one group cost 100 million comparisons. A group of one
    -- request skips that subquery (a sort of all its ids): an id it repeats within itself is
    -- refused by the service's validation, and would fail the insert either way.
    SELECT coalesce(array_agg(s.name), '{}'), coalesce(array_agg(s.version), '{}'),
           (SELECT coalesce(array_agg(e.event_id), '{}') FROM events e WHERE e.event_id = ANY (p_ids)),
           CASE WHEN cardinality(p_streams) > 1 THEN
               (SELECT coalesce(array_agg(r.id), '{}')
                  FROM (SELECT u.id FROM unnest(p_ids) AS u (id) GROUP BY u.id HAVING count(*) > 1) r)
           ELSE '{}' END
      INTO s_names, s_versions, v_stored, v_repeated
      FROM streams s
     WHERE s.name = ANY (p_streams);

    -- One pass more than there are requests: the last one writes what is left (so the write
    -- statement is written once).
    FOR i IN 1 .. coalesce(array_length(p_streams, 1), 0) + 1 LOOP
        v_last := i > coalesce(array_length(p_streams, 1), 0);
        v_n := p_counts[i];
        v_ids := p_ids[v_offset + 1 : v_offset + v_n];
        v_stream := p_streams[i];

        -- The write: the accepted requests' events, their tags, their streams' versions, and the
        -- head, set-based in one statement (data-modifying CTEs all run, referenced or not).
        -- No subscripts on the per-event arrays: inside an SQL statement they are constants in
        -- the flat form, and p_data[i] on a variable-width array walks it from its start, so a
        -- write of n events cost O(n^2) (a 20,000-event write took ~100x the CPU of a 2,000-event
        -- one). The arrays are read once, in order, by unnest ... WITH ORDINALITY, and joined on
        -- the event's index to the accepted requests expanded one row per event by
        -- generate_series. Events of refused requests find no partner in the join. The tags are
        -- inserted from what the events' insert returns, so the join is made once; a tag repeated
        -- within an event is indexed once, deduplicated per event (a sort of a few rows) rather
        -- than by a UNION over the whole group's tags (a sort of them all: ~15% of a
        -- 20,000-event write's CPU); the event_type rows cannot repeat a tag's (that key is left
        -- out). Each write moves the head to what is written so far (a second write in a group,
        -- rare, moves it again); a group that accepted nothing leaves the head row as it was.
        IF cardinality(w_count) > 0 AND (v_last
               OR (cardinality(v_repeated) > 0 AND v_ids && v_repeated AND v_ids && g_ids)
               OR (p_subsets[i] IS NOT NULL AND p_expected[i] <> -2 AND v_stream = ANY (w_stream))) THEN
            WITH accepted AS (
                SELECT (w.off + k)::bigint AS idx, w.pos + k - 1 AS pos, w.pos + w.cnt - 1 AS commit_pos,
                       w.stream, w.ver + k - 1 AS ver
                  FROM unnest(w_offset, w_count, w_position, w_version, w_stream) AS w (off, cnt, pos, ver, stream),
                       generate_series(1, w.cnt) AS k
            ), stored AS (
                INSERT INTO events (position, commit_position, stream_name, stream_version, event_id, event_type,
                                    data, metadata, tags)
                SELECT a.pos, a.commit_pos, a.stream, a.ver, e.id, e.type, e.data, e.metadata, e.tags
                  FROM accepted a
                  JOIN unnest(p_ids, p_types, p_data, p_metadata, p_tags) WITH ORDINALITY
                       AS e (id, type, data, metadata, tags, idx)
                    ON e.idx = a.idx
                RETURNING position, event_type, tags
            ), streamed AS (
                INSERT INTO streams AS s (name, version, updated_at)
                SELECT DISTINCT ON (w.stream) w.stream, w.ver + w.cnt - 1, now()
                  FROM unnest(w_count, w_position, w_version, w_stream) AS w (cnt, pos, ver, stream)
                 ORDER BY w.stream, w.pos DESC
                ON CONFLICT (name) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at
            ), moved AS (
                -- RETURNING is evaluated for every updated row, read or not: the notification
                -- (see the header) costs no statement of its own.
                UPDATE head SET position = v_head WHERE singleton
                RETURNING pg_notify('orisun_appended',
                                    json_build_object('schema', current_schema(), 'head', v_head)::text)
            )
            INSERT INTO event_tags (key, value, position)
            SELECT t.key, t.value, s.position
              FROM stored s,
                   LATERAL (SELECT DISTINCT tag ->> 0 AS key, tag ->> 1 AS value
                              FROM jsonb_array_elements(s.tags) AS tag
                             WHERE tag ->> 0 NOT IN ('event_type', 'eventType')) t
            UNION ALL
            SELECT 'event_type', s.event_type, s.position
              FROM stored s;
            v_stored := v_stored || g_ids;
            g_ids := '{}';
            w_offset := '{}'; w_count := '{}'; w_position := '{}'; w_version := '{}'; w_stream := '{}';
        END IF;
        EXIT WHEN v_last;
        r_request := i;
        r_outcome := NULL; r_commit := NULL; r_prepare := NULL; r_version := NULL; r_detail := NULL;

        IF v_ids && v_stored THEN
            SELECT array_agg(e.position ORDER BY o.k), array_agg(e.commit_position ORDER BY o.k),
                   array_agg(e.stream_name = v_stream ORDER BY o.k), array_agg(e.event_type ORDER BY o.k),
                   array_agg(e.data ORDER BY o.k), array_agg(e.metadata ORDER BY o.k),
                   array_agg(e.tags ORDER BY o.k), max(e.stream_version)
              INTO x_position, x_commit, x_stream, x_types, x_data, x_metadata, x_tags, x_version
              FROM unnest(v_ids) WITH ORDINALITY AS o (id, k)
              LEFT JOIN events e ON e.event_id = o.id;
            x_first := NULL;
            -- One write, whole and in order: every id stored, all with the first one's
            -- commit_position C, at positions C - n + 1 .. C (so the last one is at C).
            x_end := x_commit[1];
            x_write := x_end IS NOT NULL;
            FOR k IN 1 .. v_n LOOP
                IF x_position[k] IS NULL THEN
                    x_write := false;
                    CONTINUE;
                END IF;
                x_first := coalesce(x_first, k);
                IF NOT x_stream[k] THEN
                    r_detail := v_ids[k]::text || ' stream';
                    EXIT;
                END IF;
                IF x_types[k] <> p_types[v_offset + k] OR x_data[k] <> p_data[v_offset + k]
                   OR x_metadata[k] <> p_metadata[v_offset + k] OR x_tags[k] <> p_tags[v_offset + k] THEN
                    r_detail := v_ids[k]::text || ' content';
                    EXIT;
                END IF;
                x_write := x_write AND x_commit[k] = x_end AND x_position[k] = x_end - v_n + k;
            END LOOP;
            -- ... and the write does not begin before C - n + 1 (the tail of a write is not one).
            IF r_detail IS NULL AND x_write THEN
                x_write := NOT EXISTS (SELECT 1 FROM events e WHERE e.position = x_end - v_n AND e.commit_position = x_end);
            END IF;
            IF r_detail IS NULL AND x_write THEN
                r_outcome := 'idempotent';
                r_commit := x_end;
                r_prepare := x_end;
                r_version := x_version;
            ELSE
                r_outcome := 'duplicate';
                r_detail := coalesce(r_detail, v_ids[x_first]::text || ' write');
            END IF;
        ELSE
            v_at := array_position(s_names, v_stream);
            v_current := CASE WHEN v_at IS NULL THEN -1 ELSE s_versions[v_at] END;
            v_actual := v_current;
            IF p_expected[i] <> -2 AND p_subsets[i] IS NOT NULL THEN
                v_actual := last_matching_version(v_stream, p_subsets[i]);
            END IF;

            IF p_expected[i] <> -2 AND v_actual <> p_expected[i] THEN
                r_outcome := 'conflict';
                r_version := v_actual;
                r_detail := format('expected %s, actual %s', p_expected[i], v_actual);
            ELSE
                w_offset := w_offset || v_offset;
                w_count := w_count || v_n;
                w_position := w_position || (v_head + 1);
                w_version := w_version || (v_current + 1);
                w_stream := w_stream || v_stream;
                IF cardinality(v_repeated) > 0 THEN
                    g_ids := g_ids || v_ids;
                END IF;
                IF v_at IS NULL THEN
                    s_names := s_names || v_stream;
                    s_versions := s_versions || (v_current + v_n);
                ELSE
                    s_versions[v_at] := v_current + v_n;
                END IF;
                v_head := v_head + v_n;
                r_outcome := 'ok';
                r_commit := v_head;
                r_prepare := v_head;
                r_version := v_current + v_n;
            END IF;
        END IF;

        RETURN NEXT;
        v_offset := v_offset + v_n;
    END LOOP;
END;
$$;

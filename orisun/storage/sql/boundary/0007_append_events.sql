-- Appends a group of SaveEvents requests in one transaction, in one round trip (group commit,
-- docs/contract.md §2). Requests are taken in order; each is checked against the state that
-- includes the requests before it, and gets its own outcome, so one bad request never fails its
-- neighbours:
--   ok          appended; r_commit = r_prepare = the position of its last event, r_version = the
--               stream's new version
--   idempotent  all its event ids are stored already, in this stream and this order: the result
--               of the original write (its last event's position and version)
--   duplicate   some event id is stored already otherwise; r_detail names the first such id
--   conflict    the expected version does not hold; r_version = actual, r_detail = 'expected N, actual M'
-- Positions: the head row is locked FOR UPDATE until commit, so one writer per boundary, across
-- every Orisun node on this database, assigns dense positions in commit order.
--
-- Cost: the stream versions and the already-stored ids of the whole group are read once up
-- front, checks run in memory, and the accepted events are written set-based by store_events
-- at the end, so a group of many small requests costs a handful of statements, not a handful
-- per request. Only checks that must see earlier events of the same group in the tables (a
-- reused id, a subsetQuery on a stream the group already wrote) store those events first.
--
-- Per request (arrays indexed by request): p_streams, p_expected (-1 no stream yet, -2 any, N),
-- p_subsets (subsetQuery criteria as in last_matching_version, or NULL), p_counts (its number of
-- events). Per event (all requests' events concatenated in order): p_ids, p_types, p_data,
-- p_metadata (stored exactly as given), p_tags ([[key, value], ...] exactly as saved).
CREATE FUNCTION append_events(
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
AS $$
DECLARE
    v_head     bigint;
    v_offset   integer := 0;
    v_n        integer;
    v_ids      uuid[];
    v_found    integer;
    v_same     boolean;
    v_at       integer;
    v_current  integer;
    v_actual   integer;
    -- Stream versions: the stored ones, then as this group's accepted requests leave them.
    s_names    text[];
    s_versions integer[];
    -- Ids of this group already in the events table.
    v_stored   uuid[];
    -- Ids accepted by this group and not yet written.
    g_ids      uuid[] := '{}';
    -- Accepted requests not yet written (see store_events).
    w_offset   integer[] := '{}';
    w_count    integer[] := '{}';
    w_position bigint[] := '{}';
    w_version  integer[] := '{}';
    w_stream   text[] := '{}';
BEGIN
    SELECT h.position INTO v_head FROM head h WHERE h.singleton FOR UPDATE;
    SELECT coalesce(array_agg(s.name), '{}'), coalesce(array_agg(s.version), '{}')
      INTO s_names, s_versions
      FROM streams s
     WHERE s.name = ANY (p_streams);
    SELECT coalesce(array_agg(e.event_id), '{}') INTO v_stored FROM events e WHERE e.event_id = ANY (p_ids);

    FOR i IN 1 .. coalesce(array_length(p_streams, 1), 0) LOOP
        v_n := p_counts[i];
        v_ids := p_ids[v_offset + 1 : v_offset + v_n];
        r_request := i;
        r_commit := NULL; r_prepare := NULL; r_version := NULL; r_detail := NULL;

        IF cardinality(w_count) > 0 AND (
               v_ids && g_ids
               OR (p_subsets[i] IS NOT NULL AND p_expected[i] <> -2 AND p_streams[i] = ANY (w_stream))) THEN
            PERFORM store_events(w_offset, w_count, w_position, w_version, w_stream,
                                 p_ids, p_types, p_data, p_metadata, p_tags);
            v_stored := v_stored || g_ids;
            g_ids := '{}';
            w_offset := '{}'; w_count := '{}'; w_position := '{}'; w_version := '{}'; w_stream := '{}';
        END IF;

        IF v_ids && v_stored THEN
            SELECT count(*)::integer,
                   bool_and(e.stream_name = p_streams[i]) AND array_agg(e.event_id ORDER BY e.position) = v_ids
              INTO v_found, v_same
              FROM events e
             WHERE e.event_id = ANY (v_ids);
            IF v_found = v_n AND v_same THEN
                r_outcome := 'idempotent';
                SELECT e.commit_position, e.position, e.stream_version INTO r_commit, r_prepare, r_version
                  FROM events e
                 WHERE e.event_id = v_ids[v_n];
            ELSE
                r_outcome := 'duplicate';
                SELECT e.event_id::text INTO r_detail
                  FROM events e
                 WHERE e.event_id = ANY (v_ids)
                 ORDER BY array_position(v_ids, e.event_id)
                 LIMIT 1;
            END IF;
        ELSE
            v_at := array_position(s_names, p_streams[i]);
            v_current := CASE WHEN v_at IS NULL THEN -1 ELSE s_versions[v_at] END;
            v_actual := v_current;
            IF p_expected[i] <> -2 AND p_subsets[i] IS NOT NULL THEN
                v_actual := last_matching_version(p_streams[i], p_subsets[i]);
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
                w_stream := w_stream || p_streams[i];
                g_ids := g_ids || v_ids;
                IF v_at IS NULL THEN
                    s_names := s_names || p_streams[i];
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

    IF cardinality(w_count) > 0 THEN
        PERFORM store_events(w_offset, w_count, w_position, w_version, w_stream,
                             p_ids, p_types, p_data, p_metadata, p_tags);
    END IF;
    UPDATE head SET position = v_head WHERE singleton;
END;
$$;

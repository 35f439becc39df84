-- Appends a group of SaveEvents requests in one transaction, in one round trip (group commit,
-- contract section 2). Requests are taken in order; each is checked against the state that
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
    v_head    bigint;
    v_offset  integer := 0;
    v_n       integer;
    v_ids     uuid[];
    v_found   integer;
    v_same    boolean;
    v_current integer;
    v_actual  integer;
BEGIN
    SELECT h.position INTO v_head FROM head h WHERE h.singleton FOR UPDATE;

    FOR i IN 1 .. coalesce(array_length(p_streams, 1), 0) LOOP
        v_n := p_counts[i];
        v_ids := p_ids[v_offset + 1 : v_offset + v_n];
        r_request := i;
        r_commit := NULL; r_prepare := NULL; r_version := NULL; r_detail := NULL;

        SELECT count(*)::integer,
               bool_and(e.stream_name = p_streams[i]) AND array_agg(e.event_id ORDER BY e.position) = v_ids
          INTO v_found, v_same
          FROM events e
         WHERE e.event_id = ANY (v_ids);

        IF v_found > 0 THEN
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
            SELECT s.version INTO v_current FROM streams s WHERE s.name = p_streams[i];
            v_current := coalesce(v_current, -1);
            v_actual := v_current;
            IF p_expected[i] <> -2 AND p_subsets[i] IS NOT NULL THEN
                v_actual := last_matching_version(p_streams[i], p_subsets[i]);
            END IF;

            IF p_expected[i] <> -2 AND v_actual <> p_expected[i] THEN
                r_outcome := 'conflict';
                r_version := v_actual;
                r_detail := format('expected %s, actual %s', p_expected[i], v_actual);
            ELSE
                INSERT INTO events (position, commit_position, stream_name, stream_version, event_id, event_type,
                                    data, metadata, tags)
                SELECT v_head + k, v_head + v_n, p_streams[i], v_current + k, p_ids[v_offset + k],
                       p_types[v_offset + k], p_data[v_offset + k], p_metadata[v_offset + k], p_tags[v_offset + k]
                  FROM generate_series(1, v_n) AS k;

                INSERT INTO event_tags (key, value, position)
                SELECT DISTINCT tag ->> 0, tag ->> 1, v_head + k
                  FROM generate_series(1, v_n) AS k, jsonb_array_elements(p_tags[v_offset + k]) AS tag
                 WHERE tag ->> 0 NOT IN ('event_type', 'eventType')
                UNION
                SELECT 'event_type', p_types[v_offset + k], v_head + k
                  FROM generate_series(1, v_n) AS k;

                INSERT INTO streams AS s (name, version, updated_at)
                VALUES (p_streams[i], v_current + v_n, now())
                ON CONFLICT (name) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at;

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

    UPDATE head SET position = v_head WHERE singleton;
END;
$$;

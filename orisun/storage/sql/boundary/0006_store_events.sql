-- Writes the events of accepted requests, set-based: used by append_events, which decides
-- positions and versions and calls this once per group (or early, when a later request's check
-- needs the group's earlier events stored).
-- Per accepted request: w_offset (its first event's index in the p_* arrays, minus one), w_count,
-- w_position (its first event's position), w_version (its first event's stream version),
-- w_stream. The p_* arrays are append_events' per-event arguments.
-- PL/pgSQL rather than SQL: it keeps its three plans for the session, where a SQL function here
-- was planned on every call (~1 ms).
CREATE FUNCTION store_events(
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
AS $$
BEGIN
    INSERT INTO events (position, commit_position, stream_name, stream_version, event_id, event_type, data,
                        metadata, tags)
    SELECT w.pos + k - 1, w.pos + w.cnt - 1, w.stream, w.ver + k - 1, p_ids[w.off + k], p_types[w.off + k],
           p_data[w.off + k], p_metadata[w.off + k], p_tags[w.off + k]
      FROM unnest(w_offset, w_count, w_position, w_version, w_stream) AS w (off, cnt, pos, ver, stream),
           generate_series(1, w.cnt) AS k;

    INSERT INTO event_tags (key, value, position)
    SELECT tag ->> 0, tag ->> 1, w.pos + k - 1
      FROM unnest(w_offset, w_count, w_position) AS w (off, cnt, pos),
           generate_series(1, w.cnt) AS k,
           jsonb_array_elements(p_tags[w.off + k]) AS tag
     WHERE tag ->> 0 NOT IN ('event_type', 'eventType')
    UNION
    SELECT 'event_type', p_types[w.off + k], w.pos + k - 1
      FROM unnest(w_offset, w_count, w_position) AS w (off, cnt, pos),
           generate_series(1, w.cnt) AS k;

    INSERT INTO streams AS s (name, version, updated_at)
    SELECT DISTINCT ON (w.stream) w.stream, w.ver + w.cnt - 1, now()
      FROM unnest(w_count, w_position, w_version, w_stream) AS w (cnt, pos, ver, stream)
     ORDER BY w.stream, w.pos DESC
    ON CONFLICT (name) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at;
END;
$$;

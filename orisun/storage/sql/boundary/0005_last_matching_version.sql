-- The version of the last event of stream p_stream that matches p_criteria, or -1 if none does:
-- the "actual" version of a SaveEvents consistency check narrowed by subsetQuery
-- (docs/contract.md §3). p_criteria is [[[key, value], ...], ...]: criteria OR'd, the tags of one criterion
-- AND'd, with the event_type pseudo-tag already spelled 'event_type' (it is indexed under that key).
-- Walks the stream newest first through UNIQUE (stream_name, stream_version) and stops at the
-- first match.
CREATE FUNCTION last_matching_version(p_stream text, p_criteria jsonb) RETURNS integer
LANGUAGE sql STABLE
SET search_path FROM CURRENT
AS $$
    SELECT coalesce((
        SELECT e.stream_version
          FROM events e
         WHERE e.stream_name = p_stream
           AND EXISTS (
                SELECT 1
                  FROM jsonb_array_elements(p_criteria) AS criterion
                 WHERE NOT EXISTS (
                        SELECT 1
                          FROM jsonb_array_elements(criterion) AS tag
                         WHERE NOT EXISTS (
                                SELECT 1
                                  FROM event_tags t
                                 WHERE t.key = tag ->> 0
                                   AND t.value = tag ->> 1
                                   AND t.position = e.position)))
         ORDER BY e.stream_version DESC
         LIMIT 1), -1);
$$;

-- store_events (migration 0006, later sql/functions/boundary/store_events.sql) was folded into
-- append_events: calling a second function with SET clauses per group cost a large share of a
-- 1-event append (see append_events.sql). Nothing calls it any more.
DROP FUNCTION IF EXISTS store_events(integer[], integer[], bigint[], integer[], text[], uuid[], text[], text[],
                                     text[], jsonb[]);

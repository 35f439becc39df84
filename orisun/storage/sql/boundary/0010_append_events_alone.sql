-- append_events now does alone what it did with two helpers, which cost a large share of a
-- 1-event append (see sql/functions/boundary/append_events.sql):
-- - store_events (0006, later sql/functions/boundary/store_events.sql) was a second function
--   call with SET clauses per group: its statement is part of append_events' write.
-- - The trigger head_appended (0009) ran notify_appended (0008) for every head update: an after
--   trigger and a PL/pgSQL call per group. append_events' write notifies on the same channel
--   with the same payload, once per head update as before.
DROP TRIGGER IF EXISTS head_appended ON head;
DROP FUNCTION IF EXISTS notify_appended();
DROP FUNCTION IF EXISTS store_events(integer[], integer[], bigint[], integer[], text[], uuid[], text[], text[],
                                     text[], jsonb[]);

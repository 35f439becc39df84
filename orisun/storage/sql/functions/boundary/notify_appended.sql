-- Tells every Orisun node that a boundary's head moved: the node publishing the boundary's live
-- feed learns of writes made through other nodes, and every node's subscribers learn that events
-- exist even while the feed is down. Delivered at commit, never for a rolled-back write.
-- Fired by the trigger head_appended (migration 0009).
-- Channel: orisun_appended; payload: {"schema": ..., "head": <last committed position>}.
CREATE OR REPLACE FUNCTION notify_appended() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(
        'orisun_appended',
        json_build_object('schema', TG_TABLE_SCHEMA, 'head', NEW.position)::text
    );
    RETURN NULL;
END;
$$;

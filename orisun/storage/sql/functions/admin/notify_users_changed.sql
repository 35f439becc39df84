-- Tells every Orisun node that a user changed or went away, so each node drops the credentials it
-- cached for that user at once (a deleted user must not keep authenticating until a restart).
-- Fired by the trigger users_changed (admin migration 0003).
-- Channel: orisun_users_changed; payload: {"schema": ..., "username": ...}.
-- PostgreSQL refuses a NOTIFY payload of 8,000 bytes or more, and with it the whole statement:
-- a user whose name made the payload that long could not be updated or deleted at all (usernames
-- were unlimited before the 128-character limit). For such a name the payload names no user
-- ("username": null), and every node then forgets all its cached credentials: rare, and safe.
CREATE OR REPLACE FUNCTION notify_users_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    payload text := json_build_object('schema', TG_TABLE_SCHEMA, 'username', OLD.username)::text;
BEGIN
    IF octet_length(payload) > 7900 THEN
        payload := json_build_object('schema', TG_TABLE_SCHEMA, 'username', NULL)::text;
    END IF;
    PERFORM pg_notify('orisun_users_changed', payload);
    RETURN NULL;
END;
$$;

-- Tells every Orisun node that a user changed or went away, so each node drops the credentials it
-- cached for that user at once (a deleted user must not keep authenticating until a restart).
-- Channel: orisun_users_changed; payload: {"schema": ..., "username": ...}.
CREATE FUNCTION notify_users_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(
        'orisun_users_changed',
        json_build_object('schema', TG_TABLE_SCHEMA, 'username', OLD.username)::text
    );
    RETURN NULL;
END;
$$;

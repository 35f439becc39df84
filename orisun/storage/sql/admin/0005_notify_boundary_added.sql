-- Tells every Orisun node and worker that a boundary was added to the catalog, so each serves it
-- at once, without a restart. Channel: orisun_boundaries; payload: {"name": ..., "schema": ...}.
-- The current body is sql/functions/admin/notify_boundary_added.sql.
CREATE FUNCTION notify_boundary_added() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('orisun_boundaries', json_build_object('name', NEW.name, 'schema', NEW.schema_name)::text);
    RETURN NULL;
END;
$$;

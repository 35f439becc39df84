-- Trigger function of the boundary catalog (migration 0006): tells every node and worker, at
-- commit, that a boundary was added. Channel orisun_boundaries; payload {"name", "schema"}.
CREATE OR REPLACE FUNCTION notify_boundary_added() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('orisun_boundaries', json_build_object('name', NEW.name, 'schema', NEW.schema_name)::text);
    RETURN NULL;
END;
$$;

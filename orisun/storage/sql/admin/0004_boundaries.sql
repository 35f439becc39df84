-- The boundary catalog: every boundary Orisun serves, those of ORISUN_PG_SCHEMAS (recorded at each
-- start, existed_before_catalog = true) and those created at runtime by CreateBoundary. Every node
-- and worker serves what this table lists. Only the admin boundary's schema has this table.
CREATE TABLE boundaries (
    name                   text PRIMARY KEY,
    -- The PostgreSQL schema holding the boundary's events; one boundary per schema.
    schema_name            text NOT NULL UNIQUE,
    description            text NOT NULL DEFAULT '',
    -- True when the schema was not made by CreateBoundary: configured, or adopted.
    existed_before_catalog boolean NOT NULL DEFAULT false,
    created_at             timestamptz NOT NULL DEFAULT now()
);

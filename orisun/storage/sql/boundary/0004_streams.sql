-- Each stream's current (last) version, so the writer's concurrency check is one primary-key
-- lookup that no query plan can turn into a table scan, and so streams can be listed.
CREATE TABLE streams (
    name       text PRIMARY KEY,
    version    integer NOT NULL CHECK (version >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- One row per event of the boundary.
-- position is the event's own global position (the proto's prepare_position): dense, 1, 2, 3, ...
-- assigned in commit order by the boundary's single writer; commit_position is the position of the
-- last event of the write that stored it. data and metadata are kept as the exact text the client
-- sent, so they come back byte-for-byte. tags keeps the tags exactly as saved (order, duplicates);
-- event_tags indexes them for queries.
CREATE TABLE events (
    position        bigint PRIMARY KEY CHECK (position > 0),
    commit_position bigint NOT NULL CHECK (commit_position >= position),
    stream_name     text NOT NULL,
    stream_version  integer NOT NULL CHECK (stream_version >= 0),
    event_id        uuid NOT NULL UNIQUE,
    event_type      text NOT NULL,
    data            text NOT NULL,
    metadata        text NOT NULL,
    tags            jsonb NOT NULL DEFAULT '[]',
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- A safety net under the writer's own version check.
    UNIQUE (stream_name, stream_version)
);

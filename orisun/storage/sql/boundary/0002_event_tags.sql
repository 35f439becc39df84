-- The tag index: one row per distinct (key, value) of an event. The primary key is the B-tree on
-- (key, value, position) that keeps tag queries fast at millions of events (GIN over JSONB does
-- not: contract section 4).
CREATE TABLE event_tags (
    key      text NOT NULL,
    value    text NOT NULL,
    position bigint NOT NULL REFERENCES events (position),
    PRIMARY KEY (key, value, position)
);

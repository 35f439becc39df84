-- The tag index: one row per distinct (key, value) of an event, plus ('event_type', <type>) for its
-- type, so that the query pseudo-tag event_type (docs/contract.md §4) uses the same index. The
-- primary key is the B-tree on (key, value, position) that keeps tag queries fast at millions of
-- events (GIN over JSONB does not). A stored tag whose key is event_type or eventType is not
-- indexed: queries read those keys as the pseudo-tag, so it could never be matched anyway.
-- No foreign key to events: rows are only written together with their event (store_events), and
-- a foreign key would lock the event row once per tag.
CREATE TABLE event_tags (
    key      text NOT NULL,
    value    text NOT NULL,
    position bigint NOT NULL,
    PRIMARY KEY (key, value, position)
);

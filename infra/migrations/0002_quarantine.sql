-- The quarantine: messages a consumer of this service could not process,
-- kept with their bytes and where they came from, until an operator replays
-- them (points quarantine replay). Runs with search_path = the service's schema.

CREATE TABLE quarantine (
    id               bigserial   PRIMARY KEY,
    consumer         text        NOT NULL,
    topic            text        NOT NULL,
    kafka_partition  integer     NOT NULL,
    kafka_offset     bigint      NOT NULL,
    kafka_timestamp  bigint      NOT NULL,
    key              bytea,
    value            bytea,
    headers          jsonb       NOT NULL DEFAULT '[]'::jsonb,
    event_id         uuid,
    error_type       text        NOT NULL,
    error            text        NOT NULL,
    attempts         integer     NOT NULL,
    -- What was done about it: NULL while it waits for an operator; 'failed'
    -- when its request was given a terminal failed result (replaying it would
    -- contradict that answer); 'replayed' once sent to its topic again.
    resolution       text        CHECK (resolution IN ('failed', 'replayed')),
    quarantined_at   timestamptz NOT NULL DEFAULT now(),
    resolved_at      timestamptz,
    -- Consumers of several environments may meet the same message; one row.
    -- The timestamp tells apart two messages at one offset of a broker that
    -- lost its log and began again.
    UNIQUE (topic, kafka_partition, kafka_offset, kafka_timestamp)
);

CREATE INDEX quarantine_waiting ON quarantine (id) WHERE resolution IS NULL;

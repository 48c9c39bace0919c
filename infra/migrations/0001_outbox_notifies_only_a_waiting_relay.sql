-- NOTIFY serialises the commits of every notifying transaction in the
-- database: each holds the notification queue's lock until its commit record
-- is flushed, so writers that all notify pay for their fsyncs one at a time
-- (the gateway, writing one outbox row per request, measured this as its
-- throughput ceiling and its tail latency). Only a relay that is waiting needs
-- waking: it says so here, and writers notify only then. A busy relay finds
-- new rows on its next pass anyway. Runs with search_path = the service's schema.

CREATE TABLE outbox_relay (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    waiting  boolean NOT NULL
);
INSERT INTO outbox_relay (waiting) VALUES (true);

CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT waiting FROM outbox_relay) THEN
        PERFORM pg_notify(TG_TABLE_SCHEMA || '_outbox', '');
    END IF;
    RETURN NULL;
END;
$$;

-- Inbox rows are purged once no redelivery of their event is possible
-- (infra/retention.py, decision 0022): long enough after processing, and once
-- the consumer group's committed offset is past the event. The row says where
-- its event was read (NULL for claims made outside a consumer), and the purge
-- finds old rows by topic and age. Runs with search_path = the service's schema.

ALTER TABLE inbox
    ADD COLUMN kafka_partition integer,
    ADD COLUMN kafka_offset    bigint;

CREATE INDEX inbox_by_age ON inbox (topic, processed_at);

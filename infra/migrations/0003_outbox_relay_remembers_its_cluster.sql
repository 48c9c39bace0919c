-- The Kafka cluster the relay last published to (its cluster id). A relay that
-- finds itself talking to another cluster (a broker that lost its log, a
-- cluster replaced, the embedded broker started again) publishes again what
-- it published within the outbox's retention, so nothing committed is lost
-- with the old cluster's log. NULL until a relay first publishes: it then
-- remembers the cluster it finds, without republishing anything.
-- Runs with search_path = the service's schema.

ALTER TABLE outbox_relay ADD COLUMN cluster_id text;


-- A business reads its own organisation's callbacks (issue 20, the callback
-- log): newest first, optionally one client's, optionally one status, a page
-- at a time. Runs with search_path = notifier.

-- When the last attempt was answered, or gave up (a timeout has no answer):
-- updated_at also moves when a worker claims a delivery or it is replayed.
ALTER TABLE deliveries ADD COLUMN last_attempt_at timestamptz;

-- A page is read as one short index range per status, merged (see
-- repository.CALLBACK_LOG): a page costs the same for an organisation with a
-- handful of callbacks and for one with millions, parked ones as much as
-- delivered ones. One index for the organisation's log, one for a client's.
CREATE INDEX deliveries_callback_log
    ON deliveries (org_id, status, id DESC)
    WHERE kind = 'callback';
CREATE INDEX deliveries_callback_log_by_client
    ON deliveries (org_id, client_id, status, id DESC)
    WHERE kind = 'callback';

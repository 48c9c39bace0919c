-- A points.expired result can arrive before its client's clients.lifecycle.v1
-- event (the two topics are consumed apart). Where its callback goes is the
-- client's expiry callback URL, which only that event brings, so the callback
-- waits here, body and all, until the client's projection turns it into a
-- delivery (or drops it, when the client registered no such URL). Runs with
-- search_path = notifier.

CREATE TABLE expiries_awaiting_client (
    -- The delivery's id once queued (derived from the ledger's expiry id).
    delivery_id    uuid        PRIMARY KEY,
    client_id      text        NOT NULL,
    org_id         text        NOT NULL,
    environment    text        NOT NULL,
    request_id     text        NOT NULL,
    transaction_id uuid        NOT NULL,
    body           bytea       NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX expiries_awaiting_client_by_client ON expiries_awaiting_client (client_id);

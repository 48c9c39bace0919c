-- Whether each API client is revoked, projected from clients.lifecycle.v1, so
-- the read API refuses a revoked client's token at once rather than when it
-- expires. Versioned by the event's time, so a replay is safe.
-- Runs with search_path = ledger.

CREATE TABLE client_standing (
    client_id   text PRIMARY KEY,
    revoked     boolean NOT NULL,
    occurred_at timestamptz NOT NULL
);

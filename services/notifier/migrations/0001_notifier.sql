-- The notifier's tables (search_path = notifier; infra's 0000 migration
-- already created outbox and inbox here).

-- What the notifier knows of each API client, projected from
-- clients.lifecycle.v1: enough to derive its callback-signing secret.
CREATE TABLE clients (
    client_id        text        PRIMARY KEY,
    org_id           text        NOT NULL,
    environment      text        NOT NULL,
    status           text        NOT NULL CHECK (status IN ('active', 'revoked')),
    signing_key_salt text        NOT NULL,
    -- occurred_at of the event that wrote this row; older events are ignored.
    occurred_at      timestamptz NOT NULL
);

-- One signed callback per points result, with its retry state. The body is
-- the exact bytes signed and sent, so every attempt sends the same thing.
CREATE TABLE deliveries (
    id               bigserial   PRIMARY KEY,
    event_id         uuid        NOT NULL UNIQUE,
    client_id        text        NOT NULL,
    org_id           text        NOT NULL,
    environment      text        NOT NULL,
    request_id       text        NOT NULL,
    transaction_id   uuid        NOT NULL,
    url              text        NOT NULL,
    -- Lower-cased host of url: deliveries to a saturated host are skipped.
    host             text        NOT NULL,
    body             bytea       NOT NULL,
    status           text        NOT NULL DEFAULT 'pending'
                                 CHECK (status IN ('pending', 'delivered', 'parked')),
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    -- Lease of the worker sending it; a worker that dies loses it when it expires.
    locked_until     timestamptz,
    last_status_code integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz
);

CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_by_status ON deliveries (status, updated_at DESC);

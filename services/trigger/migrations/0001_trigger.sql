-- The gateway's projections of rules and clients, its cap reservations and
-- its idempotency records. Runs with search_path = trigger.

CREATE TABLE rules (
    rule_id                text PRIMARY KEY,
    org_id                 text NOT NULL,
    environment            text NOT NULL,
    name                   text NOT NULL,
    type                   text NOT NULL,
    status                 text NOT NULL,
    api_trigger            boolean NOT NULL,
    authorized_client_ids  text[] NOT NULL,
    cap_max                bigint,
    cap_per_member         bigint,
    max_amount_per_request bigint,
    starts_at              timestamptz,
    ends_at                timestamptz,
    version                integer NOT NULL,
    projected_at           timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE clients (
    client_id   text PRIMARY KEY,
    org_id      text NOT NULL,
    environment text NOT NULL,
    status      text NOT NULL,
    occurred_at timestamptz NOT NULL
);

-- Points reserved against a rule's capMax, and against capPerMember.
CREATE TABLE cap_usage (
    rule_id text PRIMARY KEY,
    used    bigint NOT NULL CHECK (used >= 0)
);

CREATE TABLE member_cap_usage (
    rule_id text NOT NULL,
    user_id text NOT NULL,
    used    bigint NOT NULL CHECK (used >= 0),
    PRIMARY KEY (rule_id, user_id)
);

CREATE TABLE requests (
    client_id      text NOT NULL,
    request_id     text NOT NULL,
    transaction_id uuid NOT NULL UNIQUE,
    body_hash      text NOT NULL,
    org_id         text NOT NULL,
    environment    text NOT NULL,
    rule_id        text NOT NULL,
    rule_version   integer NOT NULL,
    user_id        text NOT NULL,
    type           text NOT NULL,
    amount         bigint NOT NULL,
    -- What this request reserved, so a rejection frees exactly that even if
    -- the rule's caps changed since.
    cap_reserved        bigint NOT NULL DEFAULT 0,
    member_cap_reserved bigint NOT NULL DEFAULT 0,
    status         text NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'succeeded', 'failed')),
    reason         text,
    balance        bigint,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (client_id, request_id)
);
CREATE INDEX requests_created ON requests (created_at);

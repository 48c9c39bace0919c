-- Organisations, their business users and API clients, rules, signing keys
-- and the audit log. Runs with search_path = rules.

CREATE TABLE organisations (
    id         text PRIMARY KEY,
    name       text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    timezone   text NOT NULL DEFAULT 'UTC',
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id            text PRIMARY KEY,
    org_id        text NOT NULL REFERENCES organisations (id),
    email         text NOT NULL,
    password_hash text NOT NULL,
    role          text NOT NULL CHECK (role IN ('admin', 'editor', 'viewer')),
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email ON users (lower(email));

CREATE TABLE api_clients (
    id                   text PRIMARY KEY,
    org_id               text NOT NULL REFERENCES organisations (id),
    environment          text NOT NULL CHECK (environment IN ('staging', 'production')),
    name                 text NOT NULL,
    secret_hash          text NOT NULL,
    -- During a rotation's overlap the previous secret keeps working until then.
    previous_secret_hash text,
    previous_valid_until timestamptz,
    signing_key_salt     text NOT NULL,
    status               text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    created_at           timestamptz NOT NULL DEFAULT now(),
    rotated_at           timestamptz,
    revoked_at           timestamptz
);
CREATE INDEX api_clients_org ON api_clients (org_id, environment);

CREATE TABLE signing_keys (
    kid         text PRIMARY KEY,
    private_pem text NOT NULL,
    public_jwk  jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    retired_at  timestamptz
);

CREATE TABLE rules (
    id                     text PRIMARY KEY,
    org_id                 text NOT NULL REFERENCES organisations (id),
    environment            text NOT NULL CHECK (environment IN ('staging', 'production')),
    name                   text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description            text NOT NULL DEFAULT '',
    type                   text NOT NULL CHECK (type IN ('earn', 'redeem')),
    status                 text NOT NULL DEFAULT 'draft'
                           CHECK (status IN ('draft', 'active', 'paused', 'archived')),
    api_trigger            boolean NOT NULL DEFAULT false,
    authorized_client_ids  text[] NOT NULL DEFAULT '{}',
    cap_max                bigint CHECK (cap_max > 0),
    cap_per_member         bigint CHECK (cap_per_member > 0),
    max_amount_per_request bigint CHECK (max_amount_per_request > 0),
    starts_at              timestamptz,
    ends_at                timestamptz,
    version                integer NOT NULL DEFAULT 1,
    promoted_from          text REFERENCES rules (id),
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    CHECK (ends_at IS NULL OR starts_at IS NULL OR ends_at > starts_at)
);
CREATE INDEX rules_org ON rules (org_id, environment);

CREATE TABLE audit_log (
    id         bigserial PRIMARY KEY,
    org_id     text NOT NULL,
    actor      text NOT NULL,
    action     text NOT NULL,
    subject_id text NOT NULL,
    details    jsonb NOT NULL DEFAULT '{}'::jsonb,
    at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_org ON audit_log (org_id, id DESC);

-- Console cookie sessions and the points each rule has moved. Runs with
-- search_path = rules.

-- One row per signed-in console. The cookie carries a random session id; only
-- its SHA-256 is kept, so a copy of this table does not let anyone sign in.
-- `csrf_secret` keys the HMAC of the session's CSRF tokens.
CREATE TABLE console_sessions (
    id_hash      bytea PRIMARY KEY CHECK (length(id_hash) = 32),
    user_id      text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    csrf_secret  bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX console_sessions_user ON console_sessions (user_id, expires_at);

-- Points each rule has moved, learnt from `points.results.v1` (applied results
-- only). No foreign key: a result must never be refused for naming a rule this
-- database does not hold.
CREATE TABLE rule_usage (
    rule_id    text PRIMARY KEY,
    used       bigint NOT NULL CHECK (used >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);

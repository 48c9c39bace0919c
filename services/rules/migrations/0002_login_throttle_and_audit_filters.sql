-- Login throttling counters (shared by every replica) and indexes for the
-- audit log's filters. Runs with search_path = rules.

-- One row per throttled key: an e-mail address (lower case) or a client IP.
-- `attempts` counts attempts in the fixed window that began at `window_started_at`;
-- a successful login clears its e-mail's row and gives its IP attempt back.
CREATE TABLE login_attempts (
    scope             text NOT NULL CHECK (scope IN ('email', 'ip')),
    key               text NOT NULL,
    attempts          integer NOT NULL CHECK (attempts >= 0),
    window_started_at timestamptz NOT NULL,
    PRIMARY KEY (scope, key)
);

CREATE INDEX audit_log_subject ON audit_log (org_id, subject_id, id DESC);
CREATE INDEX audit_log_actor ON audit_log (org_id, actor, id DESC);

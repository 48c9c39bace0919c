-- The retention purges (infra/retention.py) find expired console sessions and
-- idle sign-in throttle keys without reading the whole table.

CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);
CREATE INDEX sign_in_attempts_idle ON sign_in_attempts (last_attempt_at);

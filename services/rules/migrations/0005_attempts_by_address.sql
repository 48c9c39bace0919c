-- Sign-in attempts are throttled by who tries from where, with growing delays,
-- instead of a fixed window per e-mail address that let anyone lock any known
-- address out for everyone; client credentials at the token endpoint are
-- throttled the same way. Runs with search_path = rules.
--
-- One row per throttled key: `login` and `token` rows are an address with the
-- e-mail or client id it tried, `login-ip` and `token-ip` rows an address
-- alone. `attempts` counts the attempts let through since the key was last
-- quiet; past a free number, each must wait twice as long after the one
-- before (services/rules/throttle.py).

DROP TABLE login_attempts;

CREATE TABLE sign_in_attempts (
    scope           text NOT NULL CHECK (scope IN ('login', 'login-ip', 'token', 'token-ip')),
    key             text NOT NULL,
    attempts        integer NOT NULL CHECK (attempts >= 0),
    last_attempt_at timestamptz NOT NULL,
    PRIMARY KEY (scope, key)
);

-- Issue 20: API clients managed in the console. A client's own trigger rate
-- limit (null: the gateway's default, or whatever an operator set there before
-- the rate limit travelled on the client's lifecycle event), and when a token
-- was last issued to it (written at most once a minute a client, so it is
-- accurate to the minute). Runs with search_path = rules. The bounds are
-- contracts.limits.MOST_TRIGGERS_PER_CLIENT.

ALTER TABLE api_clients
    ADD COLUMN rate_limit_per_second double precision
        CHECK (rate_limit_per_second > 0 AND rate_limit_per_second <= 1000000),
    ADD COLUMN rate_limit_burst integer
        CHECK (rate_limit_burst BETWEEN 1 AND 1000000),
    ADD CONSTRAINT api_clients_whole_rate_limit
        CHECK ((rate_limit_per_second IS NULL) = (rate_limit_burst IS NULL)),
    ADD COLUMN last_token_issued_at timestamptz;

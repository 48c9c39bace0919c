-- Issue 19: an earn rule's expiry policy, the URL a client registers for the
-- `points.expired` callback, and the members a business blocked. Runs with
-- search_path = rules.

-- At most one policy, on earn rules only: the points a rule awards expire that
-- many days after they are awarded, or all at one instant. The limits are the
-- API's (contracts.limits.MAX_EXPIRY_DAYS).
ALTER TABLE rules
    ADD COLUMN points_expire_after_days integer
        CHECK (points_expire_after_days BETWEEN 1 AND 36500),
    ADD COLUMN points_expire_at timestamptz,
    ADD CONSTRAINT rules_one_expiry_policy
        CHECK (points_expire_after_days IS NULL OR points_expire_at IS NULL),
    ADD CONSTRAINT rules_expiry_on_earn_rules
        CHECK (type = 'earn' OR (points_expire_after_days IS NULL AND points_expire_at IS NULL));

-- Null when the client has not opted in to `points.expired` callbacks.
ALTER TABLE api_clients ADD COLUMN expiry_callback_url text
    CHECK (length(expiry_callback_url) BETWEEN 1 AND 2048);

-- A member's standing per organisation and environment; no row means in good
-- standing. Unblocking keeps the row (blocked = false) so the console can say
-- who unblocked the member and when.
CREATE TABLE member_standing (
    environment text NOT NULL CHECK (environment IN ('staging', 'production')),
    org_id      text NOT NULL REFERENCES organisations (id),
    user_id     text NOT NULL CHECK (length(user_id) BETWEEN 1 AND 128),
    blocked     boolean NOT NULL,
    reason      text CHECK (length(reason) <= 500),
    changed_by  text NOT NULL,
    changed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (environment, org_id, user_id)
);
-- The console lists an organisation's blocked members, a page at a time by user id.
CREATE INDEX member_standing_blocked
    ON member_standing (org_id, environment, user_id) WHERE blocked;

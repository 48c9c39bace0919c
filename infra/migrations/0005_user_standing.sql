-- Business users as users.lifecycle.v1 tells them: whether each is removed and
-- the role it holds now, so a service that accepts business users' tokens can
-- refuse a removed user's at once (and judge a demoted one by the new role)
-- rather than when the token expires. Versioned by the event's time, so a
-- replay is safe. Runs with search_path = the service's schema; only services
-- that consume the topic fill it (infra.user_standing).

CREATE TABLE user_standing (
    user_id     text PRIMARY KEY,
    org_id      text NOT NULL,
    role        text NOT NULL,
    removed     boolean NOT NULL,
    changed_at  timestamptz NOT NULL
);

-- Activity at a glance (issue 20). Runs with search_path = trigger.
--
-- activity  triggers the gateway answered, per 15-minute bucket of UTC: `ACCEPTED`
--           (a 202) or the code of the refusal. Counted in memory and added here
--           every few seconds by each replica (services/trigger/activity.py), never
--           a row per request: a hostile client sending thousands of refusals a
--           second adds to a handful of rows. `rule_id` is '' when the request named
--           no rule of the organisation (an unknown rule id is never stored: nobody
--           can grow this table by making ids up) or was refused before its rule
--           was read.

CREATE TABLE activity (
    org_id      text        NOT NULL,
    environment text        NOT NULL CHECK (environment IN ('staging', 'production')),
    rule_id     text        NOT NULL,
    bucket      timestamptz NOT NULL
        CHECK (date_bin('15 minutes', bucket, timestamptz 'epoch') = bucket),
    outcome     text        NOT NULL,
    requests    bigint      NOT NULL CHECK (requests > 0),
    PRIMARY KEY (org_id, environment, rule_id, bucket, outcome)
);

CREATE INDEX activity_of_organisation ON activity (org_id, environment, bucket);

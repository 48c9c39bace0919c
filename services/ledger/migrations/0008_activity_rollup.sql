-- Activity at a glance (issue 20). Runs with search_path = ledger.
--
-- activity  points a rule moved per 15-minute bucket of UTC, by kind: `earned` and
--           `redeemed` (applied earns and redeems), `reversed` (what reversals
--           moved back, either way) and `expired` (what expiries took). One row per
--           (organisation, environment, rule, bucket, kind), kept in the same
--           transaction as the entries it counts (services/ledger/activity.py), so
--           a chart over a million entries reads a few thousand rows. Reads regroup
--           the quarter-hours into the hours and days of any timezone
--           (infra/activity.py; docs/decisions/0024-activity-rollups.md).
-- activity_hours
--           the same per whole hour of UTC, kept alongside: a window whose
--           buckets all start on whole UTC hours (any hour or day of a timezone
--           whose offset is whole hours) reads four times fewer rows from it.

CREATE TABLE activity (
    org_id       text        NOT NULL,
    environment  text        NOT NULL CHECK (environment IN ('staging', 'production')),
    rule_id      text        NOT NULL,
    bucket       timestamptz NOT NULL
        CHECK (date_bin('15 minutes', bucket, timestamptz 'epoch') = bucket),
    kind         text        NOT NULL CHECK (kind IN ('earned', 'redeemed', 'reversed', 'expired')),
    points       bigint      NOT NULL CHECK (points >= 0),
    transactions bigint      NOT NULL CHECK (transactions >= 0),
    PRIMARY KEY (org_id, environment, rule_id, bucket, kind)
);

-- An organisation's activity in one environment, across its rules.
CREATE INDEX activity_of_organisation ON activity (org_id, environment, bucket);

CREATE TABLE activity_hours (
    org_id       text        NOT NULL,
    environment  text        NOT NULL CHECK (environment IN ('staging', 'production')),
    rule_id      text        NOT NULL,
    hour         timestamptz NOT NULL
        CHECK (date_bin('1 hour', hour, timestamptz 'epoch') = hour),
    kind         text        NOT NULL CHECK (kind IN ('earned', 'redeemed', 'reversed', 'expired')),
    points       bigint      NOT NULL CHECK (points >= 0),
    transactions bigint      NOT NULL CHECK (transactions >= 0),
    PRIMARY KEY (org_id, environment, rule_id, hour, kind)
);

CREATE INDEX activity_hours_of_organisation ON activity_hours (org_id, environment, hour);

-- What the ledger recorded before these tables existed.
INSERT INTO activity (org_id, environment, rule_id, bucket, kind, points, transactions)
SELECT org_id, environment, rule_id,
       date_bin('15 minutes', created_at, timestamptz 'epoch') AS bucket,
       CASE type
           WHEN 'earn' THEN 'earned'
           WHEN 'redeem' THEN 'redeemed'
           WHEN 'reversal' THEN 'reversed'
           ELSE 'expired'
       END AS kind,
       sum(CASE WHEN type = 'reversal' THEN amount - uncovered ELSE amount END),
       count(*)
FROM transactions
WHERE status = 'applied'
GROUP BY 1, 2, 3, 4, 5;

INSERT INTO activity_hours (org_id, environment, rule_id, hour, kind, points, transactions)
SELECT org_id, environment, rule_id, date_bin('1 hour', bucket, timestamptz 'epoch'), kind,
       sum(points), sum(transactions)
FROM activity
GROUP BY 1, 2, 3, 4, 5;

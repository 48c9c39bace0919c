"""Every SQL statement of the trigger gateway."""

from __future__ import annotations

UPSERT_RULE = """
INSERT INTO rules (
    rule_id, org_id, environment, name, type, status, api_trigger, authorized_client_ids,
    cap_max, cap_per_member, max_amount_per_request, starts_at, ends_at, version
) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
ON CONFLICT (rule_id) DO UPDATE SET
    name = EXCLUDED.name, type = EXCLUDED.type, status = EXCLUDED.status,
    api_trigger = EXCLUDED.api_trigger, authorized_client_ids = EXCLUDED.authorized_client_ids,
    cap_max = EXCLUDED.cap_max, cap_per_member = EXCLUDED.cap_per_member,
    max_amount_per_request = EXCLUDED.max_amount_per_request,
    starts_at = EXCLUDED.starts_at, ends_at = EXCLUDED.ends_at,
    version = EXCLUDED.version, projected_at = now()
WHERE rules.version < EXCLUDED.version
"""
UPSERT_CLIENT = """
INSERT INTO clients (client_id, org_id, environment, status, request_signing_key, occurred_at)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (client_id) DO UPDATE SET
    status = EXCLUDED.status,
    request_signing_key = EXCLUDED.request_signing_key,
    occurred_at = EXCLUDED.occurred_at
WHERE clients.occurred_at <= EXCLUDED.occurred_at
"""
CLIENT_ACCESS = "SELECT status, request_signing_key FROM clients WHERE client_id = $1"

GET_REQUEST = "SELECT * FROM requests WHERE client_id = $1 AND request_id = $2"
# See migrations/0004_record_points_request.sql.
RECORD_REQUEST = """
SELECT outcome, transaction_id, body_hash
FROM record_points_request($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
                           $14, $15, $16, $17)
"""
RECORD_RESULT = """
UPDATE requests SET status = $3, reason = $4, balance = $5, updated_at = now()
WHERE client_id = $1 AND request_id = $2 AND status = 'pending'
RETURNING rule_id, user_id, cap_reserved, member_cap_reserved
"""
# A reversal is recorded once, on a request that succeeded; the row says what the
# request reserved, so only that is released.
RECORD_REVERSAL = """
UPDATE requests SET reversal_id = $3, reversed_amount = $4, uncovered_amount = $5,
    reversed_at = $6, updated_at = now()
WHERE client_id = $1 AND request_id = $2 AND status = 'succeeded' AND reversed_at IS NULL
RETURNING rule_id, user_id, cap_reserved, member_cap_reserved
"""
# Settled requests past their retention, a batch at a time so no purge holds
# many row locks or a long transaction; SKIP LOCKED lets replicas purge together.
# Pending ones stay: purging them would lose the cap reservation a rejection frees.
PURGE_REQUESTS = """
DELETE FROM requests WHERE (client_id, request_id) IN (
    SELECT client_id, request_id FROM requests
    WHERE created_at < now() - make_interval(days => $1) AND status <> 'pending'
    ORDER BY created_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
"""

# Caps are reserved by record_points_request; a rejection or reversal frees them.
RELEASE_CAP = "UPDATE cap_usage SET used = greatest(used - $2, 0) WHERE rule_id = $1"
RELEASE_MEMBER_CAP = """
UPDATE member_cap_usage SET used = greatest(used - $3, 0) WHERE rule_id = $1 AND user_id = $2
"""

# Rate limits: one token bucket per client, refilled from the time elapsed since
# it was last touched and taken from in the same atomic upsert. The row lock
# serialises a client's requests across replicas for this one statement only.
# $2/$3 are the settings' defaults; a client_rate_limits row overrides them.
# ``granted`` says whether this call took a token (a new bucket starts full).
TAKE_RATE_TOKEN = """
INSERT INTO rate_limit_buckets AS bucket
    (client_id, per_second, burst, tokens, granted, refilled_at)
SELECT $1, coalesce(l.per_second, $2), coalesce(l.burst, $3),
       coalesce(l.burst, $3) - 1, true, clock_timestamp()
FROM (VALUES (1)) AS one (x)
LEFT JOIN client_rate_limits AS l ON l.client_id = $1
ON CONFLICT (client_id) DO UPDATE SET
    (per_second, burst, granted, tokens, refilled_at) = (
        SELECT EXCLUDED.per_second, EXCLUDED.burst, refill.tokens >= 1,
               CASE WHEN refill.tokens >= 1 THEN refill.tokens - 1 ELSE refill.tokens END,
               greatest(bucket.refilled_at, EXCLUDED.refilled_at)
        FROM (
            SELECT least(
                EXCLUDED.burst::double precision,
                bucket.tokens + EXCLUDED.per_second
                    * greatest(0, extract(epoch FROM EXCLUDED.refilled_at - bucket.refilled_at))
            ) AS tokens
        ) AS refill
    )
RETURNING granted, tokens, per_second, burst
"""
# Everything accepting a trigger reads, in one round trip: a token from the
# client's bucket ($1-$3, as TAKE_RATE_TOKEN), the client's standing, the rule it
# names ($4; its columns null when there is none) and an earlier request of this
# client with the same requestId ($5). Built from constants only.
ADMIT_TRIGGER = f"""
WITH bucket AS ({TAKE_RATE_TOKEN})
SELECT bucket.granted, bucket.tokens, bucket.per_second, bucket.burst,
       client.status AS client_status, client.request_signing_key,
       rule.*,
       earlier.transaction_id AS earlier_transaction_id, earlier.body_hash AS earlier_body_hash
FROM bucket
LEFT JOIN clients AS client ON client.client_id = $1
LEFT JOIN rules AS rule ON rule.rule_id = $4
LEFT JOIN requests AS earlier ON earlier.client_id = $1 AND earlier.request_id = $5
"""  # noqa: S608
SET_CLIENT_RATE_LIMIT = """
INSERT INTO client_rate_limits (client_id, per_second, burst) VALUES ($1, $2, $3)
ON CONFLICT (client_id) DO UPDATE SET
    per_second = EXCLUDED.per_second, burst = EXCLUDED.burst, updated_at = now()
"""

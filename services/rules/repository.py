"""Every SQL statement of the rules service."""

from __future__ import annotations

INSERT_ORGANISATION = "INSERT INTO organisations (id, name, timezone) VALUES ($1, $2, $3)"
GET_ORGANISATION = "SELECT * FROM organisations WHERE id = $1"
LOCK_ORGANISATION = "SELECT id FROM organisations WHERE id = $1 FOR UPDATE"
# The share e-mails' recipients an organisation sent to in the last day, and when the
# oldest of those sends leaves the day.
SHARE_RECIPIENTS_TODAY = """
SELECT coalesce(sum(jsonb_array_length(details -> 'recipients')), 0)::bigint AS recipients,
       min(at) + interval '1 day' - now() AS until_oldest_leaves
FROM audit_log
WHERE org_id = $1 AND action = 'rule.shared_by_email' AND at > now() - interval '1 day'
"""

INSERT_USER = """
INSERT INTO users (id, org_id, email, password_hash, role) VALUES ($1, $2, $3, $4, $5)
"""
GET_USER_BY_EMAIL = "SELECT * FROM users WHERE lower(email) = lower($1)"
GET_USER = "SELECT * FROM users WHERE id = $1 AND org_id = $2"
UPDATE_PASSWORD_HASH = "UPDATE users SET password_hash = $2 WHERE id = $1"

INSERT_CLIENT = """
INSERT INTO api_clients (
    id, org_id, environment, name, secret_hash, signing_key_salt, request_signing_key
) VALUES ($1, $2, $3, $4, $5, $6, $7)
RETURNING *
"""
GET_CLIENT = "SELECT * FROM api_clients WHERE id = $1"
GET_CLIENT_FOR_UPDATE = "SELECT * FROM api_clients WHERE id = $1 FOR UPDATE"
LIST_CLIENTS = """
SELECT * FROM api_clients
WHERE org_id = $1 AND ($2::text IS NULL OR environment = $2)
ORDER BY created_at, id
"""
ACTIVE_CLIENT_IDS = """
SELECT id FROM api_clients
WHERE org_id = $1 AND environment = $2 AND status = 'active' AND id = ANY($3::text[])
"""
REVOKE_CLIENT = """
UPDATE api_clients SET status = 'revoked', revoked_at = now() WHERE id = $1 RETURNING *
"""
ROTATE_CLIENT_SECRET = """
UPDATE api_clients
SET previous_secret_hash = secret_hash, previous_valid_until = $3,
    previous_signing_key_salt = signing_key_salt,
    secret_hash = $2, signing_key_salt = $4, rotated_at = now()
WHERE id = $1
RETURNING *
"""
SET_REQUEST_SIGNING_KEY = """
UPDATE api_clients SET request_signing_key = $2 WHERE id = $1 RETURNING *
"""
CLIENT_STATUSES = """
SELECT id, status FROM api_clients
WHERE org_id = $1 AND environment = $2 AND id = ANY($3::text[])
"""

ACTIVE_SIGNING_KEYS = """
SELECT * FROM signing_keys WHERE retired_at IS NULL ORDER BY created_at DESC
"""
PUBLISHED_SIGNING_KEYS = """
SELECT public_jwk FROM signing_keys
WHERE retired_at IS NULL OR retired_at > now() - interval '1 day'
ORDER BY created_at DESC
"""
# clock_timestamp(), not now(): two keys added in one transaction must still be ordered.
INSERT_SIGNING_KEY = """
INSERT INTO signing_keys (kid, sealed_private_key, public_jwk, created_at)
VALUES ($1, $2, $3, clock_timestamp())
ON CONFLICT DO NOTHING
"""
RESEAL_SIGNING_KEY = "UPDATE signing_keys SET sealed_private_key = $2 WHERE kid = $1"
# Keys that may still sign are retired at $2: they stop signing at once (the newest
# key signs) and the JWKS keeps publishing them for a day after $2.
RETIRE_SIGNING_KEYS = """
UPDATE signing_keys SET retired_at = $2
WHERE retired_at IS NULL AND kid <> ALL($1::text[])
"""
# Serialises key creation between replicas starting together.
LOCK_SIGNING_KEYS = "SELECT pg_advisory_xact_lock(hashtext('rules.signing_keys'))"

# Every statement that returns rules returns them with `cap_used`, the points each has moved.
INSERT_RULE = """
INSERT INTO rules (
    id, org_id, environment, name, description, type, api_trigger, authorized_client_ids,
    cap_max, cap_per_member, max_amount_per_request, starts_at, ends_at, promoted_from
) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
RETURNING rules.*,
    coalesce((SELECT used FROM rule_usage WHERE rule_usage.rule_id = rules.id), 0) AS cap_used
"""
GET_RULE = """
SELECT rules.*,
    coalesce((SELECT used FROM rule_usage WHERE rule_usage.rule_id = rules.id), 0) AS cap_used
FROM rules WHERE id = $1 AND org_id = $2
"""
GET_RULE_FOR_UPDATE = """
SELECT rules.*,
    coalesce((SELECT used FROM rule_usage WHERE rule_usage.rule_id = rules.id), 0) AS cap_used
FROM rules WHERE id = $1 AND org_id = $2 FOR UPDATE
"""
LIST_RULES = """
SELECT rules.*,
    coalesce((SELECT used FROM rule_usage WHERE rule_usage.rule_id = rules.id), 0) AS cap_used
FROM rules
WHERE org_id = $1 AND ($2::text IS NULL OR environment = $2)
ORDER BY created_at DESC, id
"""
UPDATE_RULE = """
UPDATE rules SET
    name = $3, description = $4, api_trigger = $5, authorized_client_ids = $6,
    cap_max = $7, cap_per_member = $8, max_amount_per_request = $9,
    starts_at = $10, ends_at = $11, type = $12,
    version = version + 1, updated_at = now()
WHERE id = $1 AND org_id = $2
RETURNING rules.*,
    coalesce((SELECT used FROM rule_usage WHERE rule_usage.rule_id = rules.id), 0) AS cap_used
"""
SET_RULE_STATUS = """
UPDATE rules SET status = $3, version = version + 1, updated_at = now()
WHERE id = $1 AND org_id = $2
RETURNING rules.*,
    coalesce((SELECT used FROM rule_usage WHERE rule_usage.rule_id = rules.id), 0) AS cap_used
"""

INSERT_AUDIT = """
INSERT INTO audit_log (org_id, actor, action, subject_id, details) VALUES ($1, $2, $3, $4, $5)
"""
# With the e-mail of the business user who acted (null for "operator", the CLI).
LIST_AUDIT = """
SELECT line.*, actor.email AS actor_email
FROM audit_log AS line
LEFT JOIN users AS actor ON actor.id = line.actor AND actor.org_id = line.org_id
WHERE line.org_id = $1
  AND ($2::bigint IS NULL OR line.id < $2)
  AND ($3::text IS NULL OR line.subject_id = $3)
  AND ($4::text IS NULL OR line.actor = $4)
  AND ($5::timestamptz IS NULL OR line.at >= $5)
  AND ($6::timestamptz IS NULL OR line.at < $6)
ORDER BY line.id DESC LIMIT $7
"""

# Counts one login attempt for a key, starting a new window when the last one has
# passed; the row lock makes concurrent attempts count one after another.
# Sign-in throttling (services/rules/throttle.py): a key's row, locked while an
# attempt is weighed, with the seconds since its last attempt.
ADD_SIGN_IN_KEY = """
INSERT INTO sign_in_attempts (scope, key, attempts, last_attempt_at) VALUES ($1, $2, 0, now())
ON CONFLICT (scope, key) DO NOTHING
"""
SIGN_IN_KEY_FOR_UPDATE = """
SELECT attempts, extract(epoch FROM now() - last_attempt_at)::float8 AS idle_seconds
FROM sign_in_attempts WHERE scope = $1 AND key = $2 FOR UPDATE
"""
COUNT_SIGN_IN_ATTEMPT = """
UPDATE sign_in_attempts SET attempts = $3, last_attempt_at = now() WHERE scope = $1 AND key = $2
"""
PURGE_IDLE_SIGN_IN_KEYS = """
DELETE FROM sign_in_attempts WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM sign_in_attempts
    WHERE last_attempt_at < now() - make_interval(secs => $1) LIMIT 100
    FOR UPDATE SKIP LOCKED
))
"""
FORGET_SIGN_IN_KEY = "DELETE FROM sign_in_attempts WHERE scope = $1 AND key = $2"
GIVE_BACK_SIGN_IN_ATTEMPT = """
UPDATE sign_in_attempts SET attempts = greatest(attempts - 1, 0) WHERE scope = $1 AND key = $2
"""

# The points a rule has moved, locked so a concurrent result waits for a cap change.
RULE_USAGE_FOR_SHARE = "SELECT used FROM rule_usage WHERE rule_id = $1 FOR SHARE"
ADD_RULE_USAGE = """
INSERT INTO rule_usage AS u (rule_id, used) VALUES ($1, $2)
ON CONFLICT (rule_id) DO UPDATE SET used = u.used + excluded.used, updated_at = now()
"""
# A reversal gives back what it moved; never below zero, should results have been lost.
RELEASE_RULE_USAGE = """
UPDATE rule_usage SET used = greatest(used - $2, 0), updated_at = now() WHERE rule_id = $1
"""

INSERT_CONSOLE_SESSION = """
INSERT INTO console_sessions (id_hash, user_id, csrf_secret, expires_at)
VALUES ($1, $2, $3, now() + $4::interval)
"""
# A live session and its user, marking it seen.
TOUCH_CONSOLE_SESSION = """
UPDATE console_sessions AS s SET last_seen_at = now()
FROM users AS u
WHERE s.id_hash = $1 AND s.expires_at > now() AND u.id = s.user_id
RETURNING s.csrf_secret, s.expires_at, u.id AS user_id, u.org_id, u.role, u.email
"""
DELETE_CONSOLE_SESSION = "DELETE FROM console_sessions WHERE id_hash = $1"
DELETE_EXPIRED_CONSOLE_SESSIONS = """
DELETE FROM console_sessions WHERE user_id = $1 AND expires_at <= now()
"""

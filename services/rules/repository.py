"""The rules service's SQL statements, and the thin functions that run them (signing
in's are in :mod:`services.rules.sign_in_repository`).

The functions run in the caller's transaction; the caller (an HTTP route, a
subscriber or a CLI command) owns it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import asyncpg

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
SET_EXPIRY_CALLBACK_URL = """
UPDATE api_clients SET expiry_callback_url = $2 WHERE id = $1 RETURNING *
"""
SET_CLIENT_RATE_LIMIT = """
UPDATE api_clients SET rate_limit_per_second = $2, rate_limit_burst = $3 WHERE id = $1
RETURNING *
"""
# At most one write a minute a client, however many tokens it asks for: the console
# shows when a token was last issued, to the minute.
NOTE_TOKEN_ISSUED = """
UPDATE api_clients SET last_token_issued_at = now()
WHERE id = $1
    AND (last_token_issued_at IS NULL OR last_token_issued_at <= now() - interval '1 minute')
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
    cap_max, cap_per_member, max_amount_per_request, starts_at, ends_at, promoted_from,
    points_expire_after_days, points_expire_at
) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
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
    points_expire_after_days = $13, points_expire_at = $14,
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


# Organisations and business users.


async def insert_organisation(
    connection: asyncpg.Connection, org_id: str, name: str, timezone: str
) -> None:
    await connection.execute(INSERT_ORGANISATION, org_id, name, timezone)


async def get_organisation(connection: asyncpg.Connection, org_id: str) -> asyncpg.Record | None:
    return await connection.fetchrow(GET_ORGANISATION, org_id)


async def lock_organisation(connection: asyncpg.Connection, org_id: str) -> None:
    await connection.execute(LOCK_ORGANISATION, org_id)


class SharesToday(NamedTuple):
    """The share e-mails' recipients an organisation sent to in the last day."""

    recipients: int
    #: When the oldest of those sends leaves the day; None when there was none.
    until_oldest_leaves: timedelta | None


async def share_recipients_today(connection: asyncpg.Connection, org_id: str) -> SharesToday:
    row = await connection.fetchrow(SHARE_RECIPIENTS_TODAY, org_id)
    return SharesToday(row["recipients"], row["until_oldest_leaves"])


async def insert_user(
    connection: asyncpg.Connection,
    *,
    user_id: str,
    org_id: str,
    email: str,
    password_hash: str,
    role: str,
) -> None:
    await connection.execute(INSERT_USER, user_id, org_id, email, password_hash, role)


async def get_user_by_email(connection: asyncpg.Connection, email: str) -> asyncpg.Record | None:
    return await connection.fetchrow(GET_USER_BY_EMAIL, email)


async def get_user(
    connection: asyncpg.Connection, org_id: str, user_id: str
) -> asyncpg.Record | None:
    return await connection.fetchrow(GET_USER, user_id, org_id)


async def update_password_hash(
    connection: asyncpg.Connection, user_id: str, password_hash: str
) -> None:
    await connection.execute(UPDATE_PASSWORD_HASH, user_id, password_hash)


# API clients. The statements that change one return it as changed.


async def insert_client(
    connection: asyncpg.Connection,
    *,
    client_id: str,
    org_id: str,
    environment: str,
    name: str,
    secret_hash: str,
    signing_key_salt: str,
    request_signing_key: str | None,
) -> asyncpg.Record:
    return await connection.fetchrow(
        INSERT_CLIENT,
        client_id,
        org_id,
        environment,
        name,
        secret_hash,
        signing_key_salt,
        request_signing_key,
    )


async def get_client(connection: asyncpg.Connection, client_id: str) -> asyncpg.Record | None:
    return await connection.fetchrow(GET_CLIENT, client_id)


async def get_client_for_update(
    connection: asyncpg.Connection, client_id: str
) -> asyncpg.Record | None:
    return await connection.fetchrow(GET_CLIENT_FOR_UPDATE, client_id)


async def list_clients(
    connection: asyncpg.Connection, org_id: str, environment: str | None
) -> list[asyncpg.Record]:
    return list(await connection.fetch(LIST_CLIENTS, org_id, environment))


async def active_client_ids(
    connection: asyncpg.Connection, org_id: str, environment: str, client_ids: Sequence[str]
) -> set[str]:
    """Which of ``client_ids`` are active clients of the organisation in ``environment``."""
    rows = await connection.fetch(ACTIVE_CLIENT_IDS, org_id, environment, list(client_ids))
    return {row["id"] for row in rows}


async def client_statuses(
    connection: asyncpg.Connection, org_id: str, environment: str, client_ids: Sequence[str]
) -> dict[str, str]:
    """The status of each of ``client_ids`` that is a client of the organisation in
    ``environment``."""
    rows = await connection.fetch(CLIENT_STATUSES, org_id, environment, list(client_ids))
    return {row["id"]: row["status"] for row in rows}


async def revoke_client(connection: asyncpg.Connection, client_id: str) -> asyncpg.Record:
    return await connection.fetchrow(REVOKE_CLIENT, client_id)


async def rotate_client_secret(
    connection: asyncpg.Connection,
    client_id: str,
    *,
    secret_hash: str,
    previous_valid_until: datetime,
    signing_key_salt: str,
) -> asyncpg.Record:
    return await connection.fetchrow(
        ROTATE_CLIENT_SECRET, client_id, secret_hash, previous_valid_until, signing_key_salt
    )


async def set_request_signing_key(
    connection: asyncpg.Connection, client_id: str, request_signing_key: str | None
) -> asyncpg.Record:
    return await connection.fetchrow(SET_REQUEST_SIGNING_KEY, client_id, request_signing_key)


async def set_expiry_callback_url(
    connection: asyncpg.Connection, client_id: str, url: str | None
) -> asyncpg.Record:
    return await connection.fetchrow(SET_EXPIRY_CALLBACK_URL, client_id, url)


async def set_client_rate_limit(
    connection: asyncpg.Connection, client_id: str, per_second: float, burst: int
) -> asyncpg.Record:
    return await connection.fetchrow(SET_CLIENT_RATE_LIMIT, client_id, per_second, burst)


async def note_token_issued(connection: asyncpg.Connection, client_id: str) -> None:
    await connection.execute(NOTE_TOKEN_ISSUED, client_id)


# The token issuer's signing keys.


async def lock_signing_keys(connection: asyncpg.Connection) -> None:
    await connection.execute(LOCK_SIGNING_KEYS)


async def active_signing_keys(connection: asyncpg.Connection) -> list[asyncpg.Record]:
    """The keys that may still sign, newest first."""
    return list(await connection.fetch(ACTIVE_SIGNING_KEYS))


async def newest_signing_key(connection: asyncpg.Connection) -> asyncpg.Record | None:
    """The key that signs now, or None before the first is added."""
    return await connection.fetchrow(ACTIVE_SIGNING_KEYS)


async def published_signing_keys(connection: asyncpg.Connection) -> list[dict[str, Any]]:
    """The public JWKs of the live keys and of those retired less than a day ago."""
    return [row["public_jwk"] for row in await connection.fetch(PUBLISHED_SIGNING_KEYS)]


async def insert_signing_key(
    connection: asyncpg.Connection, kid: str, sealed_private_key: str, public_jwk: dict[str, Any]
) -> None:
    await connection.execute(INSERT_SIGNING_KEY, kid, sealed_private_key, public_jwk)


async def reseal_signing_key(
    connection: asyncpg.Connection, kid: str, sealed_private_key: str
) -> None:
    await connection.execute(RESEAL_SIGNING_KEY, kid, sealed_private_key)


async def retire_signing_keys(
    connection: asyncpg.Connection, keep: Sequence[str], retired_at: datetime
) -> None:
    """Retire at ``retired_at`` every key that may still sign but those whose kid is in ``keep``."""
    await connection.execute(RETIRE_SIGNING_KEYS, list(keep), retired_at)


# Rules, each returned with ``cap_used``, and the points they have moved.


@dataclass(frozen=True)
class RuleColumns:
    """What a business user sets on a rule, as stored (its environment is set once)."""

    name: str
    description: str
    type: str
    api_trigger: bool
    authorized_client_ids: list[str]
    cap_max: int | None
    cap_per_member: int | None
    max_amount_per_request: int | None
    starts_at: datetime | None
    ends_at: datetime | None
    points_expire_after_days: int | None = None
    points_expire_at: datetime | None = None


async def insert_rule(
    connection: asyncpg.Connection,
    *,
    rule_id: str,
    org_id: str,
    environment: str,
    columns: RuleColumns,
    promoted_from: str | None,
) -> asyncpg.Record:
    return await connection.fetchrow(
        INSERT_RULE,
        rule_id,
        org_id,
        environment,
        columns.name,
        columns.description,
        columns.type,
        columns.api_trigger,
        columns.authorized_client_ids,
        columns.cap_max,
        columns.cap_per_member,
        columns.max_amount_per_request,
        columns.starts_at,
        columns.ends_at,
        promoted_from,
        columns.points_expire_after_days,
        columns.points_expire_at,
    )


async def get_rule(
    connection: asyncpg.Connection, org_id: str, rule_id: str
) -> asyncpg.Record | None:
    return await connection.fetchrow(GET_RULE, rule_id, org_id)


async def get_rule_for_update(
    connection: asyncpg.Connection, org_id: str, rule_id: str
) -> asyncpg.Record | None:
    return await connection.fetchrow(GET_RULE_FOR_UPDATE, rule_id, org_id)


async def list_rules(
    connection: asyncpg.Connection, org_id: str, environment: str | None
) -> list[asyncpg.Record]:
    return list(await connection.fetch(LIST_RULES, org_id, environment))


async def update_rule(
    connection: asyncpg.Connection, org_id: str, rule_id: str, columns: RuleColumns
) -> asyncpg.Record:
    """Store the rule's new columns as its next version."""
    return await connection.fetchrow(
        UPDATE_RULE,
        rule_id,
        org_id,
        columns.name,
        columns.description,
        columns.api_trigger,
        columns.authorized_client_ids,
        columns.cap_max,
        columns.cap_per_member,
        columns.max_amount_per_request,
        columns.starts_at,
        columns.ends_at,
        columns.type,
        columns.points_expire_after_days,
        columns.points_expire_at,
    )


async def set_rule_status(
    connection: asyncpg.Connection, org_id: str, rule_id: str, status: str
) -> asyncpg.Record:
    """Store the rule's new status as its next version."""
    return await connection.fetchrow(SET_RULE_STATUS, rule_id, org_id, status)


async def rule_usage_for_share(connection: asyncpg.Connection, rule_id: str) -> int:
    """The points the rule has moved, locked (FOR SHARE) until the transaction ends."""
    return await connection.fetchval(RULE_USAGE_FOR_SHARE, rule_id) or 0


async def add_rule_usage(connection: asyncpg.Connection, rule_id: str, points: int) -> None:
    await connection.execute(ADD_RULE_USAGE, rule_id, points)


async def release_rule_usage(connection: asyncpg.Connection, rule_id: str, points: int) -> None:
    await connection.execute(RELEASE_RULE_USAGE, rule_id, points)


# The audit log.


async def insert_audit_line(
    connection: asyncpg.Connection,
    org_id: str,
    actor: str,
    action: str,
    subject_id: str,
    details: dict[str, Any],
) -> None:
    await connection.execute(INSERT_AUDIT, org_id, actor, action, subject_id, details)


async def list_audit(
    connection: asyncpg.Connection,
    org_id: str,
    *,
    before: int | None,
    subject_id: str | None,
    actor: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
) -> list[asyncpg.Record]:
    """A page of the organisation's audit lines, newest first; a filter left None is off."""
    return list(
        await connection.fetch(LIST_AUDIT, org_id, before, subject_id, actor, since, until, limit)
    )

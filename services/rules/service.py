"""The rules service's logic: organisations, users, API clients, tokens, rules.

Functions take an open asyncpg connection; the caller (an HTTP route or a CLI
command) owns the transaction, so a state change, its audit line and its
outbox event commit together or not at all.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from contracts import (
    ClientLifecycleEvent,
    ClientSnapshot,
    RuleLifecycleEvent,
    RuleSnapshot,
)
from infra import outbox
from infra.problems import Problem
from infra.signing import derive_signing_secret, new_salt
from infra.tokens import ALGORITHM, API_AUDIENCE, REALM_PATH
from services.rules import repository as sql

hasher = PasswordHasher()  # argon2id with the library's current recommended cost

ENVIRONMENTS = ("staging", "production")
ROLES = ("admin", "editor", "viewer")
CONSOLE_AUDIENCE = "points-console"


class NotFound(Problem):
    status = 404
    code = "NOT_FOUND"
    title = "Not found"


class Conflict(Problem):
    status = 409
    code = "CONFLICT"
    title = "Conflict"


class InvalidCredentials(Problem):
    status = 401
    code = "INVALID_CREDENTIALS"
    title = "Invalid credentials"


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def now() -> datetime:
    return datetime.now(UTC)


# --- organisations and business users -------------------------------------


async def create_organisation(
    connection: asyncpg.Connection, name: str, timezone: str = "UTC"
) -> dict[str, Any]:
    if not name.strip():
        raise Problem("organisation name must not be empty", code="INVALID_NAME")
    org_id = new_id("org")
    await connection.execute(sql.INSERT_ORGANISATION, org_id, name.strip(), timezone)
    return {"id": org_id, "name": name.strip()}


async def require_organisation(connection: asyncpg.Connection, org_id: str) -> asyncpg.Record:
    organisation = await connection.fetchrow(sql.GET_ORGANISATION, org_id)
    if organisation is None:
        raise NotFound(f"organisation {org_id} does not exist", code="ORGANISATION_NOT_FOUND")
    return organisation


async def create_user(
    connection: asyncpg.Connection, org_id: str, email: str, password: str, role: str = "admin"
) -> dict[str, Any]:
    await require_organisation(connection, org_id)
    if role not in ROLES:
        raise Problem(f"role must be one of {', '.join(ROLES)}", code="INVALID_ROLE")
    if "@" not in email or len(email) > 254:
        raise Problem(f"{email!r} is not an e-mail address", code="INVALID_EMAIL")
    if len(password) < 8:
        raise Problem("password must have at least 8 characters", code="WEAK_PASSWORD")
    user_id = new_id("usr")
    try:
        await connection.execute(
            sql.INSERT_USER, user_id, org_id, email, hasher.hash(password), role
        )
    except asyncpg.UniqueViolationError as error:
        raise Conflict(f"a user with e-mail {email} exists", code="EMAIL_TAKEN") from error
    return {"id": user_id, "email": email}


def _verify_hash(hash_: str | None, secret: str) -> bool:
    if not hash_:
        return False
    try:
        return hasher.verify(hash_, secret)
    except (VerificationError, InvalidHashError):
        return False


async def authenticate_user(
    connection: asyncpg.Connection, email: str, password: str
) -> asyncpg.Record:
    user = await connection.fetchrow(sql.GET_USER_BY_EMAIL, email)
    if user is None:
        # Spend the same time as a real check so timing does not reveal accounts.
        _verify_hash(_DUMMY_HASH, password)
        raise InvalidCredentials("e-mail or password is wrong")
    if not _verify_hash(user["password_hash"], password):
        raise InvalidCredentials("e-mail or password is wrong")
    if hasher.check_needs_rehash(user["password_hash"]):
        await connection.execute(sql.UPDATE_PASSWORD_HASH, user["id"], hasher.hash(password))
    return user


_DUMMY_HASH = hasher.hash(secrets.token_urlsafe(16))


# --- API clients -----------------------------------------------------------


@dataclass(frozen=True)
class IssuedClient:
    """A client as created or rotated: the only moment its secrets are visible."""

    client_id: str
    client_secret: str
    callback_signing_secret: str

    def as_json(self) -> dict[str, str]:
        return {
            "clientId": self.client_id,
            "clientSecret": self.client_secret,
            "callbackSigningSecret": self.callback_signing_secret,
        }


def _client_snapshot(client: asyncpg.Record) -> ClientSnapshot:
    return ClientSnapshot(
        client_id=client["id"],
        org_id=client["org_id"],
        environment=client["environment"],
        name=client["name"],
        status=client["status"],
        signing_key_salt=client["signing_key_salt"],
        rotated_at=client["rotated_at"],
    )


async def _publish_client(
    connection: asyncpg.Connection, client: asyncpg.Record, event_type: str, correlation_id: str
) -> None:
    event = ClientLifecycleEvent.new_event(
        data=_client_snapshot(client),
        environment=client["environment"],
        org_id=client["org_id"],
        correlation_id=correlation_id,
        type=event_type,
    )
    await outbox.enqueue(connection, event)


async def create_client(
    connection: asyncpg.Connection,
    *,
    org_id: str,
    environment: str,
    name: str,
    platform_signing_key: str,
    actor: str = "operator",
) -> IssuedClient:
    await require_organisation(connection, org_id)
    if environment not in ENVIRONMENTS:
        raise Problem("environment must be staging or production", code="INVALID_ENVIRONMENT")
    client_id = new_id("cli")
    secret = secrets.token_urlsafe(32)
    salt = new_salt()
    client = await connection.fetchrow(
        sql.INSERT_CLIENT, client_id, org_id, environment, name, hasher.hash(secret), salt
    )
    await audit(connection, org_id, actor, "client.registered", client_id, {"name": name})
    await _publish_client(connection, client, "client.registered", client_id)
    return IssuedClient(
        client_id, secret, derive_signing_secret(platform_signing_key, client_id, salt)
    )


async def _client_for_update(connection: asyncpg.Connection, client_id: str) -> asyncpg.Record:
    client = await connection.fetchrow(sql.GET_CLIENT_FOR_UPDATE, client_id)
    if client is None:
        raise NotFound(f"client {client_id} does not exist", code="CLIENT_NOT_FOUND")
    return client


async def revoke_client(
    connection: asyncpg.Connection, client_id: str, actor: str = "operator"
) -> None:
    client = await _client_for_update(connection, client_id)
    if client["status"] == "revoked":
        return
    client = await connection.fetchrow(sql.REVOKE_CLIENT, client_id)
    await audit(connection, client["org_id"], actor, "client.revoked", client_id, {})
    await _publish_client(connection, client, "client.revoked", client_id)


async def rotate_client_secret(
    connection: asyncpg.Connection,
    client_id: str,
    *,
    platform_signing_key: str,
    overlap: timedelta,
    actor: str = "operator",
) -> IssuedClient:
    client = await _client_for_update(connection, client_id)
    if client["status"] != "active":
        raise Conflict(f"client {client_id} is revoked", code="CLIENT_REVOKED")
    secret = secrets.token_urlsafe(32)
    salt = new_salt()
    client = await connection.fetchrow(
        sql.ROTATE_CLIENT_SECRET, client_id, hasher.hash(secret), now() + overlap, salt
    )
    await audit(connection, client["org_id"], actor, "client.secret_rotated", client_id, {})
    await _publish_client(connection, client, "client.secret_rotated", client_id)
    return IssuedClient(
        client_id, secret, derive_signing_secret(platform_signing_key, client_id, salt)
    )


async def authenticate_client(
    connection: asyncpg.Connection, client_id: str, client_secret: str
) -> asyncpg.Record | None:
    """The active client these credentials name, or None."""
    client = await connection.fetchrow(sql.GET_CLIENT, client_id)
    if client is None:
        _verify_hash(_DUMMY_HASH, client_secret)
        return None
    if client["status"] != "active":
        return None
    if _verify_hash(client["secret_hash"], client_secret):
        return client
    overlap_open = client["previous_valid_until"] and client["previous_valid_until"] > now()
    if overlap_open and _verify_hash(client["previous_secret_hash"], client_secret):
        return client
    return None


async def list_clients(
    connection: asyncpg.Connection, org_id: str, environment: str | None = None
) -> list[dict[str, Any]]:
    rows = await connection.fetch(sql.LIST_CLIENTS, org_id, environment)
    return [
        {
            "clientId": row["id"],
            "name": row["name"],
            "environment": row["environment"],
            "status": row["status"],
            "createdAt": row["created_at"],
            "rotatedAt": row["rotated_at"],
        }
        for row in rows
    ]


# --- token issuing -----------------------------------------------------------


class TokenIssuer:
    """Signs ES256 access tokens with the newest active key; publishes all live keys."""

    def __init__(self, public_url: str) -> None:
        self.issuer = public_url.rstrip("/") + REALM_PATH

    async def ensure_signing_key(self, connection: asyncpg.Connection) -> None:
        async with connection.transaction():
            await connection.execute(sql.LOCK_SIGNING_KEYS)
            if await connection.fetchrow(sql.ACTIVE_SIGNING_KEYS) is None:
                await self.add_signing_key(connection)

    async def add_signing_key(self, connection: asyncpg.Connection) -> str:
        """Create a new key; it signs from now on while older keys still verify."""
        private_key = ec.generate_private_key(ec.SECP256R1())
        kid = uuid.uuid4().hex
        pem = private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        public_jwk = jwt.algorithms.ECAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
        public_jwk.update({"kid": kid, "use": "sig", "alg": ALGORITHM})
        await connection.execute(sql.INSERT_SIGNING_KEY, kid, pem, public_jwk)
        return kid

    async def jwks(self, connection: asyncpg.Connection) -> dict[str, Any]:
        rows = await connection.fetch(sql.PUBLISHED_SIGNING_KEYS)
        return {"keys": [row["public_jwk"] for row in rows]}

    async def sign(
        self, connection: asyncpg.Connection, claims: dict[str, Any], lifetime: int
    ) -> str:
        key = await connection.fetchrow(sql.ACTIVE_SIGNING_KEYS)
        if key is None:
            raise RuntimeError("no active signing key; the service start-up creates one")
        issued_at = int(now().timestamp())
        payload = {
            "iss": self.issuer,
            "iat": issued_at,
            "nbf": issued_at,
            "exp": issued_at + lifetime,
            "jti": uuid.uuid4().hex,
            **claims,
        }
        return jwt.encode(
            payload, key["private_pem"], algorithm=ALGORITHM, headers={"kid": key["kid"]}
        )

    async def client_token(
        self, connection: asyncpg.Connection, client: asyncpg.Record, lifetime: int
    ) -> str:
        return await self.sign(
            connection,
            {
                "sub": client["id"],
                "azp": client["id"],
                "client_id": client["id"],
                "aud": API_AUDIENCE,
                "typ": "client",
                "org_id": client["org_id"],
                "environment": client["environment"],
                "scope": CLIENT_SCOPE,
            },
            lifetime,
        )

    async def user_token(
        self, connection: asyncpg.Connection, user: asyncpg.Record, lifetime: int
    ) -> str:
        return await self.sign(
            connection,
            {
                "sub": user["id"],
                "aud": [CONSOLE_AUDIENCE, API_AUDIENCE],
                "typ": "user",
                "org_id": user["org_id"],
                "role": user["role"],
                "email": user["email"],
            },
            lifetime,
        )


CLIENT_SCOPE = "points:trigger points:read"


# --- rules -----------------------------------------------------------------


@dataclass(frozen=True)
class RuleDraft:
    """What a business user sets on a rule."""

    name: str
    type: str
    environment: str
    description: str = ""
    api_trigger: bool = False
    authorized_client_ids: tuple[str, ...] = ()
    cap_max: int | None = None
    cap_per_member: int | None = None
    max_amount_per_request: int | None = None
    starts_at: datetime | None = None
    ends_at: datetime | None = None


def rule_snapshot(rule: asyncpg.Record) -> RuleSnapshot:
    return RuleSnapshot(
        rule_id=rule["id"],
        org_id=rule["org_id"],
        environment=rule["environment"],
        name=rule["name"],
        description=rule["description"],
        type=rule["type"],
        status=rule["status"],
        api_trigger=rule["api_trigger"],
        authorized_client_ids=tuple(rule["authorized_client_ids"]),
        cap_max=rule["cap_max"],
        cap_per_member=rule["cap_per_member"],
        max_amount_per_request=rule["max_amount_per_request"],
        starts_at=rule["starts_at"],
        ends_at=rule["ends_at"],
        version=rule["version"],
        updated_at=rule["updated_at"],
    )


def display_status(rule: asyncpg.Record, at: datetime | None = None) -> str:
    """The status a business user sees: ``scheduled`` and ``ended`` come from the dates."""
    moment = at or now()
    if rule["status"] == "active":
        if rule["starts_at"] and moment < rule["starts_at"]:
            return "scheduled"
        if rule["ends_at"] and moment >= rule["ends_at"]:
            return "ended"
    return str(rule["status"])


async def _publish_rule(
    connection: asyncpg.Connection, rule: asyncpg.Record, event_type: str, correlation_id: str
) -> None:
    event = RuleLifecycleEvent.new_event(
        data=rule_snapshot(rule),
        environment=rule["environment"],
        org_id=rule["org_id"],
        correlation_id=correlation_id,
        type=event_type,
    )
    await outbox.enqueue(connection, event)


async def _check_draft(connection: asyncpg.Connection, org_id: str, draft: RuleDraft) -> None:
    if draft.environment not in ENVIRONMENTS:
        raise Problem("environment must be staging or production", code="INVALID_ENVIRONMENT")
    if draft.type not in ("earn", "redeem"):
        raise Problem("type must be earn or redeem", code="INVALID_RULE_TYPE")
    for field, value in (("startsAt", draft.starts_at), ("endsAt", draft.ends_at)):
        if value is not None and value.tzinfo is None:
            raise Problem(f"{field} must carry a timezone offset", code="INVALID_DATE")
    if draft.starts_at and draft.ends_at and draft.ends_at <= draft.starts_at:
        raise Problem("endsAt must be after startsAt", code="INVALID_PERIOD")
    wanted = sorted(set(draft.authorized_client_ids))
    found = {
        row["id"]
        for row in await connection.fetch(sql.ACTIVE_CLIENT_IDS, org_id, draft.environment, wanted)
    }
    unknown = [client_id for client_id in wanted if client_id not in found]
    if unknown:
        raise Problem(
            f"not active {draft.environment} clients of this organisation: {', '.join(unknown)}",
            code="INVALID_AUTHORIZED_CLIENTS",
        )


async def create_rule(
    connection: asyncpg.Connection, org_id: str, actor: str, draft: RuleDraft, correlation_id: str
) -> asyncpg.Record:
    await _check_draft(connection, org_id, draft)
    rule = await connection.fetchrow(
        sql.INSERT_RULE,
        new_id("rul"),
        org_id,
        draft.environment,
        draft.name,
        draft.description,
        draft.type,
        draft.api_trigger,
        list(dict.fromkeys(draft.authorized_client_ids)),
        draft.cap_max,
        draft.cap_per_member,
        draft.max_amount_per_request,
        draft.starts_at,
        draft.ends_at,
        None,
    )
    await audit(connection, org_id, actor, "rule.created", rule["id"], {"name": draft.name})
    await _publish_rule(connection, rule, "rule.created", correlation_id)
    return rule


async def get_rule(connection: asyncpg.Connection, org_id: str, rule_id: str) -> asyncpg.Record:
    rule = await connection.fetchrow(sql.GET_RULE, rule_id, org_id)
    if rule is None:
        raise NotFound(f"rule {rule_id} does not exist", code="RULE_NOT_FOUND")
    return rule


async def list_rules(
    connection: asyncpg.Connection, org_id: str, environment: str | None
) -> list[asyncpg.Record]:
    return list(await connection.fetch(sql.LIST_RULES, org_id, environment))


async def _rule_for_change(
    connection: asyncpg.Connection, org_id: str, rule_id: str, expected_version: int | None
) -> asyncpg.Record:
    rule = await connection.fetchrow(sql.GET_RULE_FOR_UPDATE, rule_id, org_id)
    if rule is None:
        raise NotFound(f"rule {rule_id} does not exist", code="RULE_NOT_FOUND")
    if expected_version is not None and rule["version"] != expected_version:
        raise Conflict(
            f"rule {rule_id} is at version {rule['version']}, not {expected_version}; "
            "reload it and apply your change again",
            code="STALE_VERSION",
            currentVersion=rule["version"],
        )
    if rule["status"] == "archived":
        raise Conflict(f"rule {rule_id} is archived", code="RULE_ARCHIVED")
    return rule


async def update_rule(
    connection: asyncpg.Connection,
    org_id: str,
    actor: str,
    rule_id: str,
    expected_version: int,
    changes: dict[str, Any],
    correlation_id: str,
) -> asyncpg.Record:
    rule = await _rule_for_change(connection, org_id, rule_id, expected_version)
    current = {
        field: rule[field]
        for field in (
            "name",
            "type",
            "environment",
            "description",
            "api_trigger",
            "cap_max",
            "cap_per_member",
            "max_amount_per_request",
            "starts_at",
            "ends_at",
        )
    }
    current["authorized_client_ids"] = tuple(rule["authorized_client_ids"])
    merged = RuleDraft(**{**current, **changes})
    if rule["status"] != "draft":
        if merged.type != rule["type"] or merged.environment != rule["environment"]:
            raise Conflict(
                "type and environment cannot change after activation", code="RULE_IMMUTABLE"
            )
    elif merged.environment != rule["environment"]:
        raise Conflict("a rule's environment cannot change; promote it", code="RULE_IMMUTABLE")
    await _check_draft(connection, org_id, merged)
    updated = await connection.fetchrow(
        sql.UPDATE_RULE,
        rule_id,
        org_id,
        merged.name,
        merged.description,
        merged.api_trigger,
        list(dict.fromkeys(merged.authorized_client_ids)),
        merged.cap_max,
        merged.cap_per_member,
        merged.max_amount_per_request,
        merged.starts_at,
        merged.ends_at,
        merged.type,
    )
    await audit(connection, org_id, actor, "rule.updated", rule_id, {"fields": sorted(changes)})
    await _publish_rule(connection, updated, "rule.updated", correlation_id)
    return updated


def activation_problems(rule: asyncpg.Record, at: datetime | None = None) -> list[str]:
    """Why a rule cannot be activated, in words a business user understands."""
    problems = []
    if rule["api_trigger"] and not rule["authorized_client_ids"]:
        problems.append("an API-triggered rule needs at least one authorised client")
    if rule["ends_at"] and rule["ends_at"] <= (at or now()):
        problems.append("the rule's end date has passed")
    return problems


_TRANSITIONS = {
    "activate": ({"draft", "paused"}, "active", "rule.activated"),
    "pause": ({"active"}, "paused", "rule.paused"),
    "archive": ({"draft", "active", "paused"}, "archived", "rule.archived"),
}


async def change_status(
    connection: asyncpg.Connection,
    org_id: str,
    actor: str,
    rule_id: str,
    action: str,
    correlation_id: str,
    expected_version: int | None = None,
) -> asyncpg.Record:
    sources, target, event_type = _TRANSITIONS[action]
    rule = await _rule_for_change(connection, org_id, rule_id, expected_version)
    if rule["status"] not in sources:
        raise Conflict(f"a {rule['status']} rule cannot be {target}", code="INVALID_TRANSITION")
    if action == "activate":
        # Active clients only: one revoked since the rule was saved blocks activation.
        await _check_draft(
            connection,
            org_id,
            RuleDraft(
                name=rule["name"],
                type=rule["type"],
                environment=rule["environment"],
                authorized_client_ids=tuple(rule["authorized_client_ids"]),
            ),
        )
        problems = activation_problems(rule)
        if problems:
            raise Problem("; ".join(problems), code="ACTIVATION_BLOCKED", problems=problems)
    updated = await connection.fetchrow(sql.SET_RULE_STATUS, rule_id, org_id, target)
    await audit(connection, org_id, actor, event_type, rule_id, {"from": rule["status"]})
    await _publish_rule(connection, updated, event_type, correlation_id)
    return updated


# --- audit -----------------------------------------------------------------


async def audit(
    connection: asyncpg.Connection,
    org_id: str,
    actor: str,
    action: str,
    subject_id: str,
    details: dict[str, Any],
) -> None:
    await connection.execute(sql.INSERT_AUDIT, org_id, actor, action, subject_id, details)


async def list_audit(
    connection: asyncpg.Connection, org_id: str, before: int | None, limit: int
) -> list[asyncpg.Record]:
    return list(await connection.fetch(sql.LIST_AUDIT, org_id, before, limit))

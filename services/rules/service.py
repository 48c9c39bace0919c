"""The rules service's logic: organisations, users, API clients, tokens, rules.

Functions take an open asyncpg connection; the caller (an HTTP route or a CLI
command) owns the transaction, so a state change, its audit line and its
outbox event commit together or not at all.
"""

from __future__ import annotations

import asyncio
import math
import os
import secrets
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic.alias_generators import to_camel

from contracts import (
    POINTS_RESULTS,
    ClientLifecycleEvent,
    ClientSnapshot,
    Environment,
    PointsResultEvent,
    RuleLifecycleEvent,
    RuleSnapshot,
    RuleType,
    ShareEmailRequested,
    ShareEmailRequestedEvent,
)
from infra import inbox, outbox
from infra.logging import get_logger
from infra.problems import Problem
from infra.request_signing import (
    InvalidSigningKey,
    SigningPublicKey,
    fingerprint,
    load_signing_key,
    public_pem,
)
from infra.signing import derive_signing_secret, new_salt
from infra.tokens import ALGORITHM, API_AUDIENCE, REALM_PATH
from services.rules import repository as sql
from services.rules import throttle
from services.rules.key_vault import KeyVault, is_plain_pem
from services.rules.settings import RulesSettings
from services.rules.throttle import Throttle

log = get_logger(__name__)

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


class TooManySignInAttempts(Problem):
    status = 429
    code = "TOO_MANY_LOGIN_ATTEMPTS"
    title = "Too many login attempts"

    def __init__(self, retry_after: int, what: str) -> None:
        super().__init__(
            f"too many failed {what} from this address; try again in {retry_after} seconds",
            headers={"Retry-After": str(retry_after)},
            retryAfter=retry_after,
        )
        self.retry_after = retry_after


class ActivationBlocked(Problem):
    status = 422
    code = "ACTIVATION_BLOCKED"
    title = "Rule cannot be activated"

    def __init__(self, problems: list[dict[str, str]]) -> None:
        super().__init__("; ".join(problem["detail"] for problem in problems), problems=problems)


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


#: Argon2 checks run in these threads (argon2 releases the GIL), never on the event
#: loop: a flood of wrong secrets queues here while the JWKS, the console and
#: every other request are still served. At most this many are checked at once.
_HASH_CHECKS = ThreadPoolExecutor(
    max_workers=max(2, (os.cpu_count() or 2) // 2), thread_name_prefix="argon2"
)


def _verify_hash(hash_: str | None, secret: str) -> bool:
    if not hash_:
        return False
    try:
        return hasher.verify(hash_, secret)
    except (VerificationError, InvalidHashError):
        return False


async def verify_secret(hash_: str | None, secret: str) -> bool:
    """Whether ``secret`` matches ``hash_``, checked off the event loop."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_HASH_CHECKS, _verify_hash, hash_, secret)


async def authenticate_user(
    connection: asyncpg.Connection, email: str, password: str
) -> asyncpg.Record:
    user = await connection.fetchrow(sql.GET_USER_BY_EMAIL, email)
    if user is None:
        # Spend the same time as a real check so timing does not reveal accounts.
        await verify_secret(_DUMMY_HASH, password)
        raise InvalidCredentials("e-mail or password is wrong")
    if not await verify_secret(user["password_hash"], password):
        raise InvalidCredentials("e-mail or password is wrong")
    if hasher.check_needs_rehash(user["password_hash"]):
        await connection.execute(sql.UPDATE_PASSWORD_HASH, user["id"], hasher.hash(password))
    return user


_DUMMY_HASH = hasher.hash(secrets.token_urlsafe(16))


@dataclass(frozen=True)
class SignInThrottles:
    """The throttles of business users' logins and API clients' token requests: one
    for an address trying one account, one for the address alone."""

    login: Throttle
    login_address: Throttle
    token: Throttle
    token_address: Throttle

    @classmethod
    def of(cls, settings: RulesSettings) -> SignInThrottles:
        longest = float(settings.login_throttle_window_seconds)
        return cls(
            Throttle(settings.login_max_attempts_per_email, longest),
            Throttle(settings.login_max_attempts_per_ip, longest),
            Throttle(settings.token_max_attempts_per_client, longest),
            Throttle(settings.token_max_attempts_per_ip, longest),
        )


async def _take_attempt(
    connection: asyncpg.Connection,
    keys: list[throttle.Key],
    what: str,
    event: str,
    **logged: str | None,
) -> None:
    """Count a sign-in attempt, or log ``event`` and refuse it when it must wait."""
    wait = await throttle.take_attempt(connection, keys)
    if wait is not None:
        log.info(event, **logged)
        raise TooManySignInAttempts(wait, what)


async def log_in(
    connection: asyncpg.Connection,
    email: str,
    password: str,
    client_ip: str | None,
    throttles: SignInThrottles,
) -> asyncpg.Record:
    """The user these credentials name, counting the attempt against the throttles.

    Unlike the other functions here this one manages its own transactions: the
    attempt must be counted (committed) even when the login fails.
    """
    keys = throttle.keys_for(
        "login", client_ip, email.strip().lower(), throttles.login, throttles.login_address
    )
    await _take_attempt(connection, keys, "logins", "user.login_throttled", ip=client_ip)
    async with connection.transaction():
        user = await authenticate_user(connection, email, password)
        await throttle.succeeded(connection, keys)
    return user


# --- API clients -----------------------------------------------------------


@dataclass(frozen=True)
class IssuedClient:
    """A client as created or rotated: the only moment its secrets are visible."""

    client_id: str
    client_secret: str
    callback_signing_secret: str
    request_signing_key_fingerprint: str | None = None

    def as_json(self) -> dict[str, str]:
        issued = {
            "clientId": self.client_id,
            "clientSecret": self.client_secret,
            "callbackSigningSecret": self.callback_signing_secret,
        }
        if self.request_signing_key_fingerprint is not None:
            issued["requestSigningKeyFingerprint"] = self.request_signing_key_fingerprint
        return issued


def _client_snapshot(client: asyncpg.Record) -> ClientSnapshot:
    return ClientSnapshot(
        client_id=client["id"],
        org_id=client["org_id"],
        environment=client["environment"],
        name=client["name"],
        status=client["status"],
        signing_key_salt=client["signing_key_salt"],
        previous_signing_key_salt=client["previous_signing_key_salt"],
        previous_salt_valid_until=client["previous_valid_until"],
        rotated_at=client["rotated_at"],
        request_signing_key=client["request_signing_key"],
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
    request_signing_key: str | None = None,
    actor: str = "operator",
) -> IssuedClient:
    """Register a client; with ``request_signing_key`` (PEM) it must sign its requests."""
    await require_organisation(connection, org_id)
    if environment not in ENVIRONMENTS:
        raise Problem("environment must be staging or production", code="INVALID_ENVIRONMENT")
    key = None if request_signing_key is None else accepted_signing_key(request_signing_key)
    client_id = new_id("cli")
    secret = secrets.token_urlsafe(32)
    salt = new_salt()
    client = await connection.fetchrow(
        sql.INSERT_CLIENT,
        client_id,
        org_id,
        environment,
        name,
        hasher.hash(secret),
        salt,
        None if key is None else public_pem(key),
    )
    details = {"name": name, "requestSigningKey": None if key is None else fingerprint(key)}
    await audit(connection, org_id, actor, "client.registered", client_id, details)
    await _publish_client(connection, client, "client.registered", client_id)
    return IssuedClient(
        client_id,
        secret,
        derive_signing_secret(platform_signing_key, client_id, salt),
        details["requestSigningKey"],
    )


def accepted_signing_key(pem: str) -> SigningPublicKey:
    """The request-signing key in ``pem``, or a 422 problem saying why it is refused."""
    try:
        return load_signing_key(pem)
    except InvalidSigningKey as error:
        raise Problem(
            f"public key refused: {error}", status=422, code="INVALID_PUBLIC_KEY"
        ) from None


def signing_key_fingerprint(pem: str | None) -> str | None:
    """The fingerprint of a stored key (which was validated when it was stored)."""
    return None if pem is None else fingerprint(load_signing_key(pem))


async def set_request_signing_key(
    connection: asyncpg.Connection,
    client_id: str,
    pem: str | None,
    actor: str = "operator",
) -> dict[str, str | None]:
    """Register, replace (``pem``) or remove (``None``) the key a client signs requests with.

    From the moment the gateway learns of it, only signatures by the new key are
    accepted; after a removal the client's requests need no signature.
    """
    key = None if pem is None else accepted_signing_key(pem)
    client = await client_for_update(connection, client_id)
    if client["status"] != "active":
        raise Conflict(f"client {client_id} is revoked", code="CLIENT_REVOKED")
    before = signing_key_fingerprint(client["request_signing_key"])
    after = None if key is None else fingerprint(key)
    if before != after:
        client = await connection.fetchrow(
            sql.SET_REQUEST_SIGNING_KEY, client_id, None if key is None else public_pem(key)
        )
        changes = {
            "fields": ["requestSigningKey"],
            "before": {"requestSigningKey": before},
            "after": {"requestSigningKey": after},
        }
        await audit(
            connection,
            client["org_id"],
            actor,
            "client.request_signing_key_changed",
            client_id,
            changes,
        )
        await _publish_client(connection, client, "client.request_signing_key_changed", client_id)
    return {"clientId": client_id, "requestSigningKeyFingerprint": after}


async def client_for_update(connection: asyncpg.Connection, client_id: str) -> asyncpg.Record:
    """The client, locked until the transaction ends; NotFound when there is none."""
    client = await connection.fetchrow(sql.GET_CLIENT_FOR_UPDATE, client_id)
    if client is None:
        raise NotFound(f"client {client_id} does not exist", code="CLIENT_NOT_FOUND")
    return client


async def revoke_client(
    connection: asyncpg.Connection, client_id: str, actor: str = "operator"
) -> None:
    client = await client_for_update(connection, client_id)
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
    client = await client_for_update(connection, client_id)
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
        await verify_secret(_DUMMY_HASH, client_secret)
        return None
    if client["status"] != "active":
        return None
    if await verify_secret(client["secret_hash"], client_secret):
        return client
    overlap_open = client["previous_valid_until"] and client["previous_valid_until"] > now()
    if overlap_open and await verify_secret(client["previous_secret_hash"], client_secret):
        return client
    return None


async def sign_in_client(
    connection: asyncpg.Connection,
    client_id: str,
    client_secret: str,
    client_ip: str | None,
    throttles: SignInThrottles,
) -> asyncpg.Record | None:
    """:func:`authenticate_client`, counting the attempt against the throttles first
    (:class:`TooManySignInAttempts` when it must wait). Manages its own transactions."""
    keys = throttle.keys_for(
        "token", client_ip, client_id, throttles.token, throttles.token_address
    )
    await _take_attempt(
        connection, keys, "token requests", "token.throttled", client_id=client_id, ip=client_ip
    )
    client = await authenticate_client(connection, client_id, client_secret)
    if client is not None:
        await throttle.succeeded(connection, keys)
    return client


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
            "requestSigningKey": row["request_signing_key"],
            "requestSigningKeyFingerprint": signing_key_fingerprint(row["request_signing_key"]),
        }
        for row in rows
    ]


# --- token issuing -----------------------------------------------------------


class TokenIssuer:
    """Signs ES256 access tokens with the newest active key; publishes all live keys.

    Private keys are stored sealed (see ``key_vault``) and opened once per key id.
    """

    def __init__(self, public_url: str, vault: KeyVault) -> None:
        self.issuer = public_url.rstrip("/") + REALM_PATH
        self._vault = vault
        self._opened: dict[str, ec.EllipticCurvePrivateKey] = {}

    @classmethod
    def for_settings(cls, settings: RulesSettings) -> TokenIssuer:
        return cls(settings.public_url, KeyVault(settings.signing_key_encryption_key))

    async def ensure_signing_key(self, connection: asyncpg.Connection) -> None:
        """Create the first key if there is none, and seal keys an older release stored plain.

        Every live key is opened here, so a wrong key-encryption key stops the start-up
        with a clear message instead of failing the first token request.
        """
        async with connection.transaction():
            await connection.execute(sql.LOCK_SIGNING_KEYS)
            for row in await connection.fetch(sql.ACTIVE_SIGNING_KEYS):
                key = self._open(row)
                if is_plain_pem(row["sealed_private_key"]):
                    sealed = self._vault.seal(row["kid"], key)
                    await connection.execute(sql.RESEAL_SIGNING_KEY, row["kid"], sealed)
                    log.info("signing_key.sealed", kid=row["kid"])
            if await connection.fetchrow(sql.ACTIVE_SIGNING_KEYS) is None:
                await self.add_signing_key(connection)

    async def add_signing_key(self, connection: asyncpg.Connection) -> str:
        """Create a new key; it signs from now on while older keys still verify."""
        private_key = ec.generate_private_key(ec.SECP256R1())
        kid = uuid.uuid4().hex
        public_jwk = jwt.algorithms.ECAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
        public_jwk.update({"kid": kid, "use": "sig", "alg": ALGORITHM})
        sealed = self._vault.seal(kid, private_key)
        await connection.execute(sql.INSERT_SIGNING_KEY, kid, sealed, public_jwk)
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
            payload, self._open(key), algorithm=ALGORITHM, headers={"kid": key["kid"]}
        )

    def _open(self, row: asyncpg.Record) -> ec.EllipticCurvePrivateKey:
        kid = row["kid"]
        if kid not in self._opened:
            self._opened[kid] = self._vault.open(kid, row["sealed_private_key"])
        return self._opened[kid]

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
        self,
        connection: asyncpg.Connection,
        user: Mapping[str, Any],
        lifetime: int,
        audiences: Sequence[str] = (CONSOLE_AUDIENCE, API_AUDIENCE),
    ) -> str:
        """A business user's token (``id``, ``org_id``, ``role``, ``email`` of ``user``),
        for the rules API and the read APIs unless ``audiences`` narrows it."""
        return await self.sign(
            connection,
            {
                "sub": user["id"],
                "aud": list(audiences),
                "typ": "user",
                "org_id": user["org_id"],
                "role": user["role"],
                "email": user["email"],
            },
            lifetime,
        )


CLIENT_SCOPE = "points:trigger points:read"


async def rotate_signing_key(
    connection: asyncpg.Connection,
    issuer: TokenIssuer,
    *,
    token_lifetime: timedelta = timedelta(hours=1),
) -> str:
    """Add a signing key, which signs from now on, and retire the keys before the previous one.

    Nothing is refused meanwhile: the previous key stays live, so tokens it signed a
    moment ago verify; older keys stop signing now and are retired once every token
    they signed has expired (``token_lifetime``), after which the JWKS still publishes
    them for a day. Returns the new key's ``kid``.
    """
    async with connection.transaction():
        await connection.execute(sql.LOCK_SIGNING_KEYS)
        previous = await connection.fetchrow(sql.ACTIVE_SIGNING_KEYS)
        kid = await issuer.add_signing_key(connection)
        keep = [kid] + ([previous["kid"]] if previous else [])
        await connection.execute(sql.RETIRE_SIGNING_KEYS, keep, now() + token_lifetime)
    log.info("signing_key.rotated", kid=kid)
    return kid


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
    if changes.get("cap_max") is not None:
        await _check_cap_covers_usage(connection, rule_id, merged.cap_max)
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
    await audit(
        connection, org_id, actor, "rule.updated", rule_id, _change_details(current, merged)
    )
    await _publish_rule(connection, updated, "rule.updated", correlation_id)
    return updated


async def _check_cap_covers_usage(
    connection: asyncpg.Connection, rule_id: str, cap_max: int | None
) -> None:
    # FOR SHARE: a result counted meanwhile waits until this change commits.
    used = await connection.fetchval(sql.RULE_USAGE_FOR_SHARE, rule_id) or 0
    if cap_max is not None and cap_max < used:
        raise Conflict(
            f"capMax {cap_max} is below the {used} points this rule has already moved",
            code="CAP_BELOW_USAGE",
            field="capMax",
            capUsed=used,
        )


async def record_usage(connection: asyncpg.Connection, event: PointsResultEvent) -> bool:
    """:func:`record_usages` of one event; False when it was seen before."""
    return await record_usages(connection, [event]) == 1


async def record_usages(connection: asyncpg.Connection, events: Sequence[PointsResultEvent]) -> int:
    """Count applied results' points against their rules, each event once; how many
    events were new.

    Runs in the caller's transaction. Rejected results moved nothing and count
    for nothing; a reversal takes back from the count the points it moved back.
    Each rule's row is updated at most twice a batch (what was added, then what
    was given back), not once an event: every result touches the same few hot
    rows. Rules are updated in rule id order, so replicas counting batches at
    once never deadlock on the same rules.
    """
    fresh = await inbox.claim_new(connection, events, POINTS_RESULTS)
    added: Counter[str] = Counter()
    released: Counter[str] = Counter()
    for event in fresh:
        result = event.data
        if result.status == "applied":
            added[result.rule_id] += result.amount
        elif result.status == "reversed" and result.reversed_amount:
            released[result.rule_id] += result.reversed_amount
    for rule_id in sorted(added.keys() | released.keys()):
        if added[rule_id]:
            await connection.execute(sql.ADD_RULE_USAGE, rule_id, added[rule_id])
        if released[rule_id]:
            await connection.execute(sql.RELEASE_RULE_USAGE, rule_id, released[rule_id])
    return len(fresh)


def _json_safe(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple | list):
        return list(value)
    return value


def _change_details(current: dict[str, Any], merged: RuleDraft) -> dict[str, Any]:
    """The audit details of an update: each changed field's value before and after, camelCase."""
    before, after = {}, {}
    for field, old in current.items():
        new = getattr(merged, field)
        if field == "authorized_client_ids":
            new = tuple(dict.fromkeys(new))
        if new != old:
            before[to_camel(field)] = _json_safe(old)
            after[to_camel(field)] = _json_safe(new)
    return {"fields": sorted(after), "before": before, "after": after}


def activation_problems(
    rule: asyncpg.Record, client_statuses: dict[str, str], at: datetime | None = None
) -> list[dict[str, str]]:
    """Every reason a rule cannot be activated, each naming the field to fix.

    ``client_statuses`` maps the rule's authorised clients that still exist in its
    organisation and environment to their status.
    """
    problems = []
    if rule["api_trigger"] and not rule["authorized_client_ids"]:
        problems.append(
            {
                "field": "authorizedClientIds",
                "code": "NO_AUTHORIZED_CLIENT",
                "detail": "an API-triggered rule needs at least one authorised client",
            }
        )
    for client_id in rule["authorized_client_ids"]:
        status = client_statuses.get(client_id)
        if status != "active":
            problems.append(
                {
                    "field": "authorizedClientIds",
                    "code": "CLIENT_NOT_ACTIVE",
                    "clientId": client_id,
                    "detail": f"authorised client {client_id} is {status or 'no longer available'}",
                }
            )
    if rule["ends_at"] and rule["ends_at"] <= (at or now()):
        problems.append(
            {"field": "endsAt", "code": "END_IN_PAST", "detail": "the rule's end date has passed"}
        )
    return problems


async def blocking_problems(
    connection: asyncpg.Connection, rule: asyncpg.Record
) -> list[dict[str, str]]:
    """What would stop ``rule`` being activated now (the console shows it before asking)."""
    rows = await connection.fetch(
        sql.CLIENT_STATUSES,
        rule["org_id"],
        rule["environment"],
        list(rule["authorized_client_ids"]),
    )
    return activation_problems(rule, {row["id"]: row["status"] for row in rows})


async def _check_activation(connection: asyncpg.Connection, rule: asyncpg.Record) -> None:
    problems = await blocking_problems(connection, rule)
    if problems:
        raise ActivationBlocked(problems)


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
        await _check_activation(connection, rule)
    updated = await connection.fetchrow(sql.SET_RULE_STATUS, rule_id, org_id, target)
    details = {
        "from": rule["status"],
        "before": {"status": rule["status"]},
        "after": {"status": target},
    }
    await audit(connection, org_id, actor, event_type, rule_id, details)
    await _publish_rule(connection, updated, event_type, correlation_id)
    return updated


async def promote_rule(
    connection: asyncpg.Connection, org_id: str, actor: str, rule_id: str, correlation_id: str
) -> asyncpg.Record:
    """Copy a staging rule into a production draft that remembers its source.

    Clients are per environment, so the copy has none: production clients must be
    chosen before it can be activated.
    """
    source = await _rule_for_change(connection, org_id, rule_id, None)
    if source["environment"] == "production":
        raise Conflict(f"rule {rule_id} is already a production rule", code="ALREADY_PRODUCTION")
    rule = await connection.fetchrow(
        sql.INSERT_RULE,
        new_id("rul"),
        org_id,
        "production",
        source["name"],
        source["description"],
        source["type"],
        source["api_trigger"],
        [],
        source["cap_max"],
        source["cap_per_member"],
        source["max_amount_per_request"],
        source["starts_at"],
        source["ends_at"],
        rule_id,
    )
    details = {"name": rule["name"], "promotedFrom": rule_id}
    await audit(connection, org_id, actor, "rule.promoted", rule["id"], details)
    await _publish_rule(connection, rule, "rule.created", correlation_id)
    return rule


# --- sharing -----------------------------------------------------------------


@dataclass(frozen=True)
class ShareDetails:
    """What a business user hands a third-party developer about a rule: no secrets."""

    rule_name: str
    rule_id: str
    rule_type: RuleType
    environment: Environment
    url_endpoint: str
    integration_guide_url: str


async def share_details(
    connection: asyncpg.Connection, org_id: str, rule_id: str, settings: RulesSettings
) -> ShareDetails:
    """The share information of an active rule; other rules are not shared."""
    rule = await get_rule(connection, org_id, rule_id)
    if rule["status"] != "active":
        raise Conflict(
            f"rule {rule_id} is {rule['status']}; only active rules are shared",
            code="RULE_NOT_ACTIVE",
        )
    return ShareDetails(
        rule_name=rule["name"],
        rule_id=rule["id"],
        rule_type=rule["type"],
        environment=rule["environment"],
        url_endpoint=settings.trigger_url(rule["environment"]).rstrip("/") + "/v1/points/requests",
        integration_guide_url=settings.integration_guide_for(rule["environment"]),
    )


async def request_share_email(
    connection: asyncpg.Connection,
    org_id: str,
    actor: str,
    rule_id: str,
    recipients: list[str],
    settings: RulesSettings,
    correlation_id: str,
) -> uuid.UUID:
    """Ask the notifier, through the outbox, to e-mail an active rule's share details.

    An organisation sends to at most ``share_email_recipients_per_day`` addresses in
    any 24 hours (every send is in the audit log), so the platform cannot be used
    to mail strangers at volume.
    """
    details = await share_details(connection, org_id, rule_id, settings)
    await connection.execute(sql.LOCK_ORGANISATION, org_id)  # one send counted at a time
    today = await connection.fetchrow(sql.SHARE_RECIPIENTS_TODAY, org_id)
    allowance = settings.share_email_recipients_per_day
    if today["recipients"] + len(recipients) > allowance:
        wait = today["until_oldest_leaves"] or timedelta(days=1)
        retry_after = max(1, math.ceil(wait.total_seconds()))
        raise Problem(
            f"this organisation may send share e-mails to {allowance} addresses a day and "
            f"has sent to {today['recipients']} in the last 24 hours; try again later",
            status=429,
            code="SHARE_EMAIL_LIMIT",
            headers={"Retry-After": str(retry_after)},
            retryAfter=retry_after,
        )
    notification_id = uuid.uuid4()
    event = ShareEmailRequestedEvent.new_event(
        data=ShareEmailRequested(
            notification_id=notification_id,
            rule_id=details.rule_id,
            rule_name=details.rule_name,
            rule_type=details.rule_type,
            environment=details.environment,
            url_endpoint=details.url_endpoint,
            integration_guide_url=details.integration_guide_url,
            recipients=tuple(recipients),
            requested_by=actor,
        ),
        environment=details.environment,
        org_id=org_id,
        correlation_id=correlation_id,
    )
    audit_details = {"recipients": recipients, "notificationId": str(notification_id)}
    await audit(connection, org_id, actor, "rule.shared_by_email", rule_id, audit_details)
    await outbox.enqueue(connection, event)
    return notification_id


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


@dataclass(frozen=True)
class AuditFilter:
    """Which audit lines to list: all of them when nothing is set."""

    rule_id: str | None = None
    actor: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before: int | None = None


async def list_audit(
    connection: asyncpg.Connection, org_id: str, where: AuditFilter, limit: int
) -> list[asyncpg.Record]:
    if where.since and where.until and where.until <= where.since:
        raise Problem("until must be after since", code="INVALID_PERIOD", field="until")
    return list(
        await connection.fetch(
            sql.LIST_AUDIT,
            org_id,
            where.before,
            where.rule_id,
            where.actor,
            where.since,
            where.until,
            limit,
        )
    )

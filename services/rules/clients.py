"""API clients: registering, rotating, revoking and authenticating them, and the keys
they sign requests with. Every change is audited and published on the client lifecycle
topic."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from contracts import ClientLifecycleEvent, ClientRateLimit, ClientSnapshot
from infra import outbox
from infra.problems import Problem
from infra.request_signing import (
    InvalidSigningKey,
    SigningPublicKey,
    fingerprint,
    load_signing_key,
    public_pem,
)
from infra.signing import derive_signing_secret, new_salt
from services.rules import repository, throttle
from services.rules.accounts import require_organisation
from services.rules.audit import audit
from services.rules.credentials import (
    DUMMY_HASH,
    SignInThrottles,
    count_or_refuse_attempt,
    hasher,
    verify_secret,
)
from services.rules.records import ENVIRONMENTS, Conflict, NotFound, new_id, now


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


def rate_limit_of(client: asyncpg.Record) -> ClientRateLimit | None:
    """The client's own trigger rate limit; None when it has none of its own."""
    if client["rate_limit_per_second"] is None:
        return None
    return ClientRateLimit(
        per_second=client["rate_limit_per_second"], burst=client["rate_limit_burst"]
    )


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
        expiry_callback_url=client["expiry_callback_url"],
        rate_limit=rate_limit_of(client),
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


@dataclass(frozen=True)
class FieldChange:
    """One field of a client changed, as its audit line names it."""

    field: str
    before: str | None
    after: str | None


async def _record_change(
    connection: asyncpg.Connection,
    client: asyncpg.Record,
    actor: str,
    event_type: str,
    change: FieldChange,
) -> None:
    """Audit and publish a change of one field of ``client`` (as changed)."""
    details = {
        "fields": [change.field],
        "before": {change.field: change.before},
        "after": {change.field: change.after},
    }
    await audit(connection, client["org_id"], actor, event_type, client["id"], details)
    await _publish_client(connection, client, event_type, client["id"])


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
    client = await repository.insert_client(
        connection,
        client_id=client_id,
        org_id=org_id,
        environment=environment,
        name=name,
        secret_hash=hasher.hash(secret),
        signing_key_salt=salt,
        request_signing_key=None if key is None else public_pem(key),
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
    org_id: str | None = None,
) -> dict[str, str | None]:
    """Register, replace (``pem``) or remove (``None``) the key a client signs requests with.

    From the moment the gateway learns of it, only signatures by the new key are
    accepted; after a removal the client's requests need no signature.
    """
    key = None if pem is None else accepted_signing_key(pem)
    client = await active_client_for_update(connection, client_id, org_id)
    before = signing_key_fingerprint(client["request_signing_key"])
    after = None if key is None else fingerprint(key)
    if before != after:
        client = await repository.set_request_signing_key(
            connection, client_id, None if key is None else public_pem(key)
        )
        change = FieldChange("requestSigningKey", before, after)
        await _record_change(
            connection, client, actor, "client.request_signing_key_changed", change
        )
    return {"clientId": client_id, "requestSigningKeyFingerprint": after}


async def client_for_update(
    connection: asyncpg.Connection, client_id: str, org_id: str | None = None
) -> asyncpg.Record:
    """The client, locked until the transaction ends; NotFound when there is none (or,
    given ``org_id``, when it belongs to another organisation: no hint that it exists)."""
    return _owned(await repository.get_client_for_update(connection, client_id), client_id, org_id)


async def active_client_for_update(
    connection: asyncpg.Connection, client_id: str, org_id: str | None = None
) -> asyncpg.Record:
    """As :func:`client_for_update`, and a conflict when the client is revoked."""
    client = await client_for_update(connection, client_id, org_id)
    if client["status"] != "active":
        raise Conflict(f"client {client_id} is revoked", code="CLIENT_REVOKED")
    return client


def _owned(client: asyncpg.Record | None, client_id: str, org_id: str | None) -> asyncpg.Record:
    if client is None or (org_id is not None and client["org_id"] != org_id):
        raise NotFound(f"client {client_id} does not exist", code="CLIENT_NOT_FOUND")
    return client


async def set_expiry_callback_url(
    connection: asyncpg.Connection,
    client_id: str,
    url: str | None,
    *,
    check: Callable[[str], Awaitable[None]],
    org_id: str | None = None,
    actor: str = "operator",
) -> dict[str, str | None]:
    """Opt a client in to signed ``points.expired`` callbacks at ``url`` (checked by
    ``check``, which raises a problem naming why a URL may not receive callbacks), or out
    of them (``None``). Setting the URL it already has changes and publishes nothing.

    The URL is checked before the client's row is locked: the check resolves its host,
    and a slow name server must not hold up the client's rotation or revocation. It is
    checked only for a client of the caller's organisation, so nobody has the service
    look up hosts through another organisation's client, or one that does not exist."""
    if url is not None:
        _owned(await repository.get_client(connection, client_id), client_id, org_id)
        await check(url)
    client = await active_client_for_update(connection, client_id, org_id)
    before = client["expiry_callback_url"]
    if before != url:
        client = await repository.set_expiry_callback_url(connection, client_id, url)
        change = FieldChange("expiryCallbackUrl", before, url)
        await _record_change(connection, client, actor, "client.expiry_callback_changed", change)
    return {"clientId": client_id, "expiryCallbackUrl": url}


async def revoke_client(
    connection: asyncpg.Connection,
    client_id: str,
    actor: str = "operator",
    org_id: str | None = None,
) -> asyncpg.Record:
    """Revoke the client (at once, on every gateway); a revoked one stays as it is."""
    client = await client_for_update(connection, client_id, org_id)
    if client["status"] == "revoked":
        return client
    client = await repository.revoke_client(connection, client_id)
    await audit(connection, client["org_id"], actor, "client.revoked", client_id, {})
    await _publish_client(connection, client, "client.revoked", client_id)
    return client


def _rate_limit_text(limit: ClientRateLimit | None) -> str | None:
    return None if limit is None else f"{limit.per_second:g}/s, burst {limit.burst}"


async def set_rate_limit(
    connection: asyncpg.Connection,
    client_id: str,
    *,
    per_second: float,
    burst: int,
    actor: str = "operator",
    org_id: str | None = None,
) -> ClientRateLimit:
    """Give the client its own trigger rate limit instead of the gateway's default. It
    travels to the gateway on the client's lifecycle event, so it applies to the next
    trigger once the caller's transaction has reached the gateway's projection."""
    limit = ClientRateLimit(per_second=per_second, burst=burst)  # refuses what is out of bounds
    client = await active_client_for_update(connection, client_id, org_id)
    before = rate_limit_of(client)
    if before != limit:
        client = await repository.set_client_rate_limit(
            connection, client_id, limit.per_second, limit.burst
        )
        change = FieldChange("rateLimit", _rate_limit_text(before), _rate_limit_text(limit))
        await _record_change(connection, client, actor, "client.rate_limit_changed", change)
    return limit


async def rotate_client_secret(
    connection: asyncpg.Connection,
    client_id: str,
    *,
    platform_signing_key: str,
    overlap: timedelta,
    actor: str = "operator",
    org_id: str | None = None,
) -> IssuedClient:
    """A new secret (and callback-signing secret) for the client; the previous secret
    keeps working for ``overlap``, and callbacks carry both signatures meanwhile."""
    client = await active_client_for_update(connection, client_id, org_id)
    secret = secrets.token_urlsafe(32)
    salt = new_salt()
    client = await repository.rotate_client_secret(
        connection,
        client_id,
        secret_hash=hasher.hash(secret),
        previous_valid_until=now() + overlap,
        signing_key_salt=salt,
    )
    await audit(connection, client["org_id"], actor, "client.secret_rotated", client_id, {})
    await _publish_client(connection, client, "client.secret_rotated", client_id)
    return IssuedClient(
        client_id, secret, derive_signing_secret(platform_signing_key, client_id, salt)
    )


async def secret_matches(client: asyncpg.Record | None, client_secret: str) -> bool:
    """Whether ``client_secret`` is the active ``client``'s secret (or its previous one,
    during a rotation's overlap). An unknown client costs as long as a known one."""
    if client is None:
        await verify_secret(DUMMY_HASH, client_secret)
        return False
    if client["status"] != "active":
        return False
    if await verify_secret(client["secret_hash"], client_secret):
        return True
    overlap_open = client["previous_valid_until"] and client["previous_valid_until"] > now()
    return bool(overlap_open) and await verify_secret(client["previous_secret_hash"], client_secret)


async def sign_in_client(
    pool: asyncpg.Pool,
    client_id: str,
    client_secret: str,
    client_ip: str | None,
    throttles: SignInThrottles,
) -> asyncpg.Record | None:
    """The active client these credentials name, or None, counting the attempt against
    the throttles first (:class:`TooManySignInAttempts` when it must wait).

    No database connection is held while the secret is checked: forty callers
    sending wrong secrets held the pool through their argon2 checks, and the
    JWKS, which every gateway and ledger fetch, waited seconds for a connection.
    """
    keys = throttle.keys_for(
        "token", client_ip, client_id, throttles.token, throttles.token_address
    )
    async with pool.acquire() as connection:
        await count_or_refuse_attempt(
            connection,
            keys,
            throttles,
            "token requests",
            "token.throttled",
            client_id=client_id,
            ip=client_ip,
        )
        client = await repository.get_client(connection, client_id)
    if not await secret_matches(client, client_secret):
        return None
    async with pool.acquire() as connection:
        await throttle.succeeded(connection, keys)
    return client


#: How stale the console's "last token issued" may be: one write a client a minute.
TOKEN_ISSUED_RESOLUTION = timedelta(minutes=1)


async def note_token_issued(
    connection: asyncpg.Connection, client: asyncpg.Record, at: datetime
) -> None:
    """Remember that a token was issued to ``client`` (as read when it signed in), at
    most once a minute: most token requests write nothing."""
    last = client["last_token_issued_at"]
    if last is None or at - last >= TOKEN_ISSUED_RESOLUTION:
        await repository.note_token_issued(connection, client["id"])


def describe_client(row: asyncpg.Record) -> dict[str, Any]:
    """A client as the API shows it: everything but its secrets and their hashes."""
    limit = rate_limit_of(row)
    overlap_ends = row["previous_valid_until"]
    return {
        "clientId": row["id"],
        "name": row["name"],
        "environment": row["environment"],
        "status": row["status"],
        "createdAt": row["created_at"],
        "rotatedAt": row["rotated_at"],
        "revokedAt": row["revoked_at"],
        "previousSecretValidUntil": overlap_ends if overlap_ends and overlap_ends > now() else None,
        "lastTokenIssuedAt": row["last_token_issued_at"],
        "rateLimit": None
        if limit is None
        else {"perSecond": limit.per_second, "burst": limit.burst},
        "requestSigningKeySet": row["request_signing_key"] is not None,
        "requestSigningKey": row["request_signing_key"],
        "requestSigningKeyFingerprint": signing_key_fingerprint(row["request_signing_key"]),
        "expiryCallbackUrl": row["expiry_callback_url"],
    }


async def get_client(connection: asyncpg.Connection, client_id: str, org_id: str) -> dict[str, Any]:
    """The organisation's client as the API shows it; NotFound for another's."""
    return describe_client(
        _owned(await repository.get_client(connection, client_id), client_id, org_id)
    )


async def list_clients(
    connection: asyncpg.Connection, org_id: str, environment: str | None = None
) -> list[dict[str, Any]]:
    return [
        describe_client(row)
        for row in await repository.list_clients(connection, org_id, environment)
    ]

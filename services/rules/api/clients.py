"""The organisation's API clients: listing them (every role), and creating, rotating,
revoking and configuring them (admins only). The same :mod:`services.rules.clients`
functions serve the ``points client`` commands, so the console and the CLI store,
audit and publish a client in one way.

A client of another organisation is a 404, as one that does not exist: nobody learns
another organisation's client ids by probing. Secrets appear in the answers of
``POST /v1/clients`` and ``rotate-secret`` only, never in a log line or the audit log.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Response

from contracts.text import Text
from infra.logging import get_logger
from infra.openapi import problems
from services.rules import clients
from services.rules.api import Context, Tx, User
from services.rules.schemas import (
    ClientCreate,
    ClientList,
    ClientView,
    ExpiryCallbackChange,
    ExpiryCallbackView,
    IssuedClientView,
    PublicKeyChange,
    PublicKeyView,
    RateLimitView,
)

log = get_logger(__name__)

router = APIRouter(tags=["clients"])

ADMIN_ONLY = {403: ["ADMIN_ROLE_REQUIRED"]}
#: What a change to one existing client may refuse.
CHANGE_PROBLEMS = {**ADMIN_ONLY, 404: ["CLIENT_NOT_FOUND"], 409: ["CLIENT_REVOKED"]}
#: Answers carrying a secret must not be kept by any cache on the way.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@router.get("/v1/clients", response_model=ClientList)
async def list_clients(user: User, tx: Tx, environment: Text | None = None) -> dict[str, Any]:
    """The organisation's API clients, without secrets (every role)."""
    return {"items": await clients.list_clients(tx, user.org_id, environment)}


@router.post(
    "/v1/clients", status_code=201, response_model=IssuedClientView, responses=problems(ADMIN_ONLY)
)
async def create_client(
    body: ClientCreate, user: User, tx: Tx, ctx: Context, response: Response
) -> dict[str, Any]:
    """Register an API client; its secret and callback-signing secret are in this answer
    only, never shown again (admins only)."""
    user.require_admin()
    issued = await clients.create_client(
        tx,
        org_id=user.org_id,
        environment=body.environment,
        name=body.name,
        platform_signing_key=ctx.settings.callback_signing_key,
        actor=user.id,
    )
    log.info("client.registered", client_id=issued.client_id, environment=body.environment)
    response.headers.update(NO_STORE)
    return {**await clients.get_client(tx, issued.client_id, user.org_id), **issued.as_json()}


@router.post(
    "/v1/clients/{client_id}/rotate-secret",
    response_model=IssuedClientView,
    responses=problems(CHANGE_PROBLEMS),
)
async def rotate_secret(
    client_id: Text, user: User, tx: Tx, ctx: Context, response: Response
) -> dict[str, Any]:
    """Issue the client a new secret, shown in this answer only; the previous one keeps
    working until ``previousSecretValidUntil`` (admins only)."""
    user.require_admin()
    issued = await clients.rotate_client_secret(
        tx,
        client_id,
        platform_signing_key=ctx.settings.callback_signing_key,
        overlap=timedelta(seconds=ctx.settings.secret_rotation_overlap_seconds),
        actor=user.id,
        org_id=user.org_id,
    )
    log.info("client.secret_rotated", client_id=client_id)
    response.headers.update(NO_STORE)
    return {**await clients.get_client(tx, client_id, user.org_id), **issued.as_json()}


@router.post(
    "/v1/clients/{client_id}/revoke",
    response_model=ClientView,
    responses=problems({**ADMIN_ONLY, 404: ["CLIENT_NOT_FOUND"]}),
)
async def revoke_client(client_id: Text, user: User, tx: Tx) -> dict[str, Any]:
    """Revoke the client: from this answer on it gets no token and the gateway refuses its
    triggers. Revoking a revoked client changes nothing (admins only)."""
    user.require_admin()
    await clients.revoke_client(tx, client_id, actor=user.id, org_id=user.org_id)
    log.info("client.revoked", client_id=client_id)
    return await clients.get_client(tx, client_id, user.org_id)


@router.put(
    "/v1/clients/{client_id}/public-key",
    response_model=PublicKeyView,
    responses=problems({**CHANGE_PROBLEMS, 422: ["INVALID_PUBLIC_KEY"]}),
)
async def set_public_key(
    client_id: Text, body: PublicKeyChange, user: User, tx: Tx
) -> dict[str, str | None]:
    """Register or replace the key the client signs its trigger requests with, or remove it
    with ``null`` (admins only)."""
    user.require_admin()
    changed = await clients.set_request_signing_key(
        tx, client_id, body.public_key, actor=user.id, org_id=user.org_id
    )
    log.info("client.request_signing_key_set", client_id=client_id, removed=body.public_key is None)
    return changed


@router.put(
    "/v1/clients/{client_id}/rate-limit",
    response_model=RateLimitView,
    responses=problems(CHANGE_PROBLEMS),
)
async def set_rate_limit(
    client_id: Text, body: RateLimitView, user: User, tx: Tx
) -> dict[str, Any]:
    """Give the client its own trigger rate limit instead of the gateway's default; the
    gateway applies it to the client's next trigger (admins only)."""
    user.require_admin()
    limit = await clients.set_rate_limit(
        tx,
        client_id,
        per_second=body.per_second,
        burst=body.burst,
        actor=user.id,
        org_id=user.org_id,
    )
    log.info("client.rate_limit_set", client_id=client_id, per_second=limit.per_second)
    return {"perSecond": limit.per_second, "burst": limit.burst}


@router.put(
    "/v1/clients/{client_id}/expiry-callback",
    response_model=ExpiryCallbackView,
    responses=problems(
        {
            400: ["INVALID_CALLBACK_URL"],
            **CHANGE_PROBLEMS,
            503: ["CALLBACK_HOST_UNRESOLVED"],
        }
    ),
)
async def set_expiry_callback(
    client_id: Text, body: ExpiryCallbackChange, user: User, tx: Tx, ctx: Context
) -> dict[str, str | None]:
    """Opt an API client in to signed ``points.expired`` callbacks at ``url`` (https, a
    public host), or out with ``null``; admins only."""
    user.require_admin()
    changed = await clients.set_expiry_callback_url(
        tx,
        client_id,
        body.url,
        check=ctx.settings.check_callback_url,
        org_id=user.org_id,
        actor=user.id,
    )
    log.info("client.expiry_callback_changed", client_id=client_id, opted_in=body.url is not None)
    return changed

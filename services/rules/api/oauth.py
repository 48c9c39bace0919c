"""The OAuth2 token issuer's routes, on Keycloak-compatible paths: the client-credentials
grant, the realm's signing keys and its metadata (RFC 8414, also where OpenID Connect
discovery looks)."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from contracts.text import refusal
from infra.logging import get_logger
from infra.tokens import (
    AUTHORIZATION_SERVER_METADATA_PATH,
    JWKS_PATH,
    OIDC_DISCOVERY_PATH,
    TOKEN_PATH,
)
from services.rules import clients, credentials, tokens
from services.rules.api import Context
from services.rules.records import now
from services.rules.schemas import AuthorizationServerMetadata, JwkSet

log = get_logger(__name__)

router = APIRouter()


def oauth_error(
    status: int,
    error: str,
    description: str,
    basic: bool = False,
    retry_after: int | None = None,
) -> JSONResponse:
    headers = {"Cache-Control": "no-store"}
    if basic:
        headers["WWW-Authenticate"] = 'Basic realm="partner"'
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return JSONResponse(
        {"error": error, "error_description": description}, status_code=status, headers=headers
    )


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        client_id, _, secret = base64.b64decode(encoded).decode().partition(":")
    except ValueError:  # not base64 (binascii.Error), not ASCII, or not UTF-8 inside
        return ("", "")
    return client_id, secret


def _oauth_error_answer(description: str, *errors: str) -> dict[str, Any]:
    """An RFC 6749 section 5.2 error answer with one of ``errors``, for the document."""
    schema = {
        "type": "object",
        "required": ["error", "error_description"],
        "properties": {
            "error": {"type": "string", "enum": list(errors)},
            "error_description": {"type": "string"},
        },
    }
    return {"description": description, "content": {"application/json": {"schema": schema}}}


#: The token endpoint reads its form itself (to support HTTP Basic too), so FastAPI
#: cannot describe the body; this does.
TOKEN_REQUEST_DOCS: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "required": ["grant_type"],
                    "properties": {
                        "grant_type": {"type": "string", "enum": ["client_credentials"]},
                        "client_id": {
                            "type": "string",
                            "description": "Omit when authenticating with HTTP Basic.",
                        },
                        "client_secret": {
                            "type": "string",
                            "description": "Omit when authenticating with HTTP Basic.",
                        },
                    },
                },
                "example": {
                    "grant_type": "client_credentials",
                    "client_id": "cli_3f2c9a7e5b1d4c8e9f0a1b2c3d4e5f60",
                    "client_secret": "<the client secret shown once at creation>",
                },
            }
        },
    },
    "responses": {
        "200": {
            "description": "An access token.",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["access_token", "token_type", "expires_in", "scope"],
                        "properties": {
                            "access_token": {"type": "string"},
                            "token_type": {"type": "string", "enum": ["Bearer"]},
                            "expires_in": {"type": "integer"},
                            "refresh_expires_in": {"type": "integer"},
                            "not-before-policy": {"type": "integer"},
                            "scope": {"type": "string"},
                        },
                    },
                    "example": {
                        "access_token": "eyJhbGciOiJFUzI1NiIsImtpZCI6…",
                        "token_type": "Bearer",
                        "expires_in": 300,
                        "refresh_expires_in": 0,
                        "not-before-policy": 0,
                        "scope": "points:trigger points:read",
                    },
                }
            },
        },
        "400": _oauth_error_answer(
            "`invalid_request` (not a form, no `grant_type`, a parameter sent more than once, "
            "or two client authentication methods) or `unsupported_grant_type` (RFC 6749).",
            "invalid_request",
            "unsupported_grant_type",
        ),
        "401": _oauth_error_answer(
            "`invalid_client`: unknown, revoked or wrong credentials.", "invalid_client"
        ),
        "429": _oauth_error_answer(
            "`slow_down`: too many failed requests for this client id (or any) from this "
            "address; `Retry-After` says when to try again.",
            "slow_down",
        ),
    },
}


@router.post(
    TOKEN_PATH,
    tags=["oauth2"],
    summary="Get an access token (client credentials)",
    openapi_extra=TOKEN_REQUEST_DOCS,
)
async def issue_token(request: Request, ctx: Context) -> JSONResponse:
    """OAuth2 client-credentials grant: form fields or HTTP Basic client authentication."""
    # A media type's name is case-insensitive (RFC 9110 section 8.3.1).
    content_type = request.headers.get("content-type", "").lower()
    if not content_type.startswith("application/x-www-form-urlencoded"):
        return oauth_error(400, "invalid_request", "send application/x-www-form-urlencoded")
    try:
        fields = parse_qs((await request.body()).decode())
    except UnicodeDecodeError:
        return oauth_error(400, "invalid_request", "the form is not UTF-8")
    # RFC 6749 section 3.2: a request parameter must not be sent more than once. Taking the
    # first of two grant types or two secrets would guess at what the client meant. An empty
    # value counts as not sent (section 3.1), as parse_qs leaves it out.
    repeated = [name for name, values in fields.items() if len(values) > 1]
    if repeated:
        names = ", ".join(repeated)
        return oauth_error(400, "invalid_request", f"repeated parameter: {names}; send each once")
    form = {name: values[0] for name, values in fields.items()}
    basic = _basic_credentials(request)
    grant_type = form.get("grant_type")
    if not grant_type:
        return oauth_error(400, "invalid_request", "grant_type is required")
    if grant_type != "client_credentials":
        return oauth_error(400, "unsupported_grant_type", "only client_credentials is supported")
    if basic is not None and "client_secret" in form:
        return oauth_error(400, "invalid_request", "use one client authentication method")
    client_id, secret = (
        basic
        if basic is not None
        else (
            form.get("client_id", ""),
            form.get("client_secret", ""),
        )
    )
    if not client_id or not secret:
        return oauth_error(401, "invalid_client", "client authentication failed", basic=True)
    for name, value in (("client_id", client_id), ("client_secret", secret)):
        refused = refusal(value)
        if refused is not None:
            return oauth_error(400, "invalid_request", f"{name} {refused}")
    client_ip = request.client.host if request.client else None
    try:
        ctx.throttles.refuse_if_waiting("token", client_ip, "token requests")
        client = await clients.sign_in_client(ctx.pool, client_id, secret, client_ip, ctx.throttles)
    except credentials.TooManySignInAttempts as throttled:
        return slow_down(throttled)
    if client is None:
        log.info("token.refused", client_id=client_id)
        return oauth_error(
            401, "invalid_client", "client authentication failed", basic=basic is not None
        )
    lifetime = ctx.settings.client_token_lifetime_seconds
    async with ctx.pool.acquire() as connection:
        token = await ctx.issuer.client_token(connection, client, lifetime)
        await clients.note_token_issued(connection, client, now())
    log.info("token.issued", client_id=client_id)
    return JSONResponse(
        {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": lifetime,
            "refresh_expires_in": 0,
            "not-before-policy": 0,
            "scope": tokens.CLIENT_SCOPE,
        },
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    )


@router.get(JWKS_PATH, response_model=JwkSet, tags=["oauth2"], summary="Realm signing keys (JWKS)")
async def jwks(ctx: Context) -> dict[str, Any]:
    """The realm's public signing keys."""
    return await ctx.issuer.jwks(ctx.pool)


@router.get(
    AUTHORIZATION_SERVER_METADATA_PATH,
    response_model=AuthorizationServerMetadata,
    tags=["oauth2"],
    summary="Authorization server metadata (RFC 8414)",
)
async def oauth_authorization_server(ctx: Context) -> dict[str, Any]:
    """The partner realm's OAuth 2.0 authorization server metadata, where RFC 8414 looks."""
    return ctx.issuer.metadata()


@router.get(
    OIDC_DISCOVERY_PATH,
    response_model=AuthorizationServerMetadata,
    tags=["oauth2"],
    summary="Authorization server metadata (OpenID Connect discovery path)",
)
async def openid_configuration(ctx: Context) -> dict[str, Any]:
    """The same authorization server metadata, where OpenID Connect clients look for it."""
    return ctx.issuer.metadata()


def slow_down(throttled: credentials.TooManySignInAttempts) -> JSONResponse:
    """RFC 6749's answer to a client that must wait before its next token request."""
    return oauth_error(429, "slow_down", throttled.detail, retry_after=throttled.retry_after)

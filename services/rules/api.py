"""HTTP routes of the rules service: thin translations into service calls."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs

import asyncpg
import jwt
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse

from contracts.text import Text, refusal
from infra.http import Forbidden, Unauthorized, bearer_token
from infra.logging import get_logger
from infra.storable import BIGINT_MAX, StorableDatetime
from infra.tokens import ALGORITHM, JWKS_PATH, REALM_PATH, TOKEN_PATH
from services.rules import sessions
from services.rules.guide import render_integration_guide
from services.rules.schemas import (
    ConsoleSessionOpened,
    ConsoleSessionView,
    LoginRequest,
    RuleCreate,
    RuleUpdate,
    RuleView,
    ShareEmailAccepted,
    ShareEmailRequest,
    ShareInfo,
    StatusChange,
    TokenResponse,
)
from services.rules.service import accounts, audit, clients, credentials, rules, sharing, tokens
from services.rules.settings import INTEGRATION_GUIDE_PATH, RulesSettings

log = get_logger(__name__)


@dataclass(frozen=True)
class RulesContext:
    """What the routes need, put on ``app.state.rules`` by the app factory."""

    settings: RulesSettings
    pool_of: Any  # a callable returning the runtime's pool once it has started
    issuer: tokens.TokenIssuer

    @property
    def pool(self) -> asyncpg.Pool:
        pool: asyncpg.Pool = self.pool_of()
        return pool


async def context(request: Request) -> RulesContext:
    ctx: RulesContext = request.app.state.rules
    return ctx


Context = Annotated[RulesContext, Depends(context)]


async def transaction(ctx: Context) -> AsyncIterator[asyncpg.Connection]:
    """The request's transaction: committed when the route returns, rolled back on error."""
    async with ctx.pool.acquire() as connection, connection.transaction():
        yield connection


# scope="function": the transaction commits before the response is sent. With
# FastAPI's default the commit would come after, so a client could act on a 2xx
# whose change is not yet visible, or that then fails to commit.
Tx = Annotated[asyncpg.Connection, Depends(transaction, scope="function")]


@dataclass(frozen=True)
class BusinessUser:
    id: str
    org_id: str
    role: str

    def require_editor(self) -> None:
        if self.role == "viewer":
            raise Forbidden("viewers cannot change anything", code="READ_ONLY_ROLE")


async def current_user(request: Request, ctx: Context) -> BusinessUser:
    """The business user of a bearer token or, without one, of the console's cookie session.

    A cookie is sent by the browser whatever page caused the request, so a change
    made through it also needs the session's CSRF token; a bearer token is only
    ever sent on purpose, so it needs none.
    """
    if "Authorization" not in request.headers and sessions.COOKIE_NAME in request.cookies:
        session = await console_session(request, ctx)
        require_csrf_token(request, session)
        return BusinessUser(session.user_id, session.org_id, session.role)
    token = bearer_token(request)
    try:
        kid = jwt.get_unverified_header(token).get("kid")
        jwks = await ctx.issuer.jwks(ctx.pool)
        key = next((key for key in jwks["keys"] if key["kid"] == kid), None)
        if key is None:
            raise Unauthorized("token signed with an unknown key")
        claims = jwt.decode(
            token,
            jwt.PyJWK(key).key,
            algorithms=[ALGORITHM],
            audience=tokens.CONSOLE_AUDIENCE,
            issuer=ctx.issuer.issuer,
            options={"require": ["exp", "iat", "sub", "iss", "aud"]},
        )
    except jwt.PyJWTError as error:
        raise Unauthorized(f"token is invalid: {error}") from error
    if claims.get("typ") != "user":
        raise Unauthorized("a business user's token is required")
    return BusinessUser(claims["sub"], claims["org_id"], claims["role"])


User = Annotated[BusinessUser, Depends(current_user)]


async def console_session(request: Request, ctx: Context) -> sessions.ConsoleSession:
    session_id = request.cookies.get(sessions.COOKIE_NAME)
    if not session_id:
        raise Unauthorized("no console session; sign in at POST /v1/auth/session")
    async with ctx.pool.acquire() as connection:
        session = await sessions.find_session(connection, session_id)
    if session is None:
        raise Unauthorized("the console session has ended or expired; sign in again")
    return session


def require_csrf_token(request: Request, session: sessions.ConsoleSession) -> None:
    if request.method not in sessions.STATE_CHANGING_METHODS:
        return
    if not session.accepts_csrf_token(request.headers.get(sessions.CSRF_HEADER)):
        raise Forbidden(
            f"a change made with the console session needs its {sessions.CSRF_HEADER} header",
            code="CSRF_TOKEN_INVALID",
        )


async def correlation_id(request: Request) -> str:
    return str(request.state.correlation_id)


CorrelationId = Annotated[str, Depends(correlation_id)]

router = APIRouter()


# --- OAuth2 token issuer (Keycloak-compatible paths) -------------------------


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
                    "example": {
                        "access_token": "eyJhbGciOiJFUzI1NiIsImtpZCI6…",
                        "token_type": "Bearer",
                        "expires_in": 300,
                        "refresh_expires_in": 0,
                        "not-before-policy": 0,
                        "scope": "points:trigger points:read",
                    }
                }
            },
        },
        "400": {"description": "`invalid_request` or `unsupported_grant_type` (RFC 6749)."},
        "401": {"description": "`invalid_client`: unknown, revoked or wrong credentials."},
        "429": {
            "description": "`slow_down`: too many failed requests for this client id (or any) "
            "from this address; `Retry-After` says when to try again."
        },
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
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return oauth_error(400, "invalid_request", "send application/x-www-form-urlencoded")
    try:
        form = {key: values[0] for key, values in parse_qs((await request.body()).decode()).items()}
    except UnicodeDecodeError:
        return oauth_error(400, "invalid_request", "the form is not UTF-8")
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
    throttles = credentials.SignInThrottles.of(ctx.settings)
    async with ctx.pool.acquire() as connection:
        try:
            client = await clients.sign_in_client(
                connection, client_id, secret, client_ip, throttles
            )
        except credentials.TooManySignInAttempts as throttled:
            return oauth_error(
                429,
                "slow_down",
                throttled.detail,
                retry_after=throttled.retry_after,
            )
        if client is None:
            log.info("token.refused", client_id=client_id)
            return oauth_error(
                401, "invalid_client", "client authentication failed", basic=basic is not None
            )
        lifetime = ctx.settings.client_token_lifetime_seconds
        token = await ctx.issuer.client_token(connection, client, lifetime)
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


@router.get(JWKS_PATH, tags=["oauth2"], summary="Realm signing keys (JWKS)")
async def jwks(ctx: Context) -> dict[str, Any]:
    """The realm's public signing keys."""
    return await ctx.issuer.jwks(ctx.pool)


@router.get(
    f"{REALM_PATH}/.well-known/openid-configuration",
    tags=["oauth2"],
    summary="OpenID Connect discovery",
)
async def openid_configuration(ctx: Context) -> dict[str, Any]:
    """OpenID Connect discovery for the partner realm."""
    base = ctx.settings.public_url.rstrip("/")
    return {
        "issuer": ctx.issuer.issuer,
        "token_endpoint": base + TOKEN_PATH,
        "jwks_uri": base + JWKS_PATH,
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
        "id_token_signing_alg_values_supported": [ALGORITHM],
        "response_types_supported": ["token"],
        "subject_types_supported": ["public"],
    }


# --- business users ------------------------------------------------------------


@router.post("/v1/auth/login", response_model=TokenResponse, tags=["auth"])
async def login(body: LoginRequest, request: Request, ctx: Context) -> TokenResponse:
    """Exchange a business user's e-mail and password for a bearer token (429 after repeated
    failures)."""
    client_ip = request.client.host if request.client else None
    throttles = credentials.SignInThrottles.of(ctx.settings)
    # Not the request transaction: a failed attempt must be counted, and stay counted.
    async with ctx.pool.acquire() as connection:
        user = await accounts.log_in(connection, body.email, body.password, client_ip, throttles)
        lifetime = ctx.settings.user_token_lifetime_seconds
        token = await ctx.issuer.user_token(connection, user, lifetime)
    log.info("user.logged_in", user_id=user["id"])
    return TokenResponse(access_token=token, expires_in=lifetime)


def _session_cookie_options(settings: RulesSettings) -> dict[str, Any]:
    # Secure everywhere but development, where the console is served over plain http.
    return {
        "path": "/",
        "httponly": True,
        "samesite": "strict",
        "secure": not settings.is_development,
    }


@router.post("/v1/auth/session", response_model=ConsoleSessionOpened, tags=["auth"])
async def open_console_session(
    body: LoginRequest, request: Request, response: Response, ctx: Context
) -> ConsoleSessionOpened:
    """Sign the console in: sets the HttpOnly session cookie and returns the CSRF token that
    every change made through it must carry as ``X-CSRF-Token`` (429 after repeated
    failures, as for ``/v1/auth/login``)."""
    client_ip = request.client.host if request.client else None
    throttles = credentials.SignInThrottles.of(ctx.settings)
    lifetime = ctx.settings.user_token_lifetime_seconds
    async with ctx.pool.acquire() as connection:
        user = await accounts.log_in(connection, body.email, body.password, client_ip, throttles)
        session_id, session = await sessions.open_session(
            connection, user, timedelta(seconds=lifetime)
        )
    response.set_cookie(
        sessions.COOKIE_NAME,
        session_id,
        max_age=lifetime,
        **_session_cookie_options(ctx.settings),
    )
    response.headers["Cache-Control"] = "no-store"
    log.info("console.session_opened", user_id=user["id"])
    return ConsoleSessionOpened(csrf_token=session.csrf_token())


@router.get("/v1/auth/session", response_model=ConsoleSessionView, tags=["auth"])
async def read_console_session(
    request: Request, response: Response, ctx: Context
) -> ConsoleSessionView:
    """Who the console's session cookie belongs to, with a fresh CSRF token (401 when the
    session has ended)."""
    session = await console_session(request, ctx)
    response.headers["Cache-Control"] = "no-store"
    return ConsoleSessionView(
        id=session.user_id,
        email=session.email,
        role=session.role,
        org_id=session.org_id,
        expires_at=session.expires_at,
        csrf_token=session.csrf_token(),
    )


@router.delete("/v1/auth/session", status_code=204, tags=["auth"])
async def close_console_session(request: Request, ctx: Context) -> Response:
    """Sign the console out: ends the session (with its CSRF token) and clears the cookie."""
    session_id = request.cookies.get(sessions.COOKIE_NAME)
    if session_id:
        async with ctx.pool.acquire() as connection:
            session = await sessions.find_session(connection, session_id)
            if session is not None:
                require_csrf_token(request, session)
                await sessions.close_session(connection, session)
                log.info("console.session_closed", user_id=session.user_id)
    response = Response(status_code=204)
    response.delete_cookie(sessions.COOKIE_NAME, **_session_cookie_options(ctx.settings))
    return response


@router.get("/v1/clients", tags=["clients"])
async def list_clients(user: User, tx: Tx, environment: Text | None = None) -> dict[str, Any]:
    """The organisation's API clients, without secrets."""
    return {"items": await clients.list_clients(tx, user.org_id, environment)}


# --- rules -------------------------------------------------------------------


@router.post("/v1/rules", status_code=201, response_model=RuleView, tags=["rules"])
async def create_rule(body: RuleCreate, user: User, tx: Tx, cid: CorrelationId) -> RuleView:
    """Create a rule as a draft."""
    user.require_editor()
    draft = rules.RuleDraft(
        **body.model_dump(exclude={"authorized_client_ids"}),
        authorized_client_ids=tuple(body.authorized_client_ids),
    )
    return RuleView.of(await rules.create_rule(tx, user.org_id, user.id, draft, cid))


@router.get("/v1/rules", tags=["rules"])
async def list_rules(user: User, tx: Tx, environment: Text | None = None) -> dict[str, Any]:
    """The organisation's rules, newest first."""
    found = await rules.list_rules(tx, user.org_id, environment)
    return {"items": [RuleView.of(rule).model_dump(by_alias=True, mode="json") for rule in found]}


@router.get("/v1/rules/{rule_id}", response_model=RuleView, tags=["rules"])
async def get_rule(rule_id: Text, user: User, tx: Tx) -> RuleView:
    """One rule."""
    return RuleView.of(await rules.get_rule(tx, user.org_id, rule_id))


@router.patch("/v1/rules/{rule_id}", response_model=RuleView, tags=["rules"])
async def update_rule(
    rule_id: Text, body: RuleUpdate, user: User, tx: Tx, cid: CorrelationId
) -> RuleView:
    """Change a rule; 409 when ``version`` is not the rule's current version."""
    user.require_editor()
    rule = await rules.update_rule(
        tx, user.org_id, user.id, rule_id, body.version, body.changes(), cid
    )
    return RuleView.of(rule)


async def _transition(
    action: str, rule_id: str, body: StatusChange | None, user: BusinessUser, tx: Any, cid: str
) -> RuleView:
    user.require_editor()
    version = body.version if body else None
    rule = await rules.change_status(tx, user.org_id, user.id, rule_id, action, cid, version)
    return RuleView.of(rule)


@router.post("/v1/rules/{rule_id}/activate", response_model=RuleView, tags=["rules"])
async def activate_rule(
    rule_id: Text, user: User, tx: Tx, cid: CorrelationId, body: StatusChange | None = None
) -> RuleView:
    """Activate a draft or paused rule; refused with the reasons when it is not ready."""
    return await _transition("activate", rule_id, body, user, tx, cid)


@router.post("/v1/rules/{rule_id}/pause", response_model=RuleView, tags=["rules"])
async def pause_rule(
    rule_id: Text, user: User, tx: Tx, cid: CorrelationId, body: StatusChange | None = None
) -> RuleView:
    """Stop an active rule from accepting triggers."""
    return await _transition("pause", rule_id, body, user, tx, cid)


@router.post("/v1/rules/{rule_id}/archive", response_model=RuleView, tags=["rules"])
async def archive_rule(
    rule_id: Text, user: User, tx: Tx, cid: CorrelationId, body: StatusChange | None = None
) -> RuleView:
    """Retire a rule for good."""
    return await _transition("archive", rule_id, body, user, tx, cid)


@router.post(
    "/v1/rules/{rule_id}/promote", status_code=201, response_model=RuleView, tags=["rules"]
)
async def promote_rule(rule_id: Text, user: User, tx: Tx, cid: CorrelationId) -> RuleView:
    """Copy a staging rule into a production draft; its production clients are chosen next."""
    user.require_editor()
    return RuleView.of(await rules.promote_rule(tx, user.org_id, user.id, rule_id, cid))


@router.get("/v1/rules/{rule_id}/share", response_model=ShareInfo, tags=["rules"])
async def share_rule(rule_id: Text, user: User, tx: Tx, ctx: Context) -> ShareInfo:
    """What a business user sends a third-party developer about an active rule."""
    return ShareInfo.of(await sharing.share_details(tx, user.org_id, rule_id, ctx.settings))


@router.post(
    "/v1/rules/{rule_id}/share/email",
    status_code=202,
    response_model=ShareEmailAccepted,
    tags=["rules"],
)
async def email_rule(
    rule_id: Text, body: ShareEmailRequest, user: User, tx: Tx, ctx: Context, cid: CorrelationId
) -> ShareEmailAccepted:
    """E-mail an active rule's share information to developers; the notifier sends it.
    An organisation may send to a limited number of addresses a day (429
    ``SHARE_EMAIL_LIMIT`` past it, with ``Retry-After``); every send is audited."""
    user.require_editor()
    notification_id = await sharing.request_share_email(
        tx, user.org_id, user.id, rule_id, body.recipients(), ctx.settings, cid
    )
    log.info("rule.share_email.requested", rule_id=rule_id, notification_id=str(notification_id))
    return ShareEmailAccepted(notification_id=str(notification_id))


@router.get("/v1/audit", tags=["audit"])
async def audit_log(
    user: User,
    tx: Tx,
    rule_id: Annotated[Text | None, Query(alias="ruleId", max_length=100)] = None,
    actor: Annotated[Text | None, Query(max_length=100)] = None,
    since: Annotated[
        StorableDatetime | None, Query(description="From this time (ISO 8601).")
    ] = None,
    until: Annotated[
        StorableDatetime | None, Query(description="Before this time (ISO 8601).")
    ] = None,
    before: Annotated[
        int | None, Query(ge=1, le=BIGINT_MAX, description="Lines older than this id.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> dict[str, Any]:
    """The organisation's audit history, newest first, filtered by rule, actor and time."""
    where = audit.AuditFilter(rule_id, actor, since, until, before)
    rows = await audit.list_audit(tx, user.org_id, where, limit)
    items = [
        {
            "id": row["id"],
            "actor": row["actor"],
            "actorEmail": row["actor_email"],
            "action": row["action"],
            "subjectId": row["subject_id"],
            "details": row["details"],
            "at": row["at"].isoformat(),
        }
        for row in rows
    ]
    return {"items": items, "nextBefore": items[-1]["id"] if len(items) == limit else None}


# --- developer documentation ---------------------------------------------------

#: The guide loads nothing from elsewhere and runs no script; say so to the browser.
GUIDE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "frame-ancestors 'none'",
    "Cache-Control": "public, max-age=300",
}


@router.get(
    INTEGRATION_GUIDE_PATH,
    response_class=HTMLResponse,
    tags=["docs"],
    responses={200: {"content": {"text/html": {}}, "description": "The guide as an HTML page."}},
)
async def integration_guide(
    ctx: Context,
    environment: Annotated[
        Literal["staging", "production"],
        Query(description="The environment whose URLs the guide shows.", examples=["staging"]),
    ],
) -> HTMLResponse:
    """The API Integration Guide for third-party developers: tokens, triggers, response codes,
    callbacks and their signatures, with this deployment's URLs."""
    page = render_integration_guide(ctx.settings, environment)
    return HTMLResponse(page, headers=GUIDE_HEADERS)

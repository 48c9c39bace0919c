"""Business users' routes: signing in for a bearer token or the console's cookie session."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request, Response

from infra.logging import get_logger
from infra.openapi import RETRY_AFTER, problems
from services.rules import accounts, sessions
from services.rules.api import Context, console_session, require_csrf_token
from services.rules.schemas import (
    ConsoleSessionOpened,
    ConsoleSessionView,
    LoginRequest,
    TokenResponse,
)
from services.rules.settings import RulesSettings

log = get_logger(__name__)

router = APIRouter()

#: What a sign-in refuses: wrong credentials, and too many failed attempts.
SIGN_IN_PROBLEMS = problems(
    {401: ["INVALID_CREDENTIALS"], 429: ["TOO_MANY_LOGIN_ATTEMPTS"]}, headers={429: RETRY_AFTER}
)


@router.post(
    "/v1/auth/login",
    response_model=TokenResponse,
    tags=["auth"],
    responses=SIGN_IN_PROBLEMS,
)
async def login(body: LoginRequest, request: Request, ctx: Context) -> TokenResponse:
    """Exchange a business user's e-mail and password for a bearer token (429 after repeated
    failures)."""
    client_ip = request.client.host if request.client else None
    ctx.throttles.refuse_if_waiting("login", client_ip, "logins")
    # Not the request transaction: a failed attempt must be counted, and stay counted.
    user = await accounts.log_in(ctx.pool, body.email, body.password, client_ip, ctx.throttles)
    lifetime = ctx.settings.user_token_lifetime_seconds
    async with ctx.pool.acquire() as connection:
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


@router.post(
    "/v1/auth/session",
    response_model=ConsoleSessionOpened,
    tags=["auth"],
    responses=SIGN_IN_PROBLEMS,
)
async def open_console_session(
    body: LoginRequest, request: Request, response: Response, ctx: Context
) -> ConsoleSessionOpened:
    """Sign the console in: sets the HttpOnly session cookie and returns the CSRF token that
    every change made through it must carry as ``X-CSRF-Token`` (429 after repeated
    failures, as for ``/v1/auth/login``)."""
    client_ip = request.client.host if request.client else None
    ctx.throttles.refuse_if_waiting("login", client_ip, "logins")
    lifetime = ctx.settings.user_token_lifetime_seconds
    user = await accounts.log_in(ctx.pool, body.email, body.password, client_ip, ctx.throttles)
    async with ctx.pool.acquire() as connection, connection.transaction():
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


@router.get(
    "/v1/auth/session",
    response_model=ConsoleSessionView,
    tags=["auth"],
    responses=problems({401: ["UNAUTHORIZED"]}),
)
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


@router.delete(
    "/v1/auth/session",
    status_code=204,
    tags=["auth"],
    responses=problems({403: ["CSRF_TOKEN_INVALID"]}),
)
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

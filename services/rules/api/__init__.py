"""HTTP routes of the rules service: thin translations into service calls, one module
per area (``oauth``, ``accounts``, ``rules``, ``guide``). What every route depends on is
here: the service's context, the request's transaction, the signed-in business user and
the correlation id."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated

import asyncpg
import jwt
from fastapi import Depends, Request

from infra import outbox
from infra.http import Forbidden, ServiceContext, Unauthorized, bearer_token
from infra.tokens import ALGORITHM
from services.rules import credentials, sessions, team_repository, throttle, tokens
from services.rules.propagation import Propagation
from services.rules.settings import RulesSettings


@dataclass(frozen=True)
class RulesContext(ServiceContext):
    """What the routes need, put on ``app.state.rules`` by the app factory."""

    settings: RulesSettings
    issuer: tokens.TokenIssuer
    propagation: Propagation
    #: The addresses this process told to wait before their next sign-in attempt.
    waiting: throttle.Waiting = field(default_factory=throttle.Waiting)

    @property
    def throttles(self) -> credentials.SignInThrottles:
        return credentials.SignInThrottles.of(self.settings, self.waiting)


async def context(request: Request) -> RulesContext:
    ctx: RulesContext = request.app.state.rules
    return ctx


Context = Annotated[RulesContext, Depends(context)]


async def transaction(request: Request, ctx: Context) -> AsyncIterator[asyncpg.Connection]:
    """The request's transaction: committed when the route returns, rolled back on error.

    A change is answered once the trigger gateway (and, for a member's standing, the
    ledger) has it (:mod:`propagation`), so a trigger the caller sends next is judged
    on it.
    """
    changing = request.method in sessions.STATE_CHANGING_METHODS
    async with (
        ctx.pool.acquire() as connection,
        connection.transaction(),
        outbox.staging(connection, watch=changing) as staged,
    ):
        yield connection
    if staged.row_id is not None:
        await ctx.propagation.reach_readers(staged)


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

    def require_admin(self, what: str = "change API clients") -> None:
        if self.role != "admin":
            raise Forbidden(f"only an admin can {what}", code="ADMIN_ROLE_REQUIRED")


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
    # The token names who signed in; whether they still may, and as what, is the
    # database's to say, so a removal or a change of role counts from the next request.
    role = await team_repository.active_user_role(ctx.pool, claims["org_id"], claims["sub"])
    if role is None:
        raise Unauthorized("this user is no longer a member of the organisation")
    return BusinessUser(claims["sub"], claims["org_id"], role)


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

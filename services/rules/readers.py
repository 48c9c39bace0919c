"""Calling the ledger, the trigger gateway and the notifier on behalf of a business user.

The console's same-origin proxy and the activity routes ask the other services for
what only they hold, over HTTP, with a short-lived token minted for the signed-in
user (for the other services' APIs only), so a browser never holds a bearer token.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg
import httpx

from infra.tokens import API_AUDIENCE
from services.rules import accounts, sessions
from services.rules.settings import RulesSettings
from services.rules.tokens import TokenIssuer

#: A user's read token is signed anew this long before it would expire (at most half
#: its lifetime).
TOKEN_RENEWAL_MARGIN_SECONDS = 10.0
#: Query parameters of a read.
Params = dict[str, Any]


@dataclass(frozen=True)
class _HeldToken:
    token: str
    renew_at: float  # on the reader's clock


class UpstreamClient:
    """The rules service's way to another service: one HTTP client for the app's
    lifetime, and each user's short-lived token reused until shortly before it expires,
    so a page's calls neither sign a token nor open a connection each."""

    #: The service called, and the problem code of its not answering.
    service = "service"
    unavailable_code = "SERVICE_UNAVAILABLE"

    def __init__(
        self,
        base_url: str,
        settings: RulesSettings,
        issuer: TokenIssuer,
        *,
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._lifetime = settings.console_ledger_token_lifetime_seconds
        # Renewed this long before it expires, so a token is never sent as it runs out.
        self._renew_before = min(TOKEN_RENEWAL_MARGIN_SECONDS, self._lifetime / 2)
        self._issuer = issuer
        self._http = http or httpx.AsyncClient(timeout=5.0)
        self._clock = clock
        self._tokens: dict[str, _HeldToken] = {}

    async def aclose(self) -> None:
        await self._http.aclose()

    async def call(
        self,
        pool: asyncpg.Pool,
        session: sessions.ConsoleSession,
        method: Literal["GET", "POST"],
        path: str,
        params: Params,
    ) -> httpx.Response:
        """The service's answer to ``method path`` for the session's user."""
        token = await self._token(pool, session.org_id, session.user_id)
        return await self._http.request(
            method,
            self._base_url + path,
            params=params,
            headers={"Authorization": f"Bearer {token}"},
        )

    async def get(
        self, pool: asyncpg.Pool, session: sessions.ConsoleSession, path: str, params: Params
    ) -> httpx.Response:
        """The service's answer to ``GET path`` for the session's user."""
        return await self.call(pool, session, "GET", path, params)

    async def get_as(
        self,
        pool: asyncpg.Pool,
        org_id: str,
        user_id: str,
        url: str,
        params: Params,
        *,
        timeout: float | None = None,
    ) -> httpx.Response:
        """The answer of a read API (the ledger's or a gateway's) to ``GET url`` for the
        business user ``user_id``; ``timeout`` in seconds, else the client's own."""
        token = await self._token(pool, org_id, user_id)
        return await self._http.get(
            url,
            params=params,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
        )

    async def _token(self, pool: asyncpg.Pool, org_id: str, user_id: str) -> str:
        now = self._clock()
        held = self._tokens.get(user_id)
        if held is not None and now < held.renew_at:
            return held.token
        async with pool.acquire() as connection:
            user = await accounts.require_user(connection, org_id, user_id)
            # For the read APIs only: the rules API refuses it, so a leaked one changes nothing.
            token = await self._issuer.user_token(
                connection, user, self._lifetime, audiences=(API_AUDIENCE,)
            )
        self._tokens = {
            user_id: held for user_id, held in self._tokens.items() if now < held.renew_at
        }
        self._tokens[user_id] = _HeldToken(token, now + self._lifetime - self._renew_before)
        return token


class LedgerReader(UpstreamClient):
    """The way to the ledger's reads (balances, transactions, rule totals, activity), and
    the activity routes' to the gateways' (:meth:`get_as` takes any URL)."""

    service = "ledger"
    unavailable_code = "LEDGER_UNAVAILABLE"

    def __init__(self, settings: RulesSettings, issuer: TokenIssuer, **options: Any) -> None:
        super().__init__(settings.ledger_url, settings, issuer, **options)


class NotifierClient(UpstreamClient):
    """The console's way to the notifier's callback log, and replays of parked callbacks."""

    service = "notifier"
    unavailable_code = "NOTIFIER_UNAVAILABLE"

    def __init__(self, settings: RulesSettings, issuer: TokenIssuer, **options: Any) -> None:
        super().__init__(settings.notifier_url, settings, issuer, **options)

"""Reading the ledger and the trigger gateway on behalf of a business user.

The console's same-origin proxy and the activity routes ask the other services for
what only they hold, over HTTP, with a short-lived token minted for the signed-in
user (for the read APIs only), so a browser never holds a bearer token.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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


class LedgerReader:
    """The console's way to the ledger, and the activity routes' to the ledger and the
    gateways: one HTTP client for the app's lifetime, and each user's short-lived read
    token reused until shortly before it expires, so a page's reads neither sign a token
    nor open a connection each."""

    def __init__(
        self,
        settings: RulesSettings,
        issuer: TokenIssuer,
        *,
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._base_url = settings.ledger_url.rstrip("/")
        self._lifetime = settings.console_ledger_token_lifetime_seconds
        # Renewed this long before it expires, so a token is never sent as it runs out.
        self._renew_before = min(TOKEN_RENEWAL_MARGIN_SECONDS, self._lifetime / 2)
        self._issuer = issuer
        self._http = http or httpx.AsyncClient(timeout=5.0)
        self._clock = clock
        self._tokens: dict[str, _HeldToken] = {}

    async def aclose(self) -> None:
        await self._http.aclose()

    async def get(
        self, pool: asyncpg.Pool, session: sessions.ConsoleSession, path: str, params: Params
    ) -> httpx.Response:
        """The ledger's answer to ``GET path`` for the session's user."""
        return await self.get_as(
            pool, session.org_id, session.user_id, self._base_url + path, params
        )

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

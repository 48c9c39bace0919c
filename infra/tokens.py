"""Verifying the platform's access tokens without a network call per request.

The rules service issues ES256 JWTs for API clients (client-credentials
grant) and for business users (console login) and publishes its public keys
as a JWKS. Other services keep those keys in memory and fetch the JWKS again
only when a token names a key id they have not seen (key rotation), at most
once every few seconds so forged ``kid`` values cannot make them hammer the
issuer.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import jwt

from infra.logging import get_logger

log = get_logger(__name__)

REALM_PATH = "/realms/partner"
JWKS_PATH = f"{REALM_PATH}/protocol/openid-connect/certs"
TOKEN_PATH = f"{REALM_PATH}/protocol/openid-connect/token"
#: The realm's metadata where OpenID Connect Discovery looks: appended to the issuer's path.
OIDC_DISCOVERY_PATH = f"{REALM_PATH}/.well-known/openid-configuration"
#: The same metadata where RFC 8414 (section 3) looks: the well-known segment goes between
#: the host and the issuer's path.
AUTHORIZATION_SERVER_METADATA_PATH = f"/.well-known/oauth-authorization-server{REALM_PATH}"
ALGORITHM = "ES256"
#: Audience of tokens meant for the developer-facing APIs (gateway, ledger reads).
API_AUDIENCE = "points-api"
#: How many verified tokens a verifier remembers (a few MB at most).
VERIFIED_TOKENS_KEPT = 10_000


class InvalidToken(Exception):
    """The token is missing, expired, tampered with or unknown."""


@dataclass(frozen=True)
class Principal:
    """Who a verified token speaks for."""

    kind: Literal["client", "user"]
    subject: str
    org_id: str
    environment: str | None
    role: str | None
    scopes: frozenset[str]
    claims: dict[str, Any]

    @property
    def client_id(self) -> str:
        assert self.kind == "client"
        return self.subject


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    kind = claims.get("typ")
    if kind not in ("client", "user") or "org_id" not in claims:
        raise InvalidToken("token does not name a client or user of an organisation")
    return Principal(
        kind=kind,
        subject=str(claims["sub"]),
        org_id=str(claims["org_id"]),
        environment=claims.get("environment"),
        role=claims.get("role"),
        scopes=frozenset(str(claims.get("scope", "")).split()),
        claims=claims,
    )


class JwksVerifier:
    """Verifies tokens against the issuer's JWKS, cached in memory."""

    def __init__(
        self,
        issuer_url: str,
        *,
        audience: str = API_AUDIENCE,
        refresh_interval: float = 5.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.issuer = issuer_url.rstrip("/") + REALM_PATH
        self.jwks_url = issuer_url.rstrip("/") + JWKS_PATH
        self.audience = audience
        self._refresh_interval = refresh_interval
        self._http = http or httpx.AsyncClient(timeout=5.0)
        self._keys: dict[str, jwt.PyJWK] = {}
        self._attempted_at = -math.inf
        self._lock = asyncio.Lock()
        self._verified: OrderedDict[str, Principal] = OrderedDict()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def refresh(self) -> None:
        """Fetch the issuer's key set, at most once per refresh interval.

        Callers that arrive while a fetch is in flight wait for that one, and a
        fetch that failed or found no keys is not tried again sooner either: an
        issuer that is down or slow costs one fetch per interval, not one per
        token with an unknown ``kid``.
        """
        async with self._lock:
            if time.monotonic() - self._attempted_at < self._refresh_interval:
                return
            self._attempted_at = time.monotonic()
            response = await self._http.get(self.jwks_url)
            response.raise_for_status()
            self._keys = {
                key.key_id: key
                for key in jwt.PyJWKSet.from_dict(response.json()).keys
                if key.key_id is not None
            }
            log.info("jwks.refreshed", keys=sorted(self._keys))

    async def _key_for(self, kid: str) -> jwt.PyJWK:
        if kid not in self._keys:
            try:
                await self.refresh()
            except (httpx.HTTPError, ValueError, jwt.PyJWTError) as error:
                # Unreachable, an error status, or not a key set (json's ValueError).
                log.warning("jwks.refresh_failed", error=str(error))
        if kid not in self._keys:
            raise InvalidToken("token signed with an unknown key")
        return self._keys[kid]

    async def verify(self, token: str) -> Principal:
        """The principal of a valid token; :class:`InvalidToken` otherwise.

        A client reuses its token for every call until it expires, so a token
        verified once is remembered (the most recent ``VERIFIED_TOKENS_KEPT``)
        until its ``exp``: checking an ES256 signature costs more than the rest
        of the gateway's work on a request. Revocation is not decided here; the
        caller checks it on every request.
        """
        principal = self._verified.get(token)
        if principal is not None:
            if principal.claims["exp"] > time.time():
                return principal
            del self._verified[token]
        principal = await self._verify_signature_and_claims(token)
        self._verified[token] = principal
        if len(self._verified) > VERIFIED_TOKENS_KEPT:
            self._verified.popitem(last=False)
        return principal

    async def _verify_signature_and_claims(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise InvalidToken("token is malformed") from error
        if header.get("alg") != ALGORITHM or not isinstance(header.get("kid"), str):
            raise InvalidToken("token is not signed the way this platform signs tokens")
        key = await self._key_for(header["kid"])
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError as error:
            raise InvalidToken("token has expired") from error
        except jwt.PyJWTError as error:
            raise InvalidToken(f"token is invalid: {error}") from error
        return principal_from_claims(claims)

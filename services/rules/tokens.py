"""The OAuth2 token issuer: ES256 access tokens for API clients and business users,
signed with keys that are stored sealed and rotated without refusing anyone."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import asyncpg
import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from infra.logging import get_logger
from infra.tokens import ALGORITHM, API_AUDIENCE, JWKS_PATH, REALM_PATH, TOKEN_PATH
from services.rules import repository
from services.rules.key_vault import KeyVault, is_plain_pem
from services.rules.records import now
from services.rules.settings import RulesSettings

log = get_logger(__name__)

CONSOLE_AUDIENCE = "points-console"
CLIENT_SCOPE = "points:trigger points:read"
#: The ``aud`` of every access token the realm issues to a client, advertised in the realm's
#: metadata under a name of this platform's own: no registered metadata name says which
#: audience a server's tokens carry, and RFC 8414 section 2 lets a server add its own.
AUDIENCE_METADATA = "points_access_token_audience"


class TokenIssuer:
    """Signs ES256 access tokens with the newest active key; publishes all live keys.

    Private keys are stored sealed (see ``key_vault``) and opened once per key id.
    """

    def __init__(self, public_url: str, vault: KeyVault) -> None:
        self._public_url = public_url.rstrip("/")
        self.issuer = self._public_url + REALM_PATH
        self._vault = vault
        self._opened: dict[str, ec.EllipticCurvePrivateKey] = {}

    @classmethod
    def for_settings(cls, settings: RulesSettings) -> TokenIssuer:
        return cls(settings.public_url, KeyVault(settings.signing_key_encryption_key))

    async def ensure_signing_key(self, connection: asyncpg.Connection) -> None:
        """Create the first key if there is none, and seal keys an older release stored plain,
        in the caller's transaction (which holds the signing keys' lock until it ends).

        Every live key is opened here, so a wrong key-encryption key stops the start-up
        with a clear message instead of failing the first token request.
        """
        await repository.lock_signing_keys(connection)
        for row in await repository.active_signing_keys(connection):
            key = self._open(row)
            if is_plain_pem(row["sealed_private_key"]):
                sealed = self._vault.seal(row["kid"], key)
                await repository.reseal_signing_key(connection, row["kid"], sealed)
                log.info("signing_key.sealed", kid=row["kid"])
        if await repository.newest_signing_key(connection) is None:
            await self.add_signing_key(connection)

    async def add_signing_key(self, connection: asyncpg.Connection) -> str:
        """Create a new key; it signs from now on while older keys still verify."""
        private_key = ec.generate_private_key(ec.SECP256R1())
        kid = uuid.uuid4().hex
        public_jwk = jwt.algorithms.ECAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
        public_jwk.update({"kid": kid, "use": "sig", "alg": ALGORITHM})
        sealed = self._vault.seal(kid, private_key)
        await repository.insert_signing_key(connection, kid, sealed, public_jwk)
        return kid

    def metadata(self) -> dict[str, Any]:
        """The realm's RFC 8414 metadata: an authorization server that serves the
        client-credentials grant only, at its token endpoint.

        What such a server leaves out, and why:

        - ``authorization_endpoint``: RFC 8414 section 2 requires it only when a supported
          grant type uses the authorization endpoint, and client credentials does not.
        - ``response_types_supported``: response types are what an authorization endpoint
          answers, so this server has none. Section 2 as published calls the member REQUIRED
          without that condition, but section 3.2 says a member with zero elements MUST be
          left out; RFC 8414's erratum 7793 (reported in 2024) settles the clash as required
          unless no grant type uses the authorization endpoint, like ``authorization_endpoint``,
          and OpenID for Verifiable Credential Issuance 1.0 reads it the same way. Naming a
          response type anyway would tell clients of a flow nobody serves (``token``, which
          this document used to name, is the implicit flow).
        - What OpenID Connect Discovery requires beyond that (``authorization_endpoint``
          unconditionally, ``response_types_supported``, ``subject_types_supported``,
          ``id_token_signing_alg_values_supported``): it describes an OpenID Provider, which
          signs users in and issues ID tokens; this realm does neither, so it cannot honestly
          be one. Its ``openid-configuration`` path serves this same OAuth document, as
          RFC 8414 section 5 allows (there the name stands for a general OAuth feature).

        ``grant_types_supported`` must be present: left out, it would mean authorization
        code and implicit.
        """
        return {
            "issuer": self.issuer,
            "token_endpoint": self._public_url + TOKEN_PATH,
            "jwks_uri": self._public_url + JWKS_PATH,
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "scopes_supported": CLIENT_SCOPE.split(),
            AUDIENCE_METADATA: API_AUDIENCE,
        }

    async def jwks(self, connection: asyncpg.Connection) -> dict[str, Any]:
        return {"keys": await repository.published_signing_keys(connection)}

    async def sign(
        self, connection: asyncpg.Connection, claims: dict[str, Any], lifetime: int
    ) -> str:
        key = await repository.newest_signing_key(connection)
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
        user: asyncpg.Record,
        lifetime: int,
        audiences: Sequence[str] = (CONSOLE_AUDIENCE, API_AUDIENCE),
    ) -> str:
        """A business user's token (``id``, ``org_id``, ``role``, ``email`` of ``user``, a row
        of ``users``), for the rules API and the read APIs unless ``audiences`` narrows it."""
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
    them for a day. Returns the new key's ``kid``; runs in the caller's transaction.
    """
    await repository.lock_signing_keys(connection)
    previous = await repository.newest_signing_key(connection)
    kid = await issuer.add_signing_key(connection)
    keep = [kid] + ([previous["kid"]] if previous else [])
    await repository.retire_signing_keys(connection, keep, now() + token_lifetime)
    log.info("signing_key.rotated", kid=kid)
    return kid

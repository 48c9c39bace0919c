"""The JWKS cache of the gateway and the ledger, against a real HTTP issuer on 127.0.0.1
that is down, slow, broken or fine: tokens with an unknown ``kid`` never turn into a
stampede of fetches."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from infra.tokens import API_AUDIENCE, JWKS_PATH, REALM_PATH, InvalidToken, JwksVerifier


@dataclass
class Issuer:
    """An HTTP server that answers every request with ``status`` and ``body`` after
    ``delay`` seconds, and counts the requests."""

    status: int = 503
    body: bytes = b"{}"
    delay: float = 0.0
    requests: int = 0
    url: str = ""
    server: asyncio.Server | None = field(default=None, repr=False)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        self.requests += 1
        await asyncio.sleep(self.delay)
        head = (
            f"HTTP/1.1 {self.status} X\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(self.body)}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode() + self.body)
        await writer.drain()
        writer.close()

    def serve(self, key: ec.EllipticCurvePrivateKey, kid: str) -> None:
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
        self.status, self.body = 200, json.dumps({"keys": [{**jwk, "kid": kid}]}).encode()


@pytest.fixture
async def issuer() -> AsyncIterator[Issuer]:
    issuer = Issuer()
    server = await asyncio.start_server(issuer.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    issuer.url, issuer.server = f"http://127.0.0.1:{port}", server
    async with server:
        yield issuer


def token(issuer: Issuer, key: ec.EllipticCurvePrivateKey, kid: str) -> str:
    now = int(time.time())
    claims = {
        "sub": "cli_1",
        "iss": issuer.url + REALM_PATH,
        "aud": API_AUDIENCE,
        "iat": now,
        "exp": now + 300,
        "typ": "client",
        "org_id": "org_1",
        "environment": "staging",
        "scope": "points:trigger",
    }
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid})


async def refused(verifier: JwksVerifier, tokens: list[str]) -> list[str]:
    outcomes = await asyncio.gather(*(verifier.verify(t) for t in tokens), return_exceptions=True)
    assert all(isinstance(outcome, InvalidToken) for outcome in outcomes), outcomes
    return [str(outcome) for outcome in outcomes]


class TestJwksRefresh:
    async def test_forty_tokens_with_an_unknown_key_cost_a_slow_issuer_one_fetch(
        self, issuer: Issuer
    ) -> None:
        issuer.delay = 0.3
        key = ec.generate_private_key(ec.SECP256R1())
        verifier = JwksVerifier(issuer.url, refresh_interval=60)
        tokens = [token(issuer, key, f"kid-{n}") for n in range(40)]

        reasons = await refused(verifier, tokens)
        await refused(verifier, tokens[:5])  # the failure is remembered too

        assert issuer.requests == 1
        assert set(reasons) == {"token signed with an unknown key"}
        await verifier.aclose()

    async def test_a_key_published_since_verifies_once_the_interval_has_passed(
        self, issuer: Issuer
    ) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        verifier = JwksVerifier(issuer.url, refresh_interval=0.2)
        fresh = token(issuer, key, "kid-new")
        await refused(verifier, [fresh])

        issuer.serve(key, "kid-new")
        await asyncio.sleep(0.25)
        principal = await verifier.verify(fresh)

        assert principal.subject == "cli_1"
        assert issuer.requests == 2
        await verifier.aclose()

    @pytest.mark.parametrize(
        "body", [b"not json", b'{"keys": "none"}', b'{"keys": [{"kty": "EC", "kid": "x"}]}']
    )
    async def test_a_broken_key_set_refuses_the_token_and_raises_nothing_else(
        self, issuer: Issuer, body: bytes
    ) -> None:
        issuer.status, issuer.body = 200, body
        key = ec.generate_private_key(ec.SECP256R1())
        verifier = JwksVerifier(issuer.url + "/", refresh_interval=60)

        await refused(verifier, [token(issuer, key, "kid-1")])

        assert verifier.jwks_url.endswith(JWKS_PATH)
        await verifier.aclose()

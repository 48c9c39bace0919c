"""Signed requests, as a developer following the integration guide sends them.

The signing code is the guide's own Python snippet, taken from the page the
rules service serves, and it talks to a real gateway (tokens from the real
issuer, keys registered through the rules service and projected from
``clients.lifecycle.v1`` on a real broker, PostgreSQL underneath).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from infra.request_signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, public_pem
from tests.helpers import (
    TRIGGER_URL,
    Client,
    TriggerStack,
    bearer,
    client_token,
    eventually,
    fresh_trigger_stack,
)
from tests.unit.test_rules_integration_guide import code_block

REQUESTS_PATH = "/v1/points/requests"
PROJECTION_TIMEOUT = 30.0
WINDOW = 300  # the gateway's default signature window

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def new_key(kind: str) -> PrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def public_key_of(private_key: PrivateKey) -> str:
    return public_pem(private_key.public_key())


@dataclass
class Developer:
    """One API client's developer, signing with the guide's ``signed_headers``."""

    stack: TriggerStack
    client: Client
    token: str
    private_key: PrivateKey
    signed_headers: Callable[..., dict[str, str]]
    rule_id: str = ""

    def body(self, request_id: str, amount: int = 5, rule_id: str | None = None) -> bytes:
        trigger = {
            "userId": "member-7",
            "ruleId": rule_id or self.rule_id,
            "amount": amount,
            "requestId": request_id,
        }
        return json.dumps(trigger).encode()

    def headers(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        key: PrivateKey | None = None,
        at: int | None = None,
    ) -> dict[str, str]:
        """The token and the guide's signature headers for this exact request."""
        signature = self.signed_headers(
            key or self.private_key, method, f"{TRIGGER_URL}{path}", body, now=at
        )
        return {**bearer(self.token), "Content-Type": "application/json", **signature}

    def signed_trigger(self, request_id: str, amount: int = 5) -> tuple[bytes, dict[str, str]]:
        """A trigger's body and the headers that sign it, to send as they are or altered."""
        body = self.body(request_id, amount)
        return body, self.headers("POST", REQUESTS_PATH, body)

    async def trigger(
        self,
        request_id: str | None = None,
        *,
        signed: bool = True,
        key: PrivateKey | None = None,
        at: int | None = None,
        rule_id: str | None = None,
    ) -> httpx.Response:
        body = self.body(request_id or f"req-{uuid.uuid4().hex}", rule_id=rule_id)
        if signed:
            headers = self.headers("POST", REQUESTS_PATH, body, key=key, at=at)
        else:
            headers = {**bearer(self.token), "Content-Type": "application/json"}
        return await self.post(body, headers)

    async def post(self, body: bytes, headers: dict[str, str]) -> httpx.Response:
        """Send these exact body bytes and headers as a trigger."""
        return await self.stack.gateway.post(REQUESTS_PATH, content=body, headers=headers)

    async def status(self, request_id: str, *, signed: bool = True) -> httpx.Response:
        path = f"{REQUESTS_PATH}/{request_id}"
        headers = self.headers("GET", path) if signed else bearer(self.token)
        return await self.stack.gateway.get(path, headers=headers)


@dataclass
class SigningStack:
    stack: TriggerStack
    developers: dict[str, Developer]
    signed_headers: Callable[..., dict[str, str]]

    async def developer(self, name: str, kind: str) -> Developer:
        """A client registered with a fresh key, authorised on its own active rule."""
        private_key = new_key(kind)
        stack = self.stack
        client = await stack.seeder.client(stack.org_id, public_key=public_key_of(private_key))
        token = await client_token(stack.rules_http, client)
        developer = Developer(stack, client, token, private_key, self.signed_headers)
        created = await stack.rules_http.post(
            "/v1/rules",
            headers=stack.console,
            json={
                "name": f"Signed rule for {name}",
                "type": "earn",
                "environment": "staging",
                "apiTrigger": True,
                "authorizedClientIds": [client.client_id],
            },
        )
        assert created.status_code == 201, created.text
        developer.rule_id = created.json()["id"]
        activated = await stack.rules_http.post(
            f"/v1/rules/{developer.rule_id}/activate", headers=stack.console
        )
        assert activated.status_code == 200, activated.text
        self.developers[name] = developer
        return developer


def guide_signer(page: str) -> Callable[..., dict[str, str]]:
    namespace: dict[str, Any] = {}
    exec(code_block(page, "sign-request-python"), namespace)  # noqa: S102 - our own page
    signer: Callable[..., dict[str, str]] = namespace["signed_headers"]
    return signer


async def until_accepted(send: Callable[[], Any], what: str) -> httpx.Response:
    """Send until the gateway answers 202 (a key change or a rule is on its way to it)."""

    async def accepted() -> httpx.Response | None:
        response: httpx.Response = await send()
        return response if response.status_code == 202 else None

    return await eventually(accepted, timeout=PROJECTION_TIMEOUT, what=what)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def signing(postgres_server_dsn: str) -> AsyncIterator[SigningStack]:
    async with fresh_trigger_stack(postgres_server_dsn) as stack:
        page = await stack.rules_http.get(
            "/docs/integration-guide", params={"environment": "staging"}
        )
        assert page.status_code == 200, page.text
        signing = SigningStack(stack, {}, guide_signer(page.text))
        for name, kind in (("rsa", "rsa"), ("ec", "ec")):
            developer = await signing.developer(name, kind)
            await until_accepted(developer.trigger, f"the {name} client's rule and key")
        yield signing


def assert_refused(response: httpx.Response, code: str, status: int = 401) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == code


KINDS = ["rsa", "ec"]


class TestSignedRequests:
    @pytest.mark.parametrize("kind", KINDS)
    async def test_a_trigger_signed_with_the_guides_code_is_accepted(
        self, signing: SigningStack, kind: str
    ) -> None:
        developer = signing.developers[kind]

        response = await developer.trigger("order-1")

        assert response.status_code == 202, response.text
        assert response.json()["status"] == "pending"

    @pytest.mark.parametrize("kind", KINDS)
    async def test_a_signed_status_request_is_answered(
        self, signing: SigningStack, kind: str
    ) -> None:
        developer = signing.developers[kind]
        accepted = (await developer.trigger("order-2")).json()

        response = await developer.status("order-2")

        assert response.status_code == 200, response.text
        assert response.json()["transactionId"] == accepted["transactionId"]

    @pytest.mark.parametrize("kind", KINDS)
    async def test_an_unsigned_trigger_is_refused_as_signature_required(
        self, signing: SigningStack, kind: str
    ) -> None:
        response = await signing.developers[kind].trigger(signed=False)

        assert_refused(response, "SIGNATURE_REQUIRED")

    async def test_an_unsigned_status_request_is_refused_as_signature_required(
        self, signing: SigningStack
    ) -> None:
        developer = signing.developers["ec"]
        await developer.trigger("order-3")

        response = await developer.status("order-3", signed=False)

        assert_refused(response, "SIGNATURE_REQUIRED")

    async def test_a_trigger_with_only_the_timestamp_is_refused_as_signature_required(
        self, signing: SigningStack
    ) -> None:
        developer = signing.developers["rsa"]
        body, headers = developer.signed_trigger("order-4")
        del headers[SIGNATURE_HEADER]

        response = await developer.post(body, headers)

        assert_refused(response, "SIGNATURE_REQUIRED")

    @pytest.mark.parametrize("kind", KINDS)
    @pytest.mark.parametrize("offset", [-(WINDOW + 5), WINDOW + 5])
    async def test_a_timestamp_outside_the_window_either_way_is_refused_as_expired(
        self, signing: SigningStack, kind: str, offset: int
    ) -> None:
        response = await signing.developers[kind].trigger(at=int(time.time()) + offset)

        assert_refused(response, "SIGNATURE_EXPIRED")
        assert "at most 300 s" in response.json()["detail"]

    async def test_a_timestamp_inside_the_window_is_accepted(self, signing: SigningStack) -> None:
        response = await signing.developers["ec"].trigger(at=int(time.time()) - (WINDOW - 20))

        assert response.status_code == 202, response.text

    @pytest.mark.parametrize("kind", KINDS)
    async def test_a_tampered_body_is_refused_as_invalid_and_records_nothing(
        self, signing: SigningStack, kind: str
    ) -> None:
        developer = signing.developers[kind]
        _, headers = developer.signed_trigger("order-5", amount=5)
        tampered = developer.body("order-5", amount=500)

        response = await developer.post(tampered, headers)

        assert_refused(response, "SIGNATURE_INVALID")
        assert_refused(await developer.status("order-5"), "REQUEST_NOT_FOUND", status=404)

    async def test_a_signature_made_for_another_path_is_refused_as_invalid(
        self, signing: SigningStack
    ) -> None:
        developer = signing.developers["rsa"]
        await developer.trigger("order-6")
        headers = developer.headers("GET", f"{REQUESTS_PATH}/order-6")

        response = await signing.stack.gateway.get(f"{REQUESTS_PATH}/order-1", headers=headers)

        assert_refused(response, "SIGNATURE_INVALID")

    async def test_the_query_string_is_part_of_what_is_signed(self, signing: SigningStack) -> None:
        developer = signing.developers["ec"]
        await developer.trigger("order-7")
        path = f"{REQUESTS_PATH}/order-7"

        signed_with_query = await signing.stack.gateway.get(
            f"{path}?view=full", headers=developer.headers("GET", f"{path}?view=full")
        )
        query_added = await signing.stack.gateway.get(
            f"{path}?view=full", headers=developer.headers("GET", path)
        )

        assert signed_with_query.status_code == 200, signed_with_query.text
        assert_refused(query_added, "SIGNATURE_INVALID")

    @pytest.mark.parametrize("kind", KINDS)
    async def test_a_signature_by_another_key_is_refused_as_invalid(
        self, signing: SigningStack, kind: str
    ) -> None:
        response = await signing.developers[kind].trigger(key=new_key(kind))

        assert_refused(response, "SIGNATURE_INVALID")

    @pytest.mark.parametrize(
        ("header", "value"),
        [(SIGNATURE_HEADER, "not base64!"), (TIMESTAMP_HEADER, "soon"), (TIMESTAMP_HEADER, "-5")],
    )
    async def test_a_malformed_header_is_refused_as_invalid_naming_it(
        self, signing: SigningStack, header: str, value: str
    ) -> None:
        developer = signing.developers["rsa"]
        body, headers = developer.signed_trigger("order-8")
        headers[header] = value

        response = await developer.post(body, headers)

        assert_refused(response, "SIGNATURE_INVALID")
        assert header in response.json()["detail"]

    async def test_a_signed_request_sent_again_gets_the_original_answer(
        self, signing: SigningStack
    ) -> None:
        developer = signing.developers["ec"]
        body, headers = developer.signed_trigger("order-9")

        first = await developer.post(body, headers)
        again = await developer.post(body, headers)

        assert first.status_code == again.status_code == 202, again.text
        assert first.json()["transactionId"] == again.json()["transactionId"]
        recorded = await signing.stack.runtime.pool.fetchval(
            "SELECT count(*) FROM requests WHERE client_id = $1 AND request_id = 'order-9'",
            developer.client.client_id,
        )
        assert recorded == 1

    async def test_the_signature_is_checked_before_the_rule(self, signing: SigningStack) -> None:
        developer = signing.developers["rsa"]

        unsigned = await developer.trigger(signed=False, rule_id="rul_missing")
        signed = await developer.trigger(rule_id="rul_missing")

        assert_refused(unsigned, "SIGNATURE_REQUIRED")
        assert_refused(signed, "RULE_NOT_FOUND", status=400)

    async def test_a_client_without_a_key_needs_no_signature(self, signing: SigningStack) -> None:
        response = await signing.stack.trigger(f"plain-{uuid.uuid4().hex}")

        assert response.status_code == 202, response.text


class TestKeyChanges:
    async def test_removing_the_key_makes_signing_optional_again(
        self, signing: SigningStack
    ) -> None:
        developer = await signing.developer("removed", "ec")
        await until_accepted(developer.trigger, "the client's rule and key")
        assert_refused(await developer.trigger(signed=False), "SIGNATURE_REQUIRED")

        await signing.stack.seeder.set_public_key(developer.client.client_id, None)

        unsigned = await until_accepted(
            lambda: developer.trigger(signed=False), "the key's removal"
        )
        assert unsigned.json()["status"] == "pending"

    @pytest.mark.parametrize(("old", "new"), [("rsa", "ec"), ("ec", "rsa")])
    async def test_a_replaced_key_refuses_signatures_by_the_old_key(
        self, signing: SigningStack, old: str, new: str
    ) -> None:
        developer = await signing.developer(f"replaced-{old}", old)
        await until_accepted(developer.trigger, "the client's rule and key")
        old_key, new_key_ = developer.private_key, new_key(new)

        await signing.stack.seeder.set_public_key(
            developer.client.client_id, public_key_of(new_key_)
        )

        await until_accepted(lambda: developer.trigger(key=new_key_), "the new key")
        assert_refused(await developer.trigger(key=old_key), "SIGNATURE_INVALID")

    async def test_a_revoked_client_is_refused_however_well_it_signs(
        self, signing: SigningStack
    ) -> None:
        developer = await signing.developer("revoked", "rsa")
        await until_accepted(developer.trigger, "the client's rule and key")

        await signing.stack.seeder.revoke(developer.client.client_id)

        async def refused() -> httpx.Response | None:
            response = await developer.trigger()
            return response if response.status_code == 401 else None

        response = await eventually(refused, timeout=PROJECTION_TIMEOUT, what="the revocation")
        assert_refused(response, "UNAUTHORIZED")

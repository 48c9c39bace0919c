"""Points that expire and members a business blocks, through the whole platform as
`make run` starts it: the rules API a business user calls, the gateway and ledger a
partner's app calls, and the signed callbacks the partner receives."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from infra.dev.launcher import RunningPlatform
from infra.signing import DEVELOPMENT_SIGNING_KEY, SIGNATURE_HEADER, verify
from tests.e2e.conftest import CallbackReceiver, client_token_headers
from tests.helpers import eventually, free_port, running_platform

pytestmark = pytest.mark.e2e

#: How often the ledger looks for expired points here; a second, so a test waits little.
EXPIRY_INTERVAL_SECONDS = 1


@pytest.fixture(scope="module")
def platform() -> Iterator[RunningPlatform]:
    with running_platform(
        "points-expiry-", LEDGER_EXPIRY_INTERVAL_SECONDS=str(EXPIRY_INTERVAL_SECONDS)
    ) as running:
        yield running


@dataclass
class Business:
    """An organisation with a signed-in owner and one staging API client."""

    console: dict[str, str]  # the owner's Authorization header
    client: dict[str, str]  # as `points client create --json` printed it
    developer: dict[str, str]  # the client's Authorization header


async def new_business(platform: RunningPlatform, http: httpx.AsyncClient, name: str) -> Business:
    email, password = f"owner@{name}.example", f"{name}-password-42"
    org = platform.points("org", "create", name)
    platform.points("user", "create", "--org", org["id"], "--email", email, "--password", password)
    client = platform.points(
        "client", "create", "--org", org["id"], "--environment", "staging", "--name", "App"
    )
    login = await http.post(
        f"{platform.urls['rules']}/v1/auth/login", json={"email": email, "password": password}
    )
    assert login.status_code == 200, login.text
    console = {"Authorization": f"Bearer {login.json()['accessToken']}"}
    developer = await client_token_headers(platform.urls["rules"], http, client)
    return Business(console, client, developer)


async def active_earn_rule(
    platform: RunningPlatform, http: httpx.AsyncClient, business: Business, **extra: Any
) -> str:
    rules_url = platform.urls["rules"]
    created = await http.post(
        f"{rules_url}/v1/rules",
        headers=business.console,
        json={
            "name": "Points that may expire",
            "type": "earn",
            "environment": "staging",
            "apiTrigger": True,
            "authorizedClientIds": [business.client["clientId"]],
            **extra,
        },
    )
    assert created.status_code == 201, created.text
    rule_id: str = created.json()["id"]
    activated = await http.post(
        f"{rules_url}/v1/rules/{rule_id}/activate", headers=business.console
    )
    assert activated.json()["status"] == "active", activated.text
    return rule_id


async def trigger(
    http: httpx.AsyncClient, gateway: str, business: Business, user_id: str, rule_id: str,
    request_id: str, amount: int = 10,
) -> httpx.Response:  # fmt: skip
    body = {"userId": user_id, "ruleId": rule_id, "amount": amount, "requestId": request_id}
    return await http.post(f"{gateway}/v1/points/requests", headers=business.developer, json=body)


async def settled(
    http: httpx.AsyncClient, gateway: str, business: Business, request_id: str
) -> dict[str, Any]:
    async def outcome() -> dict[str, Any] | None:
        status = await http.get(
            f"{gateway}/v1/points/requests/{request_id}", headers=business.developer
        )
        body: dict[str, Any] = status.json()
        return body if body["status"] != "pending" else None

    return await eventually(outcome, what=f"request {request_id} settling")


class TestPointsThatExpire:
    async def test_the_balance_shows_them_expiring_then_drops_and_the_partner_is_told(
        self, platform: RunningPlatform, receiver: CallbackReceiver
    ) -> None:
        ledger, gateway = platform.urls["ledger"], platform.urls["trigger"]
        async with httpx.AsyncClient(timeout=10) as http:
            business = await new_business(platform, http, "expiring-bakery")
            client_id = business.client["clientId"]
            # The partner opts in to hearing of expiries.
            registered = await http.put(
                f"{platform.urls['rules']}/v1/clients/{client_id}/expiry-callback",
                headers=business.console,
                json={"url": receiver.url},
            )
            assert registered.status_code == 200, registered.text
            expires_at = datetime.now(UTC) + timedelta(seconds=8)
            expiring_rule = await active_earn_rule(
                platform, http, business, pointsExpireAt=expires_at.isoformat()
            )
            lasting_rule = await active_earn_rule(platform, http, business)

            for request_id, rule_id, amount in (
                ("welcome-1", expiring_rule, 300),
                ("purchase-1", lasting_rule, 200),
            ):
                accepted = await trigger(
                    http, gateway, business, "member-9", rule_id, request_id, amount
                )
                assert accepted.status_code == 202, accepted.text
                assert (await settled(http, gateway, business, request_id))["status"] == (
                    "succeeded"
                )

            async def balance() -> dict[str, Any]:
                answer = await http.get(
                    f"{ledger}/v1/members/member-9/balance",
                    params={"environment": "staging"},
                    headers=business.developer,
                )
                assert answer.status_code == 200, answer.text
                body: dict[str, Any] = answer.json()
                return body

            before = await balance()
            assert before["balance"] == 500
            [due] = before["expiring"]
            assert due["amount"] == 300
            assert datetime.fromisoformat(due["expiresAt"]) == expires_at

            async def dropped() -> dict[str, Any] | None:
                now = await balance()
                return now if now["balance"] != 500 else None

            after = await eventually(dropped, what="the expired points leaving the balance")
            assert after["balance"] == 200
            assert after["expiring"] == []
            assert datetime.now(UTC) >= expires_at  # not a moment before they were due

            history = await http.get(
                f"{ledger}/v1/members/member-9/transactions",
                params={"environment": "staging"},
                headers=business.developer,
            )
            newest = history.json()["items"][0]
            assert (newest["type"], newest["amount"], newest["ruleId"]) == (
                "expiry",
                300,
                expiring_rule,
            )

        async def expiry_callback() -> tuple[dict[str, str], dict[str, Any]] | None:
            for headers, body in receiver.received:
                document = json.loads(body)
                if document.get("status") == "expired":
                    assert verify(
                        business.client["callbackSigningSecret"],
                        body,
                        headers[SIGNATURE_HEADER.lower()],
                    )
                    return headers, document
            return None

        _, callback = await eventually(expiry_callback, what="the signed points.expired callback")
        assert callback["userId"] == "member-9"
        assert callback["requestId"] == "welcome-1"
        assert callback["expiredAmount"] == 300
        assert callback["balance"] == 200
        await asyncio.sleep(2 * EXPIRY_INTERVAL_SECONDS)
        expired = [body for _, body in receiver.received if b'"expired"' in body]
        assert len(expired) == 1, "a lot expires, and is called back, once"


@asynccontextmanager
async def second_gateway(platform: RunningPlatform) -> AsyncIterator[str]:
    """Another replica of the trigger gateway on the platform's database and broker, on a
    port of its own, as an operator scales the gateway; its URL."""
    port = free_port()
    env = {
        **platform.env,
        "POINTS_MODE": platform.stack_setting("POINTS_MODE"),
        "DATABASE_URL": platform.stack_setting("DATABASE_URL"),
        "KAFKA_BOOTSTRAP_SERVERS": platform.stack_setting("KAFKA_BOOTSTRAP_SERVERS"),
        "CALLBACK_SIGNING_KEY": DEVELOPMENT_SIGNING_KEY,
        "TOKEN_ISSUER_URL": platform.urls["rules"],
        "TRIGGER_PORT": str(port),
    }
    log = (platform.state / "second-gateway.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.trigger", env=env, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:

        async def ready() -> bool:
            assert process.returncode is None, (platform.state / "second-gateway.log").read_text()
            try:
                async with httpx.AsyncClient(timeout=2) as http:
                    return (await http.get(f"{url}/readyz")).status_code == 200
            except httpx.HTTPError:
                return False

        await eventually(ready, what="the second gateway replica being ready", timeout=90)
        yield url
    finally:
        process.terminate()
        try:
            async with asyncio.timeout(30):
                await process.wait()
        except TimeoutError:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
        log.close()


class TestABlockedMember:
    async def test_is_refused_at_once_on_every_gateway_replica_until_unblocked(
        self, platform: RunningPlatform
    ) -> None:
        rules_url = platform.urls["rules"]
        async with second_gateway(platform) as replica, httpx.AsyncClient(timeout=10) as http:
            gateways = (platform.urls["trigger"], replica)
            business = await new_business(platform, http, "blocking-books")
            rule_id = await active_earn_rule(platform, http, business)

            async def trigger_everywhere(round_: str) -> list[httpx.Response]:
                return [
                    await trigger(http, gateway, business, "member-13", rule_id, f"{round_}-{n}")
                    for n, gateway in enumerate(gateways)
                ]

            assert [answer.status_code for answer in await trigger_everywhere("before")] == [
                202,
                202,
            ]

            blocked = await http.post(
                f"{rules_url}/v1/members/member-13/block",
                headers=business.console,
                json={"environment": "staging", "reason": "Card reported stolen"},
            )
            assert blocked.status_code == 200, blocked.text
            for answer in await trigger_everywhere("blocked"):
                assert answer.status_code == 400, answer.text
                assert answer.json()["code"] == "MEMBER_BLOCKED"

            # Another member of the same business is not affected.
            other = await trigger(http, gateways[1], business, "member-14", rule_id, "other")
            assert other.status_code == 202, other.text

            unblocked = await http.post(
                f"{rules_url}/v1/members/member-13/unblock",
                headers=business.console,
                json={"environment": "staging"},
            )
            assert unblocked.status_code == 200, unblocked.text
            assert [answer.status_code for answer in await trigger_everywhere("after")] == [
                202,
                202,
            ]
            outcome = await settled(http, gateways[0], business, "after-0")
            assert outcome["status"] == "succeeded"

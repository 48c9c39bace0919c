"""What a caller is told is what the platform does next, against the running platform.

A partner's integration test activates a rule and triggers it at once; an operator
revokes a leaked client and the next trigger must be refused; a developer's
callback handler reads the request's status and the member's balance the moment
the callback arrives. None of them may see the platform from before the change
they were just told about: no retries here, every answer is taken as it comes.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest

from infra.dev.launcher import RunningPlatform
from tests.e2e.conftest import CallbackReceiver, client_token_headers, read_body, serve_receiver
from tests.e2e.test_platform import Business, active_rule, business_with_an_active_rule
from tests.e2e.test_poison_messages import developer_headers
from tests.helpers import eventually, points, running_platform

pytestmark = pytest.mark.e2e

ROUNDS = 100


@pytest.fixture(scope="module")
def platform() -> Iterator[RunningPlatform]:
    with running_platform("points-ryw-") as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=15) as client:
        yield client


async def trigger(
    platform: RunningPlatform,
    http: httpx.AsyncClient,
    headers: dict[str, str],
    rule_id: str,
    *,
    user_id: str = "member-ryw",
    callback_url: str | None = None,
) -> httpx.Response:
    body: dict[str, Any] = {
        "userId": user_id,
        "ruleId": rule_id,
        "amount": 10,
        "requestId": f"ryw-{uuid.uuid4().hex}",
    }
    if callback_url is not None:
        body["callbackUrl"] = callback_url
    return await http.post(
        f"{platform.urls['trigger']}/v1/points/requests", headers=headers, json=body
    )


class TestAChangeIsInForceWhenItIsAnswered:
    async def test_a_rule_triggered_right_after_its_activation_is_accepted_every_time(
        self, platform: RunningPlatform, http: httpx.AsyncClient
    ) -> None:
        business = await business_with_an_active_rule(
            platform, http, "Eager Integrator", "First rule"
        )
        developer = await developer_headers(platform, http, business)
        refused = []
        for round_number in range(ROUNDS):
            rule_id = await active_rule(
                platform, http, business.console, business.client["clientId"], f"R{round_number}"
            )
            response = await trigger(platform, http, developer, rule_id)
            if response.status_code != 202:
                refused.append((round_number, response.status_code, response.text))
        assert refused == []

    async def test_a_rule_paused_just_now_is_refused_every_time(
        self, platform: RunningPlatform, http: httpx.AsyncClient
    ) -> None:
        business = await business_with_an_active_rule(platform, http, "Quick Pauser", "Paused")
        developer = await developer_headers(platform, http, business)
        rules_url = platform.urls["rules"]
        accepted = []
        for round_number in range(ROUNDS // 4):
            rule_id = await active_rule(
                platform, http, business.console, business.client["clientId"], f"P{round_number}"
            )
            paused = await http.post(
                f"{rules_url}/v1/rules/{rule_id}/pause", headers=business.console
            )
            assert paused.status_code == 200, paused.text
            response = await trigger(platform, http, developer, rule_id)
            if response.status_code != 400 or response.json()["code"] != "RULE_INACTIVE":
                accepted.append((round_number, response.status_code, response.text))
        assert accepted == []

    async def test_a_client_revoked_just_now_is_refused_every_time(
        self,
        platform: RunningPlatform,
        http: httpx.AsyncClient,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        # The operator's CLI, run in this process against the platform's servers.
        monkeypatch.setenv("POINTS_VAR_DIR", str(platform.state))
        for name in ("POINTS_MODE", "DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "SMTP_URL"):
            monkeypatch.setenv(name, platform.stack_setting(name))
        business = await business_with_an_active_rule(platform, http, "Leaky Apps", "Guarded")
        clients = []
        for number in range(ROUNDS):
            assert await points(
                "client", "create", "--org", business.org_id, "--environment", "staging",
                "--name", f"App {number}", "--json",
            ) == 0  # fmt: skip
            clients.append(json.loads(capsys.readouterr().out))
        rule_url = f"{platform.urls['rules']}/v1/rules/{business.rule_id}"
        rule = (await http.get(rule_url, headers=business.console)).json()
        edited = await http.patch(
            rule_url,
            headers=business.console,
            json={
                "version": rule["version"],
                "authorizedClientIds": [client["clientId"] for client in clients],
            },
        )
        assert edited.status_code == 200, edited.text

        accepted = []
        for number, client in enumerate(clients):
            developer = await client_token_headers(platform.urls["rules"], http, client)
            assert await points("client", "revoke", client["clientId"]) == 0
            capsys.readouterr()
            response = await trigger(platform, http, developer, business.rule_id)
            if response.status_code < 400 or response.status_code >= 500:
                accepted.append((number, response.status_code, response.text))
        assert accepted == []


@dataclass
class ReadingReceiver:
    """A developer's callback handler that, before answering, reads the request's status
    from the gateway and the member's balance from the ledger."""

    platform: RunningPlatform
    headers: dict[str, str]
    http: httpx.AsyncClient
    url: str = ""
    seen: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = field(default_factory=list)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        callback = json.loads(await read_body(receive))
        status = await self.http.get(
            f"{self.platform.urls['trigger']}/v1/points/requests/{callback['requestId']}",
            headers=self.headers,
        )
        balance = await self.http.get(
            f"{self.platform.urls['ledger']}/v1/members/{callback['userId']}/balance",
            params={"environment": "staging"},
            headers=self.headers,
        )
        self.seen.append((callback, status.json(), balance.json()))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


class TestACallbackAndWhatItsHandlerReads:
    async def test_agree_on_the_outcome_and_the_balance(
        self, platform: RunningPlatform, http: httpx.AsyncClient
    ) -> None:
        business: Business = await business_with_an_active_rule(
            platform, http, "Careful Reader", "Read back"
        )
        developer = await developer_headers(platform, http, business)
        receiver = ReadingReceiver(platform, developer, http)
        async with serve_receiver(receiver):
            # A member per request, so the balance each callback reports is the whole of it.
            members = [f"reader-{number}" for number in range(ROUNDS)]
            for batch in range(0, ROUNDS, 10):
                responses = await asyncio.gather(
                    *(
                        trigger(
                            platform,
                            http,
                            developer,
                            business.rule_id,
                            user_id=member,
                            callback_url=receiver.url,
                        )
                        for member in members[batch : batch + 10]
                    )
                )
                assert [response.status_code for response in responses] == [202] * 10

            async def all_called_back() -> bool:
                return len(receiver.seen) >= ROUNDS

            await eventually(all_called_back, what=f"{ROUNDS} callbacks", timeout=60)

        disagreements = [
            (callback, status, balance)
            for callback, status, balance in receiver.seen
            if status.get("status") != callback["status"]
            or balance.get("balance") != callback["balance"]
        ]
        agreed = len(receiver.seen) - len(disagreements)
        print(f"callback-to-status agreement: {agreed}/{len(receiver.seen)}")
        assert disagreements == []
        assert {callback["status"] for callback, _, _ in receiver.seen} == {"succeeded"}

    async def test_the_status_waits_for_a_result_the_gateway_is_still_settling(
        self, platform: RunningPlatform, http: httpx.AsyncClient, receiver: CallbackReceiver
    ) -> None:
        business = await business_with_an_active_rule(platform, http, "Slow Settler", "Held")
        developer = await developer_headers(platform, http, business)
        gateway_db = await asyncpg.connect(
            platform.stack_setting("DATABASE_URL"), server_settings={"search_path": "trigger"}
        )
        try:
            # Hold the request's row, so the gateway cannot settle it while the ledger
            # applies it and the notifier calls back. The lock is taken right after the
            # 202; on the rare round where the gateway settled first, try again.
            for _ in range(20):
                response = await trigger(
                    platform, http, developer, business.rule_id, callback_url=receiver.url
                )
                assert response.status_code == 202, response.text
                request_id = response.json()["requestId"]
                held = gateway_db.transaction()
                await held.start()
                status = await gateway_db.fetchval(
                    "SELECT status FROM requests WHERE request_id = $1 FOR UPDATE", request_id
                )
                if status == "pending":
                    break
                await held.rollback()
            else:
                pytest.fail("the gateway settled every request before the test could hold one")

            async def called_back() -> bool:
                return any(request_id.encode() in body for _, body in receiver.received)

            await eventually(called_back, what="the callback")
            reading = asyncio.create_task(
                http.get(
                    f"{platform.urls['trigger']}/v1/points/requests/{request_id}",
                    headers=developer,
                )
            )
            await asyncio.sleep(0.3)  # the gateway's results consumer waits on the row
            await held.rollback()
            answer = (await reading).json()
        finally:
            await gateway_db.close()
        assert answer["status"] == "succeeded", answer

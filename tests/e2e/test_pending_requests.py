"""No request stays pending without bound, against the running platform.

The platform runs with a reconciliation of a few seconds instead of minutes.
A developer reuses a requestId the gateway has forgotten (past its retention):
the request fails with ``REQUEST_ID_REUSED`` and moves nothing. A request whose
result the gateway lost, and one whose event was lost before the ledger saw
it, both settle through the gateway publishing them again; nothing is applied
or called back twice.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio

from infra.dev.launcher import RunningPlatform
from tests.e2e.conftest import CallbackReceiver
from tests.e2e.test_platform import Business, business_with_an_active_rule
from tests.e2e.test_poison_messages import developer_headers
from tests.helpers import eventually, running_platform

pytestmark = pytest.mark.e2e

CAP = 10_000
#: What the gateway answers should the rules API have stopped waiting for it to have the
#: rule just activated (`RULES_PROPAGATION_TIMEOUT_SECONDS` on a very loaded machine).
NOT_THERE_YET = {"RULE_NOT_FOUND", "RULE_INACTIVE"}
MEMBER = "member-pending"


@pytest.fixture(scope="module")
def platform() -> Iterator[RunningPlatform]:
    with running_platform(
        "points-pending-",
        TRIGGER_PENDING_REDRIVE_AFTER_SECONDS="2",
        TRIGGER_RECONCILE_INTERVAL_SECONDS="0.5",
    ) as running:
        yield running


@dataclass
class Developer:
    """A partner's integration: its token, its callback endpoint, and the gateway's database
    (to play the part of time passing, or of a broker losing messages)."""

    platform: RunningPlatform
    http: httpx.AsyncClient
    headers: dict[str, str]
    business: Business
    receiver: CallbackReceiver
    gateway_db: asyncpg.Connection

    async def trigger(self, request_id: str, amount: int) -> dict[str, Any]:
        body = {
            "userId": MEMBER,
            "ruleId": self.business.rule_id,
            "amount": amount,
            "requestId": request_id,
            "callbackUrl": self.receiver.url,
        }

        async def accepted() -> dict[str, Any] | None:
            response = await self.http.post(
                f"{self.platform.urls['trigger']}/v1/points/requests",
                headers=self.headers,
                json=body,
            )
            if response.status_code == 400 and response.json()["code"] in NOT_THERE_YET:
                return None
            assert response.status_code == 202, response.text
            answer: dict[str, Any] = response.json()
            return answer

        return await eventually(accepted, timeout=30, what=f"the gateway to accept {request_id}")

    async def settled(self, request_id: str) -> dict[str, Any]:
        async def status() -> dict[str, Any] | None:
            response = await self.http.get(
                f"{self.platform.urls['trigger']}/v1/points/requests/{request_id}",
                headers=self.headers,
            )
            body: dict[str, Any] = response.json()
            return body if body["status"] != "pending" else None

        return await eventually(status, timeout=30, what=f"{request_id} to settle")

    async def balance(self) -> int:
        response = await self.http.get(
            f"{self.platform.urls['ledger']}/v1/members/{MEMBER}/balance",
            params={"environment": "staging"},
            headers=self.headers,
        )
        assert response.status_code == 200, response.text
        return int(response.json()["balance"])

    def callbacks(self, transaction_id: str) -> list[dict[str, Any]]:
        bodies = [json.loads(body) for _, body in self.receiver.received]
        return [body for body in bodies if body["transactionId"] == transaction_id]

    async def called_back(self, transaction_id: str) -> dict[str, Any]:
        async def arrived() -> dict[str, Any] | None:
            found = self.callbacks(transaction_id)
            return found[0] if found else None

        return await eventually(arrived, timeout=30, what=f"the callback of {transaction_id}")


@pytest_asyncio.fixture
async def developer(
    platform: RunningPlatform, receiver: CallbackReceiver
) -> AsyncIterator[Developer]:
    dsn = platform.stack_setting("DATABASE_URL")
    async with httpx.AsyncClient(timeout=10) as http:
        business = await business_with_an_active_rule(
            platform, http, f"Pending {uuid.uuid4().hex[:8]}", "Patience points"
        )
        headers = await developer_headers(platform, http, business)
        connection = await asyncpg.connect(dsn, server_settings={"search_path": "trigger"})
        try:
            yield Developer(platform, http, headers, business, receiver, connection)
        finally:
            await connection.close()


class TestRequestIdReusedAfterRetention:
    async def test_fails_with_request_id_reused_and_moves_nothing(
        self, developer: Developer
    ) -> None:
        first = await developer.trigger("order-1", 100)
        assert (await developer.settled("order-1"))["status"] == "succeeded"
        # The retention passes: the gateway purges what it remembered of order-1.
        await developer.gateway_db.execute("DELETE FROM requests WHERE request_id = 'order-1'")

        again = await developer.trigger("order-1", 100)

        assert again["transactionId"] != first["transactionId"]
        outcome = await developer.settled("order-1")
        assert (outcome["status"], outcome["reason"]) == ("failed", "REQUEST_ID_REUSED")
        callback = await developer.called_back(again["transactionId"])
        assert (callback["status"], callback["reason"]) == ("failed", "REQUEST_ID_REUSED")
        assert await developer.balance() == 100
        # Its reservation is free again: the rest of the cap can still be earned.
        await developer.trigger("order-rest", CAP - 100)
        assert (await developer.settled("order-rest"))["status"] == "succeeded"


class TestLostMessages:
    async def test_a_request_whose_result_was_lost_settles_once_and_is_called_back_once(
        self, developer: Developer
    ) -> None:
        accepted = await developer.trigger("order-2", 30)
        assert (await developer.settled("order-2"))["status"] == "succeeded"
        await developer.called_back(accepted["transactionId"])
        balance = await developer.balance()
        # The gateway never heard of the result.
        await developer.gateway_db.execute(
            "UPDATE requests SET status = 'pending', reason = NULL, balance = NULL"
            " WHERE request_id = 'order-2'"
        )

        outcome = await developer.settled("order-2")

        assert outcome["status"] == "succeeded"
        assert await developer.balance() == balance
        # A later request of the member is called back after the result published
        # again (one partition, in order), which the notifier must not send again.
        later = await developer.trigger("order-3", 1)
        await developer.called_back(later["transactionId"])
        assert len(developer.callbacks(accepted["transactionId"])) == 1

    async def test_a_request_whose_event_was_lost_is_applied_once(
        self, developer: Developer
    ) -> None:
        balance = await developer.balance()
        accepted = await developer.trigger("order-4", 5)
        await developer.settled("order-4")
        # A request recorded as order-4 was, whose event never reached the ledger.
        await developer.gateway_db.execute(
            """
            INSERT INTO requests (client_id, request_id, transaction_id, body_hash, org_id,
                environment, rule_id, rule_version, user_id, type, amount, cap_reserved,
                member_cap_reserved, callback_url, correlation_id)
            SELECT client_id, 'order-lost', gen_random_uuid(), body_hash, org_id, environment,
                rule_id, rule_version, user_id, type, amount, amount, amount, callback_url,
                'lost-event'
            FROM requests WHERE request_id = 'order-4'
            """
        )
        lost = await developer.gateway_db.fetchval(
            "SELECT transaction_id::text FROM requests WHERE request_id = 'order-lost'"
        )

        outcome = await developer.settled("order-lost")

        assert outcome["status"] == "succeeded"
        assert (await developer.called_back(lost))["status"] == "succeeded"
        assert await developer.balance() == balance + 5 + 5
        assert accepted["transactionId"] != lost

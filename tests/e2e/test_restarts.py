"""The platform keeps its state across a stop and a start, as `make run` is used.

A business sets up a rule and a client, a developer triggers it, one partner's
callbacks fail until their delivery is parked; then the platform is stopped
(Ctrl-C, or ``kill -9`` of everything with a request still in flight) and
started again on the same state directory. Everything is still there, the
request in flight is applied exactly once, and new triggers add to the old
balances.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest

from infra.dev.launcher import RunningPlatform, start_platform
from tests.e2e.conftest import CallbackReceiver
from tests.e2e.test_platform import Business, business_with_an_active_rule
from tests.e2e.test_poison_messages import developer_headers
from tests.helpers import eventually, free_port

pytestmark = pytest.mark.e2e

NAME = "Restart Bakery"
OWNER = ("owner@restart-bakery.example", "restart-bakery-password-42")  # as business_with_… makes
MEMBER = "member-restart"
#: What the gateway answers until a rule or client just created reaches it.
NOT_THERE_YET = {"RULE_NOT_FOUND", "RULE_INACTIVE", "CLIENT_NOT_READY"}


class Platforms:
    """The platform of one test, started again as the test asks; stopped and removed after."""

    def __init__(self) -> None:
        self.current = start_platform(
            "points-restart-",
            # One quick retry, then the delivery is parked.
            NOTIFIER_RETRY_SCHEDULE_SECONDS="[0.2]",
        )

    async def start_again(self) -> RunningPlatform:
        """The platform started again on its state, and ready. In a thread: the test's
        callback receiver shares its event loop and must keep answering meanwhile, or
        the notifier, getting no answer, rightly calls back again."""

        def start() -> RunningPlatform:
            platform = self.current.start_again()
            platform.wait_ready()
            return platform

        self.current = await asyncio.to_thread(start)
        return self.current


@pytest.fixture
async def platforms() -> AsyncIterator[Platforms]:
    started = Platforms()
    try:
        started.current.wait_ready()
        yield started
    finally:
        started.current.stop()
        started.current.remove_state()


@dataclass
class Developer:
    """A partner's integration against whichever platform runs now."""

    http: httpx.AsyncClient
    business: Business
    receiver: CallbackReceiver

    async def headers(self, platform: RunningPlatform) -> dict[str, str]:
        return await developer_headers(platform, self.http, self.business)

    async def trigger(
        self, platform: RunningPlatform, request_id: str, amount: int, callback_url: str = ""
    ) -> dict[str, Any]:
        headers = await self.headers(platform)
        body = {
            "userId": MEMBER,
            "ruleId": self.business.rule_id,
            "amount": amount,
            "requestId": request_id,
            "callbackUrl": callback_url or self.receiver.url,
        }

        async def accepted() -> dict[str, Any] | None:
            response = await self.http.post(
                f"{platform.urls['trigger']}/v1/points/requests", headers=headers, json=body
            )
            if response.status_code == 400 and response.json()["code"] in NOT_THERE_YET:
                return None
            assert response.status_code == 202, response.text
            answer: dict[str, Any] = response.json()
            return answer

        return await eventually(accepted, what=f"the gateway accepting {request_id}")

    async def status(self, platform: RunningPlatform, request_id: str) -> str:
        response = await self.http.get(
            f"{platform.urls['trigger']}/v1/points/requests/{request_id}",
            headers=await self.headers(platform),
        )
        assert response.status_code == 200, response.text
        status: str = response.json()["status"]
        return status

    async def settled(self, platform: RunningPlatform, request_id: str, timeout: float = 60) -> str:
        async def outcome() -> str | None:
            status = await self.status(platform, request_id)
            return None if status == "pending" else status

        return await eventually(outcome, timeout=timeout, what=f"{request_id} settling")

    async def balance(self, platform: RunningPlatform) -> int:
        response = await self.http.get(
            f"{platform.urls['ledger']}/v1/members/{MEMBER}/balance",
            params={"environment": "staging"},
            headers=await self.headers(platform),
        )
        assert response.status_code == 200, response.text
        balance: int = response.json()["balance"]
        return balance

    def callbacks(self) -> Counter[str]:
        """How many callbacks the receiver got for each request."""
        return Counter(json.loads(body)["requestId"] for _, body in self.receiver.received)


async def a_business_in_use(
    platform: RunningPlatform, http: httpx.AsyncClient, receiver: CallbackReceiver
) -> Developer:
    """A rule and a client in use: 600 points in three triggers, called back, and a fourth
    of 50 points whose callback failed until its delivery was parked."""
    business = await business_with_an_active_rule(platform, http, NAME, "Loaf points")
    developer = Developer(http, business, receiver)
    for number, amount in enumerate((100, 200, 300)):
        await developer.trigger(platform, f"order-{number}", amount)
        assert await developer.settled(platform, f"order-{number}") == "succeeded"
    await developer.trigger(platform, "order-unreachable", 50, f"http://127.0.0.1:{free_port()}/x")
    await eventually(lambda: parked(platform), what="the unreachable callback being parked")

    async def called_back() -> bool:
        return sum(developer.callbacks().values()) == 3

    await eventually(called_back, what="three callbacks")
    assert await developer.balance(platform) == 650
    return developer


async def parked(platform: RunningPlatform) -> list[dict[str, Any]]:
    deliveries: list[dict[str, Any]] = platform.points("deliveries", "list", "--parked")
    return [delivery for delivery in deliveries if delivery["requestId"] == "order-unreachable"]


async def nothing_waits_in_the_gateways_outbox(platform: RunningPlatform) -> bool:
    connection = await asyncpg.connect(platform.stack_setting("DATABASE_URL"))
    try:
        waiting = await connection.fetchval(
            "SELECT count(*) FROM trigger.outbox WHERE published_at IS NULL"
        )
    finally:
        await connection.close()
    return bool(waiting == 0)


async def everything_is_still_there(platform: RunningPlatform, developer: Developer) -> None:
    http, business = developer.http, developer.business
    login = await http.post(
        f"{platform.urls['rules']}/v1/auth/login", json={"email": OWNER[0], "password": OWNER[1]}
    )
    assert login.status_code == 200, login.text
    console = {"Authorization": f"Bearer {login.json()['accessToken']}"}
    rule = await http.get(f"{platform.urls['rules']}/v1/rules/{business.rule_id}", headers=console)
    assert rule.json()["status"] == "active", rule.text
    assert await developer.headers(platform)  # the client still gets a token
    assert await parked(platform)


async def new_points_add_to_the_old_balance(
    platform: RunningPlatform, developer: Developer, old_balance: int
) -> None:
    assert await developer.balance(platform) == old_balance
    await developer.trigger(platform, "order-after-restart", 1000)
    assert await developer.settled(platform, "order-after-restart") == "succeeded"
    assert await developer.balance(platform) == old_balance + 1000


class TestStoppedWithCtrlC:
    async def test_everything_is_still_there_and_new_points_add_to_the_old_balance(
        self, platforms: Platforms, receiver: CallbackReceiver
    ) -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            developer = await a_business_in_use(platforms.current, http, receiver)

            assert await asyncio.to_thread(platforms.current.interrupt) == 0
            platform = await platforms.start_again()

            await everything_is_still_there(platform, developer)
            await new_points_add_to_the_old_balance(platform, developer, 650)

            async def called_back() -> bool:
                return developer.callbacks()["order-after-restart"] == 1

            await eventually(called_back, what="the new request's callback")
        # The results published again after the restart did not call anyone back twice.
        assert set(developer.callbacks().values()) == {1}
        assert platform.points("ledger", "verify") == {"violations": []}
        assert "demo client's secrets were shown at the first start" in platform.log.read_text()


class TestKilledWithARequestInFlight:
    async def test_the_request_accepted_before_the_kill_is_applied_once_after_the_start(
        self, platforms: Platforms, receiver: CallbackReceiver
    ) -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            developer = await a_business_in_use(platforms.current, http, receiver)
            ledger = platforms.current.pids["ledger"]
            os.killpg(ledger, signal.SIGSTOP)  # it can no longer apply anything
            try:
                await developer.trigger(platforms.current, "order-in-flight", 5000)
                assert await developer.status(platforms.current, "order-in-flight") == "pending"
                # Its event reached the broker that is about to lose it.
                await eventually(
                    lambda: nothing_waits_in_the_gateways_outbox(platforms.current),
                    what="the gateway publishing the request",
                )
            finally:
                platforms.current.kill()

            platform = await platforms.start_again()

            await everything_is_still_there(platform, developer)
            assert await developer.settled(platform, "order-in-flight") == "succeeded"
            await new_points_add_to_the_old_balance(platform, developer, 5650)

            transactions = await http.get(
                f"{platform.urls['ledger']}/v1/members/{MEMBER}/transactions",
                params={"environment": "staging"},
                headers=await developer.headers(platform),
            )
            body = transactions.json()
            items = body["items"] if isinstance(body, dict) else body
            amounts = sorted(item["amount"] for item in items)
            assert amounts == [50, 100, 200, 300, 1000, 5000], body

            async def called_back() -> bool:
                return developer.callbacks()["order-in-flight"] >= 1

            await eventually(called_back, what="the in-flight request's callback")
        assert developer.callbacks()["order-in-flight"] == 1
        assert platform.points("ledger", "verify") == {"violations": []}

"""The runbook "Recovering from a lost or replaced Kafka cluster", against the running platform.

Triggers keep arriving while the embedded broker is replaced with an empty one
on the same port (a cluster that lost its log). The operator runs the
documented command; every request the gateway accepted is then applied
exactly once, none stays pending, and the ledger verifies.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from infra.dev.kafka import TansuBroker, start_tansu
from infra.dev.launcher import RunningPlatform
from infra.errors import StartupError
from tests.e2e.test_platform import Business, business_with_an_active_rule
from tests.e2e.test_poison_messages import developer_headers
from tests.helpers import eventually, running_platform

pytestmark = pytest.mark.e2e

MEMBERS = [f"member-{n}" for n in range(12)]
#: What the gateway answers until the rule just activated reaches it.
NOT_THERE_YET = {"RULE_NOT_FOUND", "RULE_INACTIVE", "CLIENT_NOT_READY"}


@pytest.fixture
def platform() -> Iterator[RunningPlatform]:
    with running_platform(
        "points-lost-broker-",
        TRIGGER_RATE_LIMIT_PER_SECOND="100000",
        TRIGGER_RATE_LIMIT_BURST="100000",
    ) as running:
        yield running


class Load:
    """Triggers sent one after another by a few developers' connections; what was accepted."""

    def __init__(self, platform: RunningPlatform, http: httpx.AsyncClient, business: Business):
        self.platform = platform
        self.http = http
        self.business = business
        self.headers: dict[str, str] = {}
        self.accepted: dict[str, str] = {}  # requestId -> member
        self.refused: Counter[int] = Counter()
        self.sent = 0

    async def run(self, count: int, connections: int = 4) -> None:
        self.headers = await developer_headers(self.platform, self.http, self.business)
        numbers = iter(range(self.sent, self.sent + count))
        self.sent += count
        await asyncio.gather(*(self._send(numbers) for _ in range(connections)))

    async def _send(self, numbers: Iterator[int]) -> None:
        for number in numbers:
            request_id, member = f"load-{number}", MEMBERS[number % len(MEMBERS)]
            body = {
                "userId": member,
                "ruleId": self.business.rule_id,
                "amount": 1,
                "requestId": request_id,
            }
            try:
                response = await self.http.post(
                    f"{self.platform.urls['trigger']}/v1/points/requests",
                    headers=self.headers,
                    json=body,
                )
            except httpx.HTTPError:
                self.refused[0] += 1
                continue
            if response.status_code == 202:
                self.accepted[request_id] = member
            else:
                self.refused[response.status_code] += 1


def replace_broker(platform: RunningPlatform) -> TansuBroker:
    """Kill the embedded broker and start an empty one on its port: a lost cluster."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(platform.pids["kafka"], signal.SIGKILL)
    port = int(platform.env["DEV_KAFKA_PORT"])
    deadline = time.monotonic() + 30
    while True:  # until the killed broker's port is free
        try:
            return start_tansu(port, platform.state / "log" / "tansu-replacement.log")
        except StartupError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


async def statuses(platform: RunningPlatform, wanted: set[str]) -> Counter[str]:
    connection = await asyncpg.connect(platform.stack_setting("DATABASE_URL"))
    try:
        rows = await connection.fetch(
            "SELECT request_id, status FROM trigger.requests WHERE request_id = ANY($1::text[])",
            sorted(wanted),
        )
    finally:
        await connection.close()
    return Counter(row["status"] for row in rows)


class TestALostBroker:
    async def test_every_accepted_request_is_applied_once_after_the_documented_recovery(
        self, platform: RunningPlatform
    ) -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            business = await business_with_an_active_rule(
                platform, http, "Lost Broker Cafe", "Espresso points"
            )
            load = Load(platform, http, business)

            async def rule_known() -> bool:
                response = await http.post(
                    f"{platform.urls['trigger']}/v1/points/requests",
                    headers=await developer_headers(platform, http, business),
                    json={
                        "userId": MEMBERS[0],
                        "ruleId": business.rule_id,
                        "amount": 1,
                        "requestId": "warm-up",
                    },
                )
                return response.status_code == 202 or response.json()["code"] not in NOT_THERE_YET

            await eventually(rule_known, what="the gateway knowing the rule")
            started = datetime.now(UTC) - timedelta(minutes=1)
            await load.run(150)

            replacement = replace_broker(platform)
            try:
                await load.run(150)
                recovery = platform.points("outbox", "republish", "--since", started.isoformat())
                assert set(recovery["services"]) == {"rules", "trigger", "ledger", "notifier"}
                await load.run(100)

                wanted = set(load.accepted)

                async def all_settled() -> Counter[str] | None:
                    counted = await statuses(platform, wanted)
                    return counted if counted["pending"] == 0 else None

                settled = await eventually(all_settled, timeout=180, what="no request pending")
                assert settled == Counter({"succeeded": len(wanted)}), (settled, load.refused)

                for member in MEMBERS:
                    balance = await http.get(
                        f"{platform.urls['ledger']}/v1/members/{member}/balance",
                        params={"environment": "staging"},
                        headers=business.console,
                    )
                    expected = sum(1 for who in load.accepted.values() if who == member)
                    expected += 1 if member == MEMBERS[0] else 0  # the warm-up
                    assert balance.json()["balance"] == expected, member
                assert platform.points("ledger", "verify") == {"violations": []}
            finally:
                replacement.stop()
        assert len(wanted) >= 300, load.refused

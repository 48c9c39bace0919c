"""Repeated maximal amounts until a balance would overflow, against the running platform.

A hostile (or careless) developer triggers an uncapped earn rule with the
largest amount the gateway takes, over and over, first for one member and then
for hundreds. Every answer is a 202 or a 4xx; the request that would take the
member, or the rule's pool, past its documented limit (``contracts.limits``)
settles as failed with ``BALANCE_LIMIT_EXCEEDED`` in its status and callback;
a capped rule gets its reservation back; and other members' requests on every
partition still settle within seconds.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from contracts.limits import MAX_MEMBER_BALANCE, MAX_POINTS, MAX_POOL_BALANCE
from infra.dev.launcher import RunningPlatform
from tests.e2e.conftest import CallbackReceiver
from tests.e2e.test_platform import active_rule, business_with_an_active_rule
from tests.e2e.test_poison_messages import (
    SETTLE_SECONDS,
    developer_headers,
    members_on_every_partition,
)
from tests.helpers import eventually, running_platform

pytestmark = pytest.mark.e2e

LIMIT_EXCEEDED = "BALANCE_LIMIT_EXCEEDED"
#: Maximal earns the pool takes once the first member is full.
POOL_ROOM_IN_MAXIMAL_EARNS = MAX_POOL_BALANCE // MAX_POINTS - 1
#: Members who each try one maximal earn once the first is full: more than the pool takes.
CROWD = POOL_ROOM_IN_MAXIMAL_EARNS + 40


@pytest.fixture(scope="module")
def platform() -> Iterator[RunningPlatform]:
    with running_platform("points-limits-") as running:
        yield running


class Developer:
    """One staging client's calls to the gateway, retried after a 429 as its Retry-After says;
    every status the gateway answered is counted."""

    def __init__(self, platform: RunningPlatform, http: httpx.AsyncClient, headers: dict[str, str]):
        self.trigger_url = platform.urls["trigger"]
        self.http = http
        self.headers = headers
        self.statuses: Counter[int] = Counter()

    async def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        while True:
            response = await self.http.request(
                method, f"{self.trigger_url}{path}", headers=self.headers, **kwargs
            )
            self.statuses[response.status_code] += 1
            if response.status_code != 429:
                return response
            await asyncio.sleep(float(response.headers.get("Retry-After", "1")))

    async def trigger(self, body: dict[str, Any]) -> httpx.Response:
        return await self.call("POST", "/v1/points/requests", json=body)

    async def accepted(self, body: dict[str, Any]) -> httpx.Response | None:
        """The 202 for ``body``, or None while the gateway does not know the rule yet."""
        response = await self.trigger(body)
        return response if response.status_code == 202 else None

    async def outcome(self, request_id: str) -> dict[str, Any]:
        response = await self.call("GET", f"/v1/points/requests/{request_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def outcomes(self, request_ids: list[str]) -> list[dict[str, Any]] | None:
        """Every request's outcome once none is pending."""
        found = [await self.outcome(request_id) for request_id in request_ids]
        return None if any(item["status"] == "pending" for item in found) else found


def maximal(rule_id: str, user_id: str, request_id: str, callback_url: str) -> dict[str, Any]:
    return {
        "userId": user_id,
        "ruleId": rule_id,
        "amount": MAX_POINTS,
        "requestId": request_id,
        "callbackUrl": callback_url,
    }


def callbacks_by_request(receiver: CallbackReceiver) -> dict[str, dict[str, Any]]:
    return {
        callback["requestId"]: callback
        for callback in (json.loads(body) for _, body in receiver.received)
    }


class TestRepeatedMaximalAmounts:
    async def test_settle_as_failed_past_a_limit_and_stop_nobody(
        self, platform: RunningPlatform, receiver: CallbackReceiver
    ) -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            business = await business_with_an_active_rule(
                platform, http, "Overflow Casino", "Table points"
            )
            developer = Developer(platform, http, await developer_headers(platform, http, business))
            client_id = business.client["clientId"]
            jackpot = await active_rule(platform, http, business.console, client_id, "Jackpot")
            started = time.monotonic()

            # One member, maximal amounts over and over: the first fills the balance.
            whale = [f"whale-{n}" for n in range(5)]
            await eventually(
                lambda: developer.accepted(maximal(jackpot, "whale", whale[0], receiver.url)),
                what="the gateway to learn of the rule",
            )
            for request_id in whale[1:]:
                await developer.trigger(maximal(jackpot, "whale", request_id, receiver.url))
            whale_outcomes = await eventually(lambda: developer.outcomes(whale))
            assert [item["status"] for item in whale_outcomes] == ["succeeded"] + ["failed"] * 4
            assert {item.get("reason") for item in whale_outcomes[1:]} == {LIMIT_EXCEEDED}

            # Many members, one maximal amount each: the rule's pool fills up.
            crowd = [f"crowd-{n}" for n in range(CROWD)]
            await asyncio.gather(
                *(
                    developer.trigger(
                        maximal(jackpot, f"crowd-member-{n}", request_id, receiver.url)
                    )
                    for n, request_id in enumerate(crowd)
                )
            )
            crowd_outcomes = await eventually(lambda: developer.outcomes(crowd), timeout=60)
            settled = Counter((item["status"], item.get("reason")) for item in crowd_outcomes)
            assert settled == {
                ("succeeded", None): POOL_ROOM_IN_MAXIMAL_EARNS,
                ("failed", LIMIT_EXCEEDED): CROWD - POOL_ROOM_IN_MAXIMAL_EARNS,
            }
            overflowed_in = time.monotonic() - started

            # A capped rule gets back what it reserved for a request past a limit.
            capped = await active_rule(
                platform, http, business.console, client_id, "Capped", capMax=MAX_POINTS
            )
            await eventually(
                lambda: developer.accepted(maximal(capped, "whale", "capped-whale", receiver.url)),
                what="the gateway to learn of the capped rule",
            )
            [refused] = await eventually(lambda: developer.outcomes(["capped-whale"]))
            assert refused["reason"] == LIMIT_EXCEEDED
            minnow = await developer.trigger(
                maximal(capped, "minnow", "capped-minnow", receiver.url)
            )
            assert minnow.status_code == 202, minnow.text

            # Afterwards, other members on every partition settle within seconds.
            probes = members_on_every_partition("staging", business.org_id)
            probe_ids = [f"probe-{n}" for n in range(len(probes))]
            sent_at = time.monotonic()
            for user_id, request_id in zip(probes, probe_ids, strict=True):
                body = {"userId": user_id, "ruleId": business.rule_id, "amount": 5}
                await developer.trigger({**body, "requestId": request_id})
            probe_outcomes = await eventually(
                lambda: developer.outcomes(probe_ids), timeout=SETTLE_SECONDS
            )
            probes_settled_in = time.monotonic() - sent_at
            assert {item["status"] for item in probe_outcomes} == {"succeeded"}

            # The developer hears of each failure by callback too, with the balance kept.
            async def all_called_back() -> dict[str, dict[str, Any]] | None:
                callbacks = callbacks_by_request(receiver)
                return callbacks if set(whale + crowd) <= set(callbacks) else None

            callbacks = await eventually(all_called_back, timeout=60, what="every callback")
            failed = [callbacks[request_id] for request_id in whale[1:]]
            assert {(item["status"], item["reason"], item["balance"]) for item in failed} == {
                ("failed", LIMIT_EXCEEDED, MAX_MEMBER_BALANCE)
            }
            balance = await http.get(
                f"{platform.urls['ledger']}/v1/members/whale/balance",
                params={"environment": "staging"},
                headers=developer.headers,
            )
            assert balance.json()["balance"] == MAX_MEMBER_BALANCE

            # A single amount past the largest is refused at the gateway, naming the field.
            past = await developer.trigger(
                {**maximal(jackpot, "whale", "too-much", receiver.url), "amount": MAX_POINTS + 1}
            )
            assert past.status_code == 400
            assert "amount" in past.json()["detail"]

        assert all(status < 500 for status in developer.statuses), developer.statuses
        verify = platform.points("ledger", "verify")
        assert verify["violations"] == [], verify
        print(
            f"{sum(developer.statuses.values())} gateway calls, statuses "
            f"{dict(sorted(developer.statuses.items()))}; {len(whale) + CROWD} maximal earns "
            f"settled in {overflowed_in:.1f} s: {1 + POOL_ROOM_IN_MAXIMAL_EARNS} applied, "
            f"{len(whale) - 1} failed at the member's limit and "
            f"{CROWD - POOL_ROOM_IN_MAXIMAL_EARNS} at the pool's ({LIMIT_EXCEEDED}); "
            f"{len(probes)} probes on every partition settled in {probes_settled_in:.2f} s "
            f"afterwards; ledger verify passed"
        )

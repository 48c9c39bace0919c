# ruff: noqa: F811 - pytest hands the imported fixture `stack` to the tests as a parameter
"""The gateway's activity counts after real triggers: accepted, and refused by code, per
rule and per organisation, flushed from memory to PostgreSQL every few seconds."""

from __future__ import annotations

import uuid
from typing import Any

from tests.helpers import bearer, eventually
from tests.integration.test_trigger_gateway import Gateway

# The gateway test module's stack, as a fixture of this module (tests name it as a parameter).
from tests.integration.test_trigger_gateway import gateway as stack  # noqa: F401

#: The gateway flushes its counts every 5 seconds (TRIGGER_ACTIVITY_FLUSH_SECONDS).
FLUSHED = 15.0


async def activity(stack: Gateway, path: str, headers: dict[str, str] | None = None) -> Any:
    response = await stack.http.get(
        path,
        params={"environment": "staging", "bucket": "hour"},
        headers=headers or stack.console,
    )
    assert response.status_code == 200, response.text
    return response.json()


def totals(answer: dict[str, Any]) -> tuple[int, dict[str, int]]:
    refused: dict[str, int] = {}
    for bucket in answer["buckets"]:
        for code, count in bucket["refused"].items():
            refused[code] = refused.get(code, 0) + count
    return sum(bucket["accepted"] for bucket in answer["buckets"]), refused


class TestGatewayActivity:
    async def test_counts_accepted_and_refused_triggers_of_a_rule(self, stack: Gateway) -> None:
        for _ in range(2):
            assert (await stack.trigger("crowded", amount=5)).status_code == 202
        assert (await stack.trigger("crowded", amount=5000)).status_code == 400
        rule = stack.rules["crowded"]

        async def counted() -> bool:
            return totals(await activity(stack, f"/v1/rules/{rule}/activity")) == (
                2,
                {"CAP_EXCEEDED": 1},
            )

        await eventually(counted, timeout=FLUSHED, what="the rule's counts")

    async def test_counts_an_unknown_rule_for_the_organisation_without_storing_its_id(
        self, stack: Gateway
    ) -> None:
        made_up = f"rule-{uuid.uuid4().hex}"
        assert (await stack.trigger("open", rule_id=made_up)).status_code == 400

        async def counted() -> bool:
            _, refused = totals(await activity(stack, "/v1/activity"))
            return refused.get("RULE_NOT_FOUND", 0) >= 1

        await eventually(counted, timeout=FLUSHED, what="the organisation's counts")
        stored = await stack.runtime.pool.fetchval(
            "SELECT count(*) FROM activity WHERE rule_id = $1", made_up
        )
        assert stored == 0

    async def test_refuses_an_api_client(self, stack: Gateway) -> None:
        response = await stack.http.get(
            "/v1/activity",
            params={"environment": "staging"},
            headers=bearer(stack.tokens["main"]),
        )

        assert response.status_code == 403
        assert response.json()["code"] == "FORBIDDEN"

    async def test_refuses_a_timezone_that_does_not_exist(self, stack: Gateway) -> None:
        response = await stack.http.get(
            "/v1/activity",
            params={"environment": "staging", "timezone": "Europe/Atlantis"},
            headers=stack.console,
        )

        assert response.status_code == 400
        assert response.json()["code"] == "UNKNOWN_TIMEZONE"

    async def test_refuses_a_range_of_more_buckets_than_allowed(self, stack: Gateway) -> None:
        response = await stack.http.get(
            "/v1/activity",
            params={
                "environment": "staging",
                "bucket": "hour",
                "from": "2020-01-01T00:00:00Z",
                "to": "2026-01-01T00:00:00Z",
            },
            headers=stack.console,
        )

        assert response.status_code == 400
        assert response.json()["code"] == "ACTIVITY_RANGE_TOO_LARGE"

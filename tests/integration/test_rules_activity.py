"""The rules service's activity routes: one answer per bucket from the ledger's and the
gateway's figures, in the organisation's timezone, for its business users only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import pytest

from services.rules.readers import LedgerReader
from tests.helpers import RulesStack, Tenant, bearer, login
from tests.integration.test_rules_api import create_rule


@dataclass
class FakeReads:
    """The ledger answers with 7 points earned in every bucket; the gateway is away."""

    ledger_url: str
    paths: list[str] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        if not str(request.url).startswith(self.ledger_url):
            raise httpx.ConnectError("the gateway is away", request=request)
        start = datetime.fromisoformat(request.url.params["from"])
        return httpx.Response(
            200,
            json={
                "buckets": [
                    {
                        "start": start.isoformat(),
                        "earned": 7,
                        "redeemed": 0,
                        "reversed": 0,
                        "expired": 0,
                        "transactions": 1,
                    }
                ]
            },
        )


@pytest.fixture
async def reads(stack: RulesStack) -> AsyncIterator[FakeReads]:
    fake = FakeReads(stack.settings.ledger_url.rstrip("/"))
    http = httpx.AsyncClient(transport=httpx.MockTransport(fake))
    reader = LedgerReader(stack.settings, stack.app.state.rules.issuer, http=http)
    real = stack.app.state.console_ledger
    stack.app.state.console_ledger = reader
    try:
        yield fake
    finally:
        stack.app.state.console_ledger = real
        await reader.aclose()


async def rule_activity(
    http: httpx.AsyncClient, rule_id: str, headers: dict[str, str], **params: Any
) -> httpx.Response:
    return await http.get(f"/v1/rules/{rule_id}/activity", params=params, headers=headers)


class TestRuleActivity:
    async def test_a_viewer_gets_the_ledgers_figures_and_is_told_the_gateway_is_missing(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant, reads: FakeReads
    ) -> None:
        rule = await create_rule(http, tenant, capMax=5000)
        viewer = bearer(await login(http, await stack.seeder.user(tenant.org_id, "viewer")))

        response = await rule_activity(http, rule["id"], viewer, bucket="day")

        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["missing"] == ["gateway"]
        assert answer["capMax"] == 5000
        assert answer["buckets"][0]["earned"] == 7
        assert answer["buckets"][0]["accepted"] is None
        assert len(answer["buckets"]) == 8
        assert f"/v1/rules/{rule['id']}/activity" in reads.paths

    async def test_another_organisations_rule_is_not_found(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant, reads: FakeReads
    ) -> None:
        other = await stack.seeder.organisation("Other Org")
        foreign = await create_rule(http, tenant)

        response = await rule_activity(http, foreign["id"], bearer(await login(http, other.email)))

        assert response.status_code == 404
        assert response.json()["code"] == "RULE_NOT_FOUND"
        assert reads.paths == []

    async def test_refuses_more_hours_than_one_read_answers(
        self, http: httpx.AsyncClient, tenant: Tenant, reads: FakeReads
    ) -> None:
        rule = await create_rule(http, tenant)

        response = await rule_activity(
            http,
            rule["id"],
            tenant.headers,
            bucket="hour",
            **{"from": "2026-01-01T00:00:00Z", "to": "2026-06-01T00:00:00Z"},
        )

        assert response.status_code == 400
        assert response.json()["code"] == "ACTIVITY_RANGE_TOO_LARGE"

    async def test_needs_a_signed_in_business_user(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        rule = await create_rule(http, tenant)

        response = await http.get(f"/v1/rules/{rule['id']}/activity")

        assert response.status_code == 401


class TestOrganisationActivity:
    async def test_is_in_the_organisations_timezone_for_the_environment_asked(
        self, http: httpx.AsyncClient, tenant: Tenant, reads: FakeReads
    ) -> None:
        response = await http.get(
            "/v1/activity", params={"environment": "production"}, headers=tenant.headers
        )

        assert response.status_code == 200, response.text
        answer = response.json()
        assert (answer["environment"], answer["timezone"], answer["ruleId"]) == (
            "production",
            "UTC",
            None,
        )
        assert "/v1/activity" in reads.paths

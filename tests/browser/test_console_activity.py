"""Activity at a glance in a real browser: triggers sent through the gateway, accepted and
refused, then the rule page's chart and table and the Overview page show those figures,
read back from the page."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from playwright.async_api import Page, expect

from infra.dev.launcher import RunningPlatform
from infra.tokens import TOKEN_PATH
from tests.browser.conftest import Tenant, create_rule, earn, screenshot, sign_in
from tests.helpers import bearer, eventually

pytestmark = pytest.mark.e2e

#: The gateway writes its counts every 5 seconds; a page read before that shows fewer.
FLUSHED = 30.0


async def refused_trigger(
    platform: RunningPlatform, tenant: Tenant, rule_id: str, amount: int
) -> dict[str, Any]:
    """A trigger the gateway refuses at once; its problem."""
    async with httpx.AsyncClient(timeout=10) as http:
        token = await http.post(
            platform.urls["rules"] + TOKEN_PATH,
            data={
                "grant_type": "client_credentials",
                "client_id": tenant.staging_client["clientId"],
                "client_secret": tenant.staging_client["clientSecret"],
            },
        )
        response = await http.post(
            platform.urls["trigger"] + "/v1/points/requests",
            headers=bearer(token.json()["access_token"]),
            json={"userId": "member-x", "ruleId": rule_id, "amount": amount,
                  "requestId": uuid.uuid4().hex},
        )  # fmt: skip
    assert response.status_code == 400, response.text
    problem: dict[str, Any] = response.json()
    return problem


async def table_totals(page: Page, prefix: str) -> dict[str, Any]:
    """The activity table's figures summed over its rows, as the page shows them."""
    rows = await page.locator(f"#{prefix}-table tbody tr").evaluate_all(
        "rows => rows.map(row => [...row.cells].map(cell => cell.textContent))"
    )
    head = await page.locator(f"#{prefix}-table thead th").all_text_contents()
    totals: dict[str, Any] = {"Refused by code": []}
    for row in rows:
        for name, cell in zip(head[1:], row[1:], strict=True):
            if name == "Refused by code":
                totals[name] += [code for code in cell.split(", ") if code not in ("0", "—")]
            elif cell != "—":
                totals[name] = totals.get(name, 0) + int(cell.replace(",", ""))
    return totals


async def open_table(page: Page, url: str, prefix: str) -> dict[str, Any]:
    await page.goto(url)
    await expect(page.locator(f"#{prefix}-status")).to_contain_text("by day")
    await page.get_by_role("button", name="Show as table").click()
    return await table_totals(page, prefix)


class TestRuleActivity:
    async def test_the_rule_page_charts_and_tabulates_what_its_triggers_did(
        self,
        page: Page,
        platform: RunningPlatform,
        tenant: Tenant,
        editor_api: httpx.AsyncClient,
    ) -> None:
        rule = await create_rule(editor_api, tenant, activate=True, capMax=1000)
        await earn(platform, tenant, rule["id"], "member-a", 120)
        await earn(platform, tenant, rule["id"], "member-b", 80)
        refusal = await refused_trigger(platform, tenant, rule["id"], 5000)
        assert refusal["code"] == "CAP_EXCEEDED"
        await sign_in(page, tenant.viewer)
        url = f"/console/rules/{rule['id']}"
        shown: dict[str, Any] = {}

        async def counted() -> bool:
            shown.update(await open_table(page, url, "rule-activity"))
            return shown.get("Accepted") == 2 and shown["Refused by code"] == ["CAP_EXCEEDED: 1"]

        await eventually(counted, timeout=FLUSHED, what="the gateway's counts on the page")

        assert (shown["Earned"], shown["Redeemed"], shown["Refused"]) == (200, 0, 1)
        await expect(page.locator("#rule-activity-charts .chart-limit-label")).to_have_text(
            "Cap: 1,000"
        )
        point = page.locator("#rule-activity-charts circle[aria-label*='Earned: 200']")
        await point.focus()
        await expect(page.locator("#rule-activity-charts .chart-readout").first).to_contain_text(
            "Earned: 200"
        )
        # Drawn last, the cumulative line's point is the one under the pointer.
        await page.locator(
            "#rule-activity-charts circle[aria-label*='Moved against cap: 200']"
        ).hover()
        await expect(page.locator("#rule-activity-charts .chart-readout").first).to_contain_text(
            "Moved against cap: 200"
        )
        await screenshot(page, "console-rule-activity")

    async def test_the_overview_counts_a_refusal_that_named_no_rule(
        self, page: Page, platform: RunningPlatform, tenant: Tenant
    ) -> None:
        refusal = await refused_trigger(platform, tenant, f"rule-{uuid.uuid4().hex[:8]}", 10)
        assert refusal["code"] == "RULE_NOT_FOUND"
        await sign_in(page, tenant.viewer)
        shown: dict[str, Any] = {}

        async def counted() -> bool:
            shown.update(await open_table(page, "/console/overview", "overview-activity"))
            return any(code.startswith("RULE_NOT_FOUND") for code in shown["Refused by code"])

        await eventually(counted, timeout=FLUSHED, what="the refusal on the Overview page")

        await expect(page.get_by_role("link", name="Overview")).to_have_attribute(
            "aria-current", "page"
        )
        await screenshot(page, "console-overview")

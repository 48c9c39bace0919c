"""The console's callback log in a real browser against the whole platform.

A partner's receiver refuses a callback until the notifier parks it (the shared
platform's retry schedule is short: `tests/browser/conftest.py`); once the receiver
is fixed, an editor replays the callback from the Callbacks page and sees it
delivered, and the receiver gets it signed. A viewer sees the log but no Replay.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from playwright.async_api import Locator, Page, expect

from infra.dev.launcher import RunningPlatform
from infra.signing import verify
from tests.browser.conftest import Tenant, create_rule, earn, screenshot, sign_in
from tests.helpers import eventually
from tests.integration.test_notifier import CallbackReceiver, serving

pytestmark = pytest.mark.e2e


@pytest.fixture
async def receiver() -> AsyncIterator[CallbackReceiver]:
    """The partner's receiver on 127.0.0.1, broken (HTTP 500) until a test fixes it."""
    async with serving(CallbackReceiver(then=500)) as server:
        yield server


@pytest.fixture
async def parked(
    platform: RunningPlatform,
    tenant: Tenant,
    editor_api: httpx.AsyncClient,
    receiver: CallbackReceiver,
) -> str:
    """A trigger whose callback the receiver refused until it was parked; its request id."""
    rule = await create_rule(editor_api, tenant, activate=True)
    request_id = await earn(
        platform, tenant, rule["id"], f"member-{uuid.uuid4().hex[:6]}", 10,
        callbackUrl=receiver.url("/hooks/points"),
    )  # fmt: skip

    async def parked() -> dict[str, Any] | None:
        # Development mode without an operator token: the notifier answers operators
        # that send no token.
        async with httpx.AsyncClient(timeout=10) as http:
            listed = await http.get(
                platform.urls["notifier"] + "/v1/deliveries",
                params={"status": "parked", "kind": "callback", "limit": 1000},
            )
        return next(
            (item for item in listed.json()["items"] if item["requestId"] == request_id), None
        )

    await eventually(parked, timeout=30, what="the callback to be parked")
    return request_id


def callback_row(page: Page, request_id: str) -> Locator:
    return page.get_by_role("row").filter(has_text=request_id)


async def open_callbacks(page: Page, tenant: Tenant) -> None:
    await page.get_by_role("link", name="Callbacks").click()
    await expect(page.get_by_role("heading", name="Callbacks")).to_be_visible()
    await page.get_by_label("API client").select_option(tenant.staging_client["clientId"])
    await expect(page).to_have_url(re.compile(r"\?clientId="))


class TestTheCallbackLog:
    async def test_a_clients_callbacks_link_opens_the_log_of_that_client(
        self, page: Page, tenant: Tenant, parked: str
    ) -> None:
        await sign_in(page, tenant.viewer)
        await page.get_by_role("link", name="API clients").click()
        await page.get_by_role("link", name="Callbacks of Bakery app", exact=True).click()

        await expect(page.get_by_role("heading", name="Callbacks")).to_be_visible()
        await expect(page.get_by_label("API client")).to_have_value(
            tenant.staging_client["clientId"]
        )
        await expect(callback_row(page, parked)).to_contain_text("Parked")

    async def test_an_editor_replays_a_parked_callback_and_sees_it_delivered_signed(
        self, page: Page, tenant: Tenant, receiver: CallbackReceiver, parked: str
    ) -> None:
        request_id = parked
        refused = len(receiver.received)
        receiver.then = 200  # the partner fixes the receiver

        await sign_in(page, tenant.editor)
        await open_callbacks(page, tenant)
        row = callback_row(page, request_id)
        await expect(row).to_contain_text("Parked")
        await expect(row).to_contain_text("HTTP 500")
        await screenshot(page, "console-callbacks-parked")
        await row.get_by_role("button", name=f"Replay callback {request_id}").click()

        await expect(row).to_contain_text("Delivered", timeout=20_000)
        await expect(row).to_contain_text("HTTP 200")
        await screenshot(page, "console-callbacks")
        delivered = receiver.received[refused:]
        assert len(delivered) == 1
        signature = delivered[0].headers["x-points-signature"]
        assert verify(tenant.staging_client["callbackSigningSecret"], delivered[0].body, signature)
        assert refused == 3  # the first attempt and the schedule's two retries

    async def test_a_viewer_sees_a_parked_callback_without_a_replay_button(
        self, page: Page, tenant: Tenant, parked: str
    ) -> None:
        await sign_in(page, tenant.viewer)
        await open_callbacks(page, tenant)
        row = callback_row(page, parked)

        await expect(row).to_contain_text("Parked")
        await expect(page.get_by_role("button", name=re.compile("^Replay"))).to_have_count(0)

"""The console's API clients page, in Chromium against the platform as `make run` starts
it: an admin creates a client and copies its secret from the panel that shows it once,
a developer uses it, and the admin revokes it knowing which rules it served; a viewer
sees the list and nothing to change it with."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from playwright.async_api import Page, expect

from infra.dev.launcher import RunningPlatform
from infra.tokens import TOKEN_PATH
from tests.browser.conftest import PASSWORD, Tenant, create_rule, screenshot, sign_in
from tests.helpers import bearer, eventually


@pytest.fixture
async def admin_api(platform: RunningPlatform, tenant: Tenant) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=platform.urls["rules"], timeout=10) as http:
        login = await http.post(
            "/v1/auth/login", json={"email": tenant.admin, "password": PASSWORD}
        )
        assert login.status_code == 200, login.text
        http.headers.update(bearer(login.json()["accessToken"]))
        yield http


async def token_for(platform: RunningPlatform, client_id: str, secret: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.post(
            platform.urls["rules"] + TOKEN_PATH,
            data={
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": secret,
            },
        )


async def trigger(platform: RunningPlatform, token: str, rule_id: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.post(
            platform.urls["trigger"] + "/v1/points/requests",
            headers=bearer(token),
            json={"userId": "member-7", "ruleId": rule_id, "amount": 1,
                  "requestId": uuid.uuid4().hex},
        )  # fmt: skip


async def open_clients(page: Page, email: str) -> None:
    await sign_in(page, email)
    await page.get_by_role("link", name="API clients").click()
    await page.wait_for_url("**/console/clients")


class TestApiClientsPage:
    async def test_an_admin_creates_a_client_uses_its_copied_secret_and_revokes_it(
        self,
        page: Page,
        platform: RunningPlatform,
        tenant: Tenant,
        admin_api: httpx.AsyncClient,
    ) -> None:
        name = f"Kiosk {uuid.uuid4().hex[:6]}"
        await open_clients(page, tenant.admin)
        await screenshot(page, "clients")

        await page.get_by_role("button", name="New client").click()
        await page.get_by_label("Name").fill(name)
        await page.get_by_role("button", name="Create client").click()
        panel = page.locator("#issued-panel")
        await expect(panel).to_be_visible()
        await expect(panel).to_contain_text("shown only this once")
        await screenshot(page, "client-secrets-once")
        client_id = await page.locator("#issued-client-id").text_content()
        await page.get_by_role("button", name="Copy client secret").click()
        await expect(page.locator("#announcer")).to_have_text(
            "Client secret copied to the clipboard."
        )
        secret = await page.evaluate("navigator.clipboard.readText()")
        assert client_id and client_id.startswith("cli_")
        assert secret == await page.locator("#issued-client-secret").text_content()

        rule = await create_rule(admin_api, tenant, activate=True, authorizedClientIds=[client_id])
        issued = await token_for(platform, client_id, secret)
        assert issued.status_code == 200, issued.text
        token = issued.json()["access_token"]

        async def accepted() -> bool:
            return (await trigger(platform, token, rule["id"])).status_code == 202

        await eventually(accepted, timeout=30, what="the gateway to accept the new client")

        await page.get_by_role("button", name="I have stored the secrets").click()
        await expect(panel).to_be_hidden()
        assert secret not in await page.content()
        await page.reload()
        assert secret not in await page.content()
        row = page.locator(f"tr[data-client-id='{client_id}']")
        await expect(row).to_contain_text(name)

        await page.get_by_role("button", name=f"Actions for {name}").click()
        await page.get_by_role("menuitem", name="Revoke").click()
        dialog = page.get_by_role("dialog", name=f"Revoke {name}?")
        await expect(dialog).to_contain_text(rule["name"])
        await screenshot(page, "client-revoke-dialog")
        await dialog.get_by_role("button", name="Revoke client").click()
        await expect(row).to_contain_text("Revoked")

        refused = await trigger(platform, token, rule["id"])
        assert refused.status_code == 401, refused.text
        assert (await token_for(platform, client_id, secret)).status_code == 401

    async def test_rotating_shows_the_new_secret_once_and_the_old_one_still_works(
        self, page: Page, platform: RunningPlatform, tenant: Tenant, admin_api: httpx.AsyncClient
    ) -> None:
        name = f"Rotated {uuid.uuid4().hex[:6]}"
        created = await admin_api.post("/v1/clients", json={"name": name, "environment": "staging"})
        assert created.status_code == 201, created.text
        old = created.json()
        await open_clients(page, tenant.admin)

        await page.get_by_role("button", name=f"Actions for {name}").click()
        await page.get_by_role("menuitem", name="Rotate secret").click()
        await page.get_by_role("dialog").get_by_role("button", name="Rotate secret").click()

        panel = page.locator("#issued-panel")
        await expect(panel).to_contain_text(f"New secret for {name}")
        await expect(panel).to_contain_text("The previous secret keeps working until")
        await screenshot(page, "client-rotated-secret")
        new_secret = await page.locator("#issued-client-secret").text_content()
        assert new_secret and new_secret != old["clientSecret"]
        for secret in (old["clientSecret"], new_secret):
            issued = await token_for(platform, old["clientId"], secret)
            assert issued.status_code == 200, issued.text

    async def test_an_admin_sets_a_clients_rate_limit(
        self, page: Page, tenant: Tenant, admin_api: httpx.AsyncClient
    ) -> None:
        name = f"Till {uuid.uuid4().hex[:6]}"
        created = await admin_api.post("/v1/clients", json={"name": name, "environment": "staging"})
        assert created.status_code == 201, created.text
        await open_clients(page, tenant.admin)

        await page.get_by_role("button", name=f"Actions for {name}").click()
        await page.get_by_role("menuitem", name="Set rate limit").click()
        await page.get_by_label("Triggers a second").fill("5")
        await page.get_by_label("Burst (triggers at once)").fill("10")
        await page.get_by_role("button", name="Save rate limit").click()

        row = page.locator(f"tr[data-client-id='{created.json()['clientId']}']")
        await expect(row).to_contain_text("5/s, burst 10")

    async def test_the_environment_switch_shows_the_production_clients(
        self, page: Page, tenant: Tenant
    ) -> None:
        await open_clients(page, tenant.admin)

        await page.locator("label[for=env-production]").click()

        await expect(
            page.locator(f"tr[data-client-id='{tenant.production_client_id}']")
        ).to_be_visible()
        await expect(
            page.locator(f"tr[data-client-id='{tenant.staging_client['clientId']}']")
        ).to_have_count(0)

    async def test_a_viewer_sees_the_list_without_the_controls(
        self, page: Page, tenant: Tenant
    ) -> None:
        await open_clients(page, tenant.viewer)

        row = page.locator(f"tr[data-client-id='{tenant.staging_client['clientId']}']")
        await expect(row).to_contain_text("Bakery app")
        await expect(row.get_by_role("link", name="Callbacks of Bakery app")).to_have_attribute(
            "href", f"/console/callbacks?clientId={tenant.staging_client['clientId']}"
        )
        await expect(page.get_by_role("button", name="New client")).to_have_count(0)
        await expect(page.get_by_role("button", name="Actions for Bakery app")).to_have_count(0)
        await screenshot(page, "clients-viewer")

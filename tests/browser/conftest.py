"""What every browser test shares: one platform started the way `make run` starts it,
Debian's Chromium driven by Playwright, an organisation in Berlin with an admin, an
editor, a viewer and a client per environment, and ways to arrange through the
public API.

Each test module signs in and arranges its own rules, so they share the platform
and the tenant; a module that needs an organisation of its own makes one.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright

from infra.dev.launcher import RunningPlatform
from infra.tokens import TOKEN_PATH
from tests.helpers import bearer, eventually, running_platform

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "var" / "screenshots"
TIMEZONE = "Europe/Berlin"
PASSWORD = "croissant-and-coffee"
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


@dataclass(frozen=True)
class Tenant:
    """An organisation in Berlin with an admin, an editor, a viewer and a client per
    environment."""

    org_id: str
    admin: str
    editor: str
    viewer: str
    staging_client: dict[str, str]
    production_client_id: str


#: Callbacks a receiver refuses are parked after two quick retries rather than after a
#: day of them, so a test can show a parked callback (no other test waits on a retry).
RETRY_SCHEDULE = "[0.5, 0.5]"


@pytest.fixture(scope="session")
def platform() -> Iterator[RunningPlatform]:
    with running_platform(
        "points-console-", NOTIFIER_RETRY_SCHEDULE_SECONDS=RETRY_SCHEDULE
    ) as running:
        yield running


@pytest.fixture(scope="session")
def tenant(platform: RunningPlatform) -> Tenant:
    org = platform.points("org", "create", "Corner Bakery", "--timezone", TIMEZONE)
    emails = {}
    for role in ("admin", "editor", "viewer"):
        emails[role] = f"{role}@bakery.example"
        platform.points(
            "user", "create", "--org", org["id"], "--email", emails[role],
            "--password", PASSWORD, "--role", role,
        )  # fmt: skip
    staging = platform.points(
        "client", "create", "--org", org["id"], "--environment", "staging", "--name", "Bakery app"
    )
    production = platform.points(
        "client", "create", "--org", org["id"], "--environment", "production",
        "--name", "Bakery app (live)",
    )  # fmt: skip
    return Tenant(
        org["id"],
        emails["admin"],
        emails["editor"],
        emails["viewer"],
        staging,
        production["clientId"],
    )


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


async def new_page(browser: Browser, platform: RunningPlatform, viewport: Any = None) -> Page:
    context = await browser.new_context(
        base_url=platform.urls["rules"],
        permissions=["clipboard-read", "clipboard-write"],
        viewport=viewport or LAPTOP,
    )
    context.set_default_timeout(15_000)
    return await context.new_page()


@pytest.fixture
async def page(browser: Browser, platform: RunningPlatform) -> AsyncIterator[Page]:
    opened = await new_page(browser, platform)
    try:
        yield opened
    finally:
        await opened.context.close()


async def sign_in(page: Page, email: str) -> None:
    await page.goto("/console/login")
    await page.get_by_label("E-mail").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url("**/console/rules")


async def choose_from_menu(page: Page, rule_name: str, item: str) -> None:
    """Open a rule's kebab menu on the rules list and pick ``item``."""
    await page.get_by_role("button", name=f"Actions for {rule_name}").click()
    await page.get_by_role("menuitem", name=item).click()


async def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


# --- arranging through the public API ------------------------------------------


@pytest.fixture
async def editor_api(platform: RunningPlatform, tenant: Tenant) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=platform.urls["rules"], timeout=10) as http:
        login = await http.post(
            "/v1/auth/login", json={"email": tenant.editor, "password": PASSWORD}
        )
        assert login.status_code == 200, login.text
        http.headers.update(bearer(login.json()["accessToken"]))
        yield http


async def create_rule(
    http: httpx.AsyncClient, tenant: Tenant, activate: bool, **fields: Any
) -> Any:
    body = {
        "name": f"Rule {uuid.uuid4().hex[:6]}",
        "type": "earn",
        "environment": "staging",
        "apiTrigger": True,
        "authorizedClientIds": [tenant.staging_client["clientId"]],
        "capMax": 1000,
        **fields,
    }
    created = await http.post("/v1/rules", json=body)
    assert created.status_code == 201, created.text
    if not activate:
        return created.json()
    activated = await http.post(f"/v1/rules/{created.json()['id']}/activate")
    assert activated.status_code == 200, activated.text
    return activated.json()


async def earn(
    platform: RunningPlatform,
    tenant: Tenant,
    rule_id: str,
    user_id: str,
    amount: int,
    **fields: str,
) -> str:
    """Trigger ``rule_id`` for ``user_id`` as the staging client does (with ``fields``
    such as a ``callbackUrl``), until it is applied; its request id."""
    request_id = uuid.uuid4().hex
    async with httpx.AsyncClient(timeout=10) as http:
        token = await http.post(
            platform.urls["rules"] + TOKEN_PATH,
            data={
                "grant_type": "client_credentials",
                "client_id": tenant.staging_client["clientId"],
                "client_secret": tenant.staging_client["clientSecret"],
            },
        )
        gateway = platform.urls["trigger"] + "/v1/points/requests"
        trigger = bearer(token.json()["access_token"])

        async def accepted() -> bool:
            # The rule reaches the gateway through Kafka a moment after activation;
            # until then the gateway truthfully answers that it does not exist.
            response = await http.post(
                gateway,
                headers=trigger,
                json={"userId": user_id, "ruleId": rule_id, "amount": amount,
                      "requestId": request_id, **fields},
            )  # fmt: skip
            return response.status_code == 202

        await eventually(accepted, timeout=30, what="the gateway to accept the trigger")

        async def settled() -> bool:
            status = await http.get(f"{gateway}/{request_id}", headers=trigger)
            return status.json()["status"] == "succeeded"

        await eventually(settled, timeout=30, what="the trigger to be applied")
    return request_id

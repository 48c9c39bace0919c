"""The console's Team page (issue 20): an admin invites someone, the invitee follows the
e-mail's link, sets a password and signs in; the admin removes them and their open
console is sent to sign in."""

from __future__ import annotations

import email
import re
import uuid
from email.message import EmailMessage
from email.policy import default

from playwright.async_api import Browser, Page, expect

from infra.dev.launcher import RunningPlatform
from infra.dev.smtp_sink import list_messages
from tests.browser.conftest import Tenant, new_page, screenshot, sign_in
from tests.helpers import eventually

NEW_PASSWORD = "sourdough-starter-42"
LINK = re.compile(r"https?://\S+/console/invitations/[A-Za-z0-9_-]+")


def invitation_link(platform: RunningPlatform, recipient: str) -> str | None:
    """The link of the newest invitation e-mail to ``recipient`` the SMTP sink received."""
    for path in list_messages(platform.mail_dir):
        message = email.message_from_bytes(path.read_bytes(), policy=default)
        assert isinstance(message, EmailMessage)
        if message["To"] != recipient:
            continue
        body = message.get_body(preferencelist=("plain",))
        found = LINK.search(str(body.get_content())) if body is not None else None  # type: ignore[attr-defined]
        return found.group(0) if found else None
    return None


async def invite(page: Page, address: str, role: str) -> None:
    await page.goto("/console/team")
    await page.get_by_label("E-mail address").fill(address)
    await page.get_by_label("Role", exact=True).select_option(role)
    await page.get_by_role("button", name="Send invitation").click()
    await expect(page.locator(f"tr[data-email='{address}']")).to_contain_text("Invited")


async def test_an_invited_user_joins_through_the_email_and_is_sent_away_when_removed(
    browser: Browser, page: Page, platform: RunningPlatform, tenant: Tenant
) -> None:
    address = f"baker-{uuid.uuid4().hex[:8]}@bakery.example"
    await sign_in(page, tenant.admin)
    await invite(page, address, "editor")
    await screenshot(page, "console-team")

    async def link_arrived() -> str | None:
        return invitation_link(platform, address)

    link = await eventually(link_arrived, timeout=30, what="the invitation e-mail")

    invitee = await new_page(browser, platform)
    try:
        await invitee.goto(link)
        await expect(invitee.get_by_role("heading", name="Set your password")).to_be_visible()
        await invitee.get_by_label("Password", exact=True).fill(NEW_PASSWORD)
        await invitee.get_by_label("Password again").fill(NEW_PASSWORD)
        await screenshot(invitee, "console-invitation")
        await invitee.get_by_role("button", name="Join").click()
        await invitee.wait_for_url("**/console/login**")
        await expect(invitee.get_by_role("status").first).to_contain_text("Your password is set")
        await invitee.get_by_label("E-mail").fill(address)
        await invitee.get_by_label("Password").fill(NEW_PASSWORD)
        await invitee.get_by_role("button", name="Sign in").click()
        await invitee.wait_for_url("**/console/rules")
        await expect(invitee.locator(".who")).to_contain_text(address)
        # An editor sees the team, without the controls only admins may use.
        await invitee.goto("/console/team")
        await expect(invitee.locator(f"tr[data-email='{address}']")).to_contain_text("Active")
        await expect(invitee.get_by_role("button", name="Send invitation")).to_have_count(0)

        await page.reload()
        row = page.locator(f"tr[data-email='{address}']")
        await expect(row).to_contain_text("Active")
        await row.get_by_role("button", name=f"Remove {address}").click()
        await page.get_by_role("button", name="Remove user").click()
        await expect(row).to_have_count(0)

        await invitee.goto("/console/rules")
        await invitee.wait_for_url("**/console/login**")
    finally:
        await invitee.context.close()


async def test_a_viewer_sees_the_team_without_controls(page: Page, tenant: Tenant) -> None:
    await sign_in(page, tenant.viewer)

    await page.get_by_role("link", name="Team").click()

    await expect(page.locator(f"tr[data-email='{tenant.admin}']")).to_contain_text("Admin")
    await expect(page.get_by_role("button", name="Send invitation")).to_have_count(0)
    await expect(page.get_by_role("button", name=re.compile("^Remove"))).to_have_count(0)

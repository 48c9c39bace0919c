"""Issue 20, the team: admins invite business users, change their roles and remove them.

One rules service runs for the whole module against a real PostgreSQL and a real
broker; every test seeds an organisation of its own. An invitation's token is
read the way only the notifier can: from the outbox event, opened with the
sealing key the two services share.
"""

from __future__ import annotations

import asyncio
import email
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from email.message import EmailMessage
from email.policy import default
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from structlog.testing import capture_logs

from contracts import (
    INVITATIONS_REQUESTED,
    LEDGER_USERS_GROUP,
    USERS_LIFECYCLE,
    InvitationEmailRequestedEvent,
    UserLifecycleEvent,
)
from infra.catchup import GroupProgress
from infra.dev.smtp_sink import SmtpSink, list_messages, start_smtp_sink
from infra.sealing import invitation_sealer
from infra.tokens import JwksVerifier
from services.ledger.app import create_app as create_ledger_app
from services.ledger.settings import LedgerSettings
from services.notifier import queueing
from services.notifier.settings import NotifierSettings
from tests.helpers import (
    PASSWORD,
    RULES_URL,
    RulesStack,
    Service,
    Tenant,
    bearer,
    eventually,
    free_port,
    login,
    new_tenant,
)
from tests.integration.test_notifier import notifier_settings, running_callbacks

NEW_PASSWORD = "a brand new passphrase"


# --- helpers ------------------------------------------------------------------------------


async def invite(
    http: httpx.AsyncClient, tenant: Tenant, address: str, role: str = "editor"
) -> httpx.Response:
    return await http.post(
        "/v1/users", json={"email": address, "role": role}, headers=tenant.headers
    )


def an_address(label: str = "new") -> str:
    return f"{label}-{uuid.uuid4().hex[:10]}@example.com"


async def invitation_event(stack: RulesStack, user_id: str) -> InvitationEmailRequestedEvent:
    payload = await stack.runtime.pool.fetchval(
        "SELECT payload FROM outbox WHERE topic = $1 AND key = $2 ORDER BY id DESC LIMIT 1",
        INVITATIONS_REQUESTED,
        user_id,
    )
    return InvitationEmailRequestedEvent.model_validate_json(payload)


async def token_of(stack: RulesStack, user_id: str) -> str:
    """The link's token, opened as the notifier opens it to compose the e-mail."""
    invitation = (await invitation_event(stack, user_id)).data
    sealer = invitation_sealer(stack.settings.invitation_sealing_key)
    return sealer.open(str(invitation.invitation_id), invitation.sealed_token)


async def accept(http: httpx.AsyncClient, token: str, password: str = NEW_PASSWORD) -> Any:
    return await http.post(f"/v1/invitations/{token}/accept", json={"password": password})


async def invited(stack: RulesStack, tenant: Tenant, role: str = "editor") -> tuple[str, str, str]:
    """An invited user's e-mail address, id and link token."""
    address = an_address()
    response = await invite(stack.http, tenant, address, role)
    assert response.status_code == 201, response.text
    user_id = response.json()["id"]
    return address, user_id, await token_of(stack, user_id)


async def joined(stack: RulesStack, tenant: Tenant, role: str = "editor") -> tuple[str, str]:
    """A user who accepted an invitation: its id and bearer headers."""
    address, user_id, token = await invited(stack, tenant, role)
    assert (await accept(stack.http, token)).status_code == 200
    return user_id, bearer(await login(stack.http, address, NEW_PASSWORD))


async def seeded(stack: RulesStack, tenant: Tenant, role: str) -> tuple[str, dict[str, str]]:
    """A user of ``role`` in the tenant: its id and bearer headers."""
    address = await stack.seeder.user(tenant.org_id, role)
    token = await login(stack.http, address)
    return jwt.decode(token, options={"verify_signature": False})["sub"], bearer(token)


async def team(http: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, dict[str, Any]]:
    response = await http.get("/v1/users", headers=headers)
    assert response.status_code == 200, response.text
    return {user["email"]: user for user in response.json()["items"]}


async def user_events(stack: RulesStack, user_id: str) -> list[UserLifecycleEvent]:
    rows = await stack.runtime.pool.fetch(
        "SELECT payload FROM outbox WHERE topic = $1 AND key = $2 ORDER BY id",
        USERS_LIFECYCLE,
        user_id,
    )
    return [UserLifecycleEvent.model_validate_json(row["payload"]) for row in rows]


async def rules_database_text(stack: RulesStack) -> str:
    """Everything the rules database holds about invitations, as text."""
    parts = []
    for query in (
        "SELECT token_hash::text FROM invitations",
        "SELECT payload::text FROM outbox",
        "SELECT details::text FROM audit_log",
        "SELECT row_to_json(users)::text FROM users",
    ):
        parts += [str(value) for value in await stack.runtime.pool.fetch(query)]
    return "\n".join(parts)


class CookieConsole:
    """A browser signed in to the console: its cookie jar and CSRF token."""

    def __init__(self, stack: RulesStack) -> None:
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=stack.app), base_url=RULES_URL
        )
        self.csrf = ""

    async def sign_in(self, address: str, password: str = PASSWORD) -> None:
        response = await self.http.post(
            "/v1/auth/session", json={"email": address, "password": password}
        )
        assert response.status_code == 200, response.text
        self.csrf = response.json()["csrfToken"]


@pytest.fixture
async def cookie_console(stack: RulesStack) -> AsyncIterator[CookieConsole]:
    console = CookieConsole(stack)
    yield console
    await console.http.aclose()


# --- reading the team ---------------------------------------------------------------------


class TestTheTeamList:
    @pytest.mark.parametrize("role", ["viewer", "editor", "admin"])
    async def test_every_role_reads_the_team_with_statuses(
        self, stack: RulesStack, tenant: Tenant, role: str
    ) -> None:
        address, _, _ = await invited(stack, tenant)
        _, headers = await seeded(stack, tenant, role)

        members = await team(stack.http, headers)

        assert members[address]["status"] == "invited"
        assert members[address]["invitationExpiresAt"] is not None
        active = [user for user in members.values() if user["status"] == "active"]
        assert all(user["lastSignInAt"] is not None for user in active)
        assert {user["role"] for user in active} >= {"admin", role}

    async def test_lists_only_the_organisations_own_users(
        self, stack: RulesStack, tenant: Tenant
    ) -> None:
        other = await new_tenant(stack.http, stack.seeder)
        address, _, _ = await invited(stack, other)

        assert address not in await team(stack.http, tenant.headers)


# --- inviting -----------------------------------------------------------------------------


class TestInviting:
    async def test_an_admin_invites_and_the_invitee_is_listed_as_invited(
        self, stack: RulesStack, tenant: Tenant
    ) -> None:
        address = an_address()

        response = await invite(stack.http, tenant, address, "viewer")

        assert response.status_code == 201, response.text
        assert response.json()["status"] == "invited"
        assert response.json()["role"] == "viewer"
        event = await invitation_event(stack, response.json()["id"])
        assert event.data.recipient == address
        assert event.data.accept_url_prefix == f"{RULES_URL}/console/invitations/"

    @pytest.mark.parametrize("role", ["viewer", "editor"])
    async def test_only_an_admin_may_invite(
        self, stack: RulesStack, tenant: Tenant, role: str
    ) -> None:
        _, headers = await seeded(stack, tenant, role)

        response = await stack.http.post(
            "/v1/users", json={"email": an_address(), "role": "viewer"}, headers=headers
        )

        assert response.status_code == 403
        assert response.json()["code"] == "ADMIN_ROLE_REQUIRED"

    async def test_inviting_a_member_is_a_conflict_of_its_own(
        self, stack: RulesStack, tenant: Tenant
    ) -> None:
        address = await stack.seeder.user(tenant.org_id, "viewer")

        response = await invite(stack.http, tenant, address.upper())

        assert response.status_code == 409
        assert response.json()["code"] == "ALREADY_A_MEMBER"

    async def test_inviting_another_organisations_user_is_refused(
        self, stack: RulesStack, tenant: Tenant
    ) -> None:
        other = await new_tenant(stack.http, stack.seeder)
        address = await stack.seeder.user(other.org_id, "viewer")

        response = await invite(stack.http, tenant, address)

        assert response.status_code == 409
        assert response.json()["code"] == "EMAIL_TAKEN"

    async def test_inviting_again_replaces_the_link(
        self, stack: RulesStack, tenant: Tenant
    ) -> None:
        address, user_id, first = await invited(stack, tenant)
        assert (await invite(stack.http, tenant, address, "admin")).status_code == 201
        second = await token_of(stack, user_id)

        assert (await accept(stack.http, first)).status_code == 404
        accepted = await accept(stack.http, second)
        assert accepted.status_code == 200
        assert accepted.json()["role"] == "admin"

    async def test_a_change_through_the_cookie_needs_the_csrf_token(
        self, stack: RulesStack, tenant: Tenant, cookie_console: CookieConsole
    ) -> None:
        admin = await stack.seeder.user(tenant.org_id, "admin")
        await cookie_console.sign_in(admin)
        body = {"email": an_address(), "role": "viewer"}

        refused = await cookie_console.http.post("/v1/users", json=body)
        allowed = await cookie_console.http.post(
            "/v1/users", json=body, headers={"X-CSRF-Token": cookie_console.csrf}
        )

        assert refused.status_code == 403
        assert refused.json()["code"] == "CSRF_TOKEN_INVALID"
        assert allowed.status_code == 201

    async def test_the_invitation_is_audited_without_its_token(
        self, stack: RulesStack, tenant: Tenant
    ) -> None:
        address, user_id, token = await invited(stack, tenant)

        audit = (await stack.http.get("/v1/audit", headers=tenant.headers)).json()["items"]

        [line] = [line for line in audit if line["action"] == "user.invited"]
        assert line["subjectId"] == user_id
        assert line["details"]["email"] == address
        assert token not in str(line)


# --- accepting ----------------------------------------------------------------------------


class TestAccepting:
    async def test_the_invitee_sets_a_password_and_signs_in_as_an_active_user(
        self, stack: RulesStack, tenant: Tenant
    ) -> None:
        address, user_id, token = await invited(stack, tenant, "viewer")

        response = await accept(stack.http, token)

        assert response.status_code == 200, response.text
        assert response.json() == {"id": user_id, "email": address, "role": "viewer"}
        await login(stack.http, address, NEW_PASSWORD)
        assert (await team(stack.http, tenant.headers))[address]["status"] == "active"
        [event] = await user_events(stack, user_id)
        assert (event.type, event.data.role) == ("user.activated", "viewer")

    async def test_an_invited_user_cannot_sign_in_before_accepting(
        self, stack: RulesStack, tenant: Tenant
    ) -> None:
        address, _, _ = await invited(stack, tenant)

        response = await stack.http.post(
            "/v1/auth/login", json={"email": address, "password": NEW_PASSWORD}
        )

        assert response.status_code == 401

    async def test_the_link_works_once(self, stack: RulesStack, tenant: Tenant) -> None:
        _, _, token = await invited(stack, tenant)
        assert (await accept(stack.http, token)).status_code == 200

        again = await accept(stack.http, token, "another passphrase")

        assert again.status_code == 404
        assert again.json()["code"] == "INVITATION_INVALID"

    async def test_an_expired_link_is_refused_like_an_unknown_one(
        self, stack: RulesStack, tenant: Tenant
    ) -> None:
        _, user_id, token = await invited(stack, tenant)
        await stack.runtime.pool.execute(
            "UPDATE invitations SET expires_at = now() - interval '1 second' WHERE user_id = $1",
            user_id,
        )

        expired = await accept(stack.http, token)
        unknown = await accept(stack.http, "x" * 43)

        assert expired.status_code == unknown.status_code == 404
        assert expired.json()["code"] == unknown.json()["code"] == "INVITATION_INVALID"
        assert expired.json()["detail"] == unknown.json()["detail"]

    async def test_the_link_expires_after_the_configured_lifetime(
        self, stack: RulesStack, tenant: Tenant
    ) -> None:
        _, user_id, _ = await invited(stack, tenant)

        lifetime = await stack.runtime.pool.fetchval(
            "SELECT expires_at - created_at FROM invitations WHERE user_id = $1", user_id
        )

        assert lifetime == stack.settings.invitation_lifetime

    async def test_a_weak_password_is_refused_and_the_link_still_works(
        self, stack: RulesStack, tenant: Tenant
    ) -> None:
        _, _, token = await invited(stack, tenant)

        weak = await accept(stack.http, token, "short")

        assert weak.status_code == 400
        assert weak.json()["code"] == "WEAK_PASSWORD"
        assert (await accept(stack.http, token)).status_code == 200

    async def test_the_token_is_never_in_clear_in_the_database_or_the_logs(
        self, stack: RulesStack, tenant: Tenant
    ) -> None:
        with capture_logs() as logs:
            _, _, token = await invited(stack, tenant)
            assert (await stack.http.get(f"/console/invitations/{token}")).status_code == 200
            assert (await accept(stack.http, token, "short")).status_code == 400
            assert (await accept(stack.http, token)).status_code == 200
            assert (await accept(stack.http, token)).status_code == 404

        assert token not in await rules_database_text(stack)
        assert token not in str(logs)


# --- roles --------------------------------------------------------------------------------


class TestRoles:
    async def test_an_admin_changes_a_role_and_it_counts_at_once(
        self, stack: RulesStack, tenant: Tenant
    ) -> None:
        user_id, headers = await joined(stack, tenant, "editor")

        response = await stack.http.patch(
            f"/v1/users/{user_id}", json={"role": "viewer"}, headers=tenant.headers
        )

        assert response.status_code == 200, response.text
        assert response.json()["role"] == "viewer"
        refused = await stack.http.post(
            "/v1/members/m-1/block", json={"environment": "staging"}, headers=headers
        )
        assert refused.json()["code"] == "READ_ONLY_ROLE"
        assert [event.type for event in await user_events(stack, user_id)][-1] == (
            "user.role_changed"
        )

    async def test_a_demoted_admin_is_refused_admin_actions_at_once(
        self, stack: RulesStack, tenant: Tenant
    ) -> None:
        user_id, headers = await joined(stack, tenant, "admin")
        demoted = await stack.http.patch(
            f"/v1/users/{user_id}", json={"role": "editor"}, headers=tenant.headers
        )
        assert demoted.status_code == 200

        # The token still says admin; the database says otherwise.
        response = await stack.http.post(
            "/v1/users", json={"email": an_address(), "role": "viewer"}, headers=headers
        )

        assert response.status_code == 403
        assert response.json()["code"] == "ADMIN_ROLE_REQUIRED"

    @pytest.mark.parametrize("role", ["viewer", "editor"])
    async def test_only_an_admin_changes_roles_or_removes(
        self, stack: RulesStack, tenant: Tenant, role: str
    ) -> None:
        _, headers = await seeded(stack, tenant, role)

        changed = await stack.http.patch(
            f"/v1/users/{tenant.user_id}", json={"role": "viewer"}, headers=headers
        )
        removed = await stack.http.delete(f"/v1/users/{tenant.user_id}", headers=headers)

        assert changed.status_code == removed.status_code == 403

    async def test_another_organisations_user_is_not_found(
        self, stack: RulesStack, tenant: Tenant
    ) -> None:
        other = await new_tenant(stack.http, stack.seeder)

        changed = await stack.http.patch(
            f"/v1/users/{other.user_id}", json={"role": "viewer"}, headers=tenant.headers
        )
        removed = await stack.http.delete(f"/v1/users/{other.user_id}", headers=tenant.headers)

        assert changed.status_code == removed.status_code == 404
        assert changed.json()["code"] == removed.json()["code"] == "USER_NOT_FOUND"
        [admin] = (await team(stack.http, other.headers)).values()
        assert (admin["id"], admin["role"]) == (other.user_id, "admin")

    async def test_the_last_admin_cannot_be_demoted(
        self, stack: RulesStack, tenant: Tenant
    ) -> None:
        response = await stack.http.patch(
            f"/v1/users/{tenant.user_id}", json={"role": "editor"}, headers=tenant.headers
        )

        assert response.status_code == 409
        assert response.json()["code"] == "LAST_ADMIN"

    async def test_the_last_admin_cannot_be_removed(
        self, stack: RulesStack, tenant: Tenant
    ) -> None:
        response = await stack.http.delete(f"/v1/users/{tenant.user_id}", headers=tenant.headers)

        assert response.status_code == 409
        assert response.json()["code"] == "LAST_ADMIN"

    async def test_two_admins_demoting_each_other_at_once_leave_one_admin(
        self, stack: RulesStack, tenant: Tenant
    ) -> None:
        other_id, other_headers = await joined(stack, tenant, "admin")

        answers = await asyncio.gather(
            stack.http.patch(
                f"/v1/users/{other_id}", json={"role": "editor"}, headers=tenant.headers
            ),
            stack.http.patch(
                f"/v1/users/{tenant.user_id}", json={"role": "editor"}, headers=other_headers
            ),
        )

        assert sorted(answer.status_code for answer in answers) in ([200, 403], [200, 409])
        admins = await stack.runtime.pool.fetchval(
            "SELECT count(*) FROM users WHERE org_id = $1 AND role = 'admin'", tenant.org_id
        )
        assert admins == 1


# --- removal ------------------------------------------------------------------------------


class TestRemoval:
    async def test_a_removed_users_bearer_token_is_refused_at_once(
        self, stack: RulesStack, tenant: Tenant
    ) -> None:
        user_id, headers = await joined(stack, tenant, "editor")

        removed = await stack.http.delete(f"/v1/users/{user_id}", headers=tenant.headers)

        assert removed.status_code == 204
        assert (await stack.http.get("/v1/rules", headers=headers)).status_code == 401
        [*_, event] = await user_events(stack, user_id)
        assert event.type == "user.removed"

    async def test_a_removed_users_console_session_ends_at_once(
        self, stack: RulesStack, tenant: Tenant, cookie_console: CookieConsole
    ) -> None:
        address = await stack.seeder.user(tenant.org_id, "editor")
        await cookie_console.sign_in(address)
        user_id = (await cookie_console.http.get("/v1/auth/session")).json()["id"]

        await stack.http.delete(f"/v1/users/{user_id}", headers=tenant.headers)

        assert (await cookie_console.http.get("/v1/rules")).status_code == 401
        assert (await cookie_console.http.get("/v1/auth/session")).status_code == 401

    async def test_removing_an_invited_user_withdraws_the_invitation(
        self, stack: RulesStack, tenant: Tenant
    ) -> None:
        address, user_id, token = await invited(stack, tenant)

        await stack.http.delete(f"/v1/users/{user_id}", headers=tenant.headers)

        assert (await accept(stack.http, token)).status_code == 404
        assert address not in await team(stack.http, tenant.headers)

    async def test_the_removal_is_audited(self, stack: RulesStack, tenant: Tenant) -> None:
        user_id, _ = await joined(stack, tenant, "viewer")

        await stack.http.delete(f"/v1/users/{user_id}", headers=tenant.headers)

        audit = (await stack.http.get("/v1/audit", headers=tenant.headers)).json()["items"]
        assert ("user.removed", user_id) in {(line["action"], line["subjectId"]) for line in audit}


# --- the ledger ---------------------------------------------------------------------------


@asynccontextmanager
async def running_ledger(stack: RulesStack) -> AsyncIterator[httpx.AsyncClient]:
    """The ledger on the rules service's broker and database server, verifying tokens
    with the rules service's own keys, once its users group runs; its HTTP client."""
    settings = LedgerSettings(
        database_url=stack.database_url,
        kafka_bootstrap_servers=stack.bootstrap_servers,
        startup_timeout_seconds=15,
    )
    keys = httpx.AsyncClient(transport=httpx.ASGITransport(app=stack.app))
    ledger = Service(*create_ledger_app(settings, verifier=JwksVerifier(RULES_URL, http=keys)))
    await ledger.runtime.start()
    progress = GroupProgress(stack.settings)
    try:

        async def users_group_runs() -> bool:
            return await progress.is_consuming(LEDGER_USERS_GROUP)

        await eventually(users_group_runs, what="the ledger's users group to run")
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=ledger.app), base_url="http://ledger.test"
        ) as http:
            yield http
    finally:
        await progress.stop()
        await ledger.runtime.stop()
        await keys.aclose()


class TestTheLedger:
    async def test_refuses_a_removed_users_token_as_soon_as_the_removal_is_answered(
        self, stack: RulesStack, tenant: Tenant
    ) -> None:
        user_id, headers = await joined(stack, tenant, "viewer")
        balance = "/v1/members/member-1/balance?environment=staging"
        async with running_ledger(stack) as ledger:
            assert (await ledger.get(balance, headers=headers)).status_code == 200

            await stack.http.delete(f"/v1/users/{user_id}", headers=tenant.headers)

            refused = await ledger.get(balance, headers=headers)
        assert refused.status_code == 401


# --- the notifier -------------------------------------------------------------------------


@pytest.fixture
def mail_sink(tmp_path: Path) -> Iterator[SmtpSink]:
    sink = start_smtp_sink("127.0.0.1", free_port(), tmp_path / "mail")
    yield sink
    sink.stop()


class TestTheInvitationEmail:
    async def test_carries_a_working_link_and_the_notifier_stores_no_token_in_clear(
        self, stack: RulesStack, tenant: Tenant, database_url: str, mail_sink: SmtpSink
    ) -> None:
        address, user_id, token = await invited(stack, tenant)
        event = await invitation_event(stack, user_id)
        settings: NotifierSettings = notifier_settings(database_url, smtp_url=mail_sink.url)
        with capture_logs() as logs:
            async with running_callbacks(settings) as notifier:
                async with notifier.runtime.pool.acquire() as connection, connection.transaction():
                    await queueing.queue_invitation_emails(connection, [event], settings)
                notifier.dispatcher.wake()

                async def sent() -> bool:
                    return bool(list_messages(mail_sink.mail_dir))

                await eventually(sent, what="the invitation e-mail")
                stored = await notifier.runtime.pool.fetch(
                    "SELECT body, row_to_json(deliveries)::text AS row FROM deliveries"
                )

        [path] = list_messages(mail_sink.mail_dir)
        message = email.message_from_bytes(path.read_bytes(), policy=default)
        assert isinstance(message, EmailMessage)
        assert message["To"] == address
        text = message.get_body(preferencelist=("plain",))
        assert text is not None
        assert f"{RULES_URL}/console/invitations/{token}" in str(text.get_content())  # type: ignore[attr-defined]
        assert stored
        assert all(token.encode() not in bytes(row["body"]) for row in stored)
        assert all(token not in row["row"] for row in stored)
        assert token not in str(logs)
        assert (await accept(stack.http, token)).status_code == 200

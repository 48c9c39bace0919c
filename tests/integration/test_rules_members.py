"""Issue 19 on the rules service: a client's `points.expired` callback URL, and business
users blocking and unblocking members, each audited and published through the outbox."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest

from contracts import (
    CLIENTS_LIFECYCLE,
    LEDGER_MEMBERS_GROUP,
    MEMBERS_LIFECYCLE,
    ClientLifecycleEvent,
    MemberLifecycleEvent,
)
from infra.catchup import GroupProgress
from services.ledger.app import create_app as create_ledger_app
from services.ledger.settings import LedgerSettings
from services.rules import clients
from services.rules.records import NotFound
from tests.helpers import RulesStack, Service, Tenant, bearer, eventually, login, new_tenant
from tests.integration.test_ledger_app import TestIssuer


async def published(stack: RulesStack, topic: str, key: str) -> list[bytes]:
    rows = await stack.runtime.pool.fetch(
        "SELECT payload FROM outbox WHERE topic = $1 AND key = $2 ORDER BY id", topic, key
    )
    return [row["payload"] for row in rows]


async def headers_of(stack: RulesStack, tenant: Tenant, role: str) -> dict[str, str]:
    email = await stack.seeder.user(tenant.org_id, role)
    return bearer(await login(stack.http, email))


async def audit_actions(http: httpx.AsyncClient, tenant: Tenant) -> list[dict[str, Any]]:
    response = await http.get("/v1/audit", headers=tenant.headers)
    lines: list[dict[str, Any]] = response.json()["items"]
    return lines


def a_member() -> str:
    return f"member-{uuid.uuid4().hex[:12]}"


async def standing_events(
    stack: RulesStack, tenant: Tenant, member: str
) -> list[MemberLifecycleEvent]:
    key = f"staging:{tenant.org_id}:{member}"
    return [
        MemberLifecycleEvent.model_validate_json(payload)
        for payload in await published(stack, MEMBERS_LIFECYCLE, key)
    ]


def change(http: httpx.AsyncClient, tenant: Tenant, member: str, action: str) -> Any:
    return http.post(
        f"/v1/members/{member}/{action}", json={"environment": "staging"}, headers=tenant.headers
    )


@asynccontextmanager
async def running_ledger(database_url: str, stack: RulesStack) -> AsyncIterator[Service]:
    """The ledger on the rules service's broker, once its staging members group runs."""
    settings = LedgerSettings(
        database_url=database_url,
        kafka_bootstrap_servers=stack.bootstrap_servers,
        startup_timeout_seconds=15,
    )
    ledger = Service(*create_ledger_app(settings, verifier=TestIssuer().verifier()))
    await ledger.runtime.start()
    progress = GroupProgress(stack.settings)
    try:

        async def members_group_runs() -> bool:
            return await progress.is_consuming(f"{LEDGER_MEMBERS_GROUP}.staging")

        await eventually(members_group_runs, what="the ledger's members group to run")
        yield ledger
    finally:
        await progress.stop()
        await ledger.runtime.stop()


async def blocked_at_the_ledger(ledger: Service, member: str) -> bool:
    return bool(
        await ledger.runtime.pool.fetchval(
            "SELECT blocked FROM accounts WHERE kind = 'member' AND owner_id = $1", member
        )
    )


@pytest.fixture
def outside_development(stack: RulesStack) -> Iterator[None]:
    """The rules service as in production: callbacks only to public https addresses."""
    context = stack.app.state.rules
    production = context.settings.model_copy(update={"mode": "production"})
    stack.app.state.rules = dataclasses.replace(context, settings=production)
    try:
        yield
    finally:
        stack.app.state.rules = context


class TestExpiryCallbackUrl:
    async def test_an_admin_sets_it_and_the_client_event_carries_it(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant
    ) -> None:
        client_id = tenant.client.client_id
        url = "http://127.0.0.1:9999/expired"

        response = await http.put(
            f"/v1/clients/{client_id}/expiry-callback", json={"url": url}, headers=tenant.headers
        )

        assert response.status_code == 200, response.text
        event = ClientLifecycleEvent.model_validate_json(
            (await published(stack, CLIENTS_LIFECYCLE, client_id))[-1]
        )
        assert (event.type, event.data.expiry_callback_url) == (
            "client.expiry_callback_changed",
            url,
        )
        listed = (await http.get("/v1/clients", headers=tenant.headers)).json()["items"]
        assert [item["expiryCallbackUrl"] for item in listed] == [url]
        assert (await audit_actions(http, tenant))[0]["action"] == "client.expiry_callback_changed"

    async def test_clearing_it_publishes_the_client_without_it(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant
    ) -> None:
        path = f"/v1/clients/{tenant.client.client_id}/expiry-callback"
        await http.put(path, json={"url": "http://127.0.0.1:9999/x"}, headers=tenant.headers)

        response = await http.put(path, json={"url": None}, headers=tenant.headers)

        assert response.status_code == 200, response.text
        last = (await published(stack, CLIENTS_LIFECYCLE, tenant.client.client_id))[-1]
        assert ClientLifecycleEvent.model_validate_json(last).data.expiry_callback_url is None

    async def test_later_client_events_carry_the_current_url(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant
    ) -> None:
        client_id = tenant.client.client_id
        url = "http://127.0.0.1:9999/expired"
        await http.put(
            f"/v1/clients/{client_id}/expiry-callback", json={"url": url}, headers=tenant.headers
        )

        await stack.seeder.rotate(client_id)

        event = ClientLifecycleEvent.model_validate_json(
            (await published(stack, CLIENTS_LIFECYCLE, client_id))[-1]
        )
        assert (event.type, event.data.expiry_callback_url) == ("client.secret_rotated", url)

    @pytest.mark.usefixtures("outside_development")
    @pytest.mark.parametrize(
        ("url", "reason"),
        [
            ("https://10.0.0.7/expired", "private"),
            ("https://127.0.0.1/expired", "loopback"),
            ("http://93.184.216.34/expired", "https"),
        ],
    )
    async def test_outside_development_only_public_https_is_accepted(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant, url: str, reason: str
    ) -> None:
        response = await http.put(
            f"/v1/clients/{tenant.client.client_id}/expiry-callback",
            json={"url": url},
            headers=tenant.headers,
        )

        assert response.status_code == 400
        assert response.json()["code"] == "INVALID_CALLBACK_URL"
        assert response.json()["detail"].startswith("url ")
        assert reason in response.json()["detail"]
        assert len(await published(stack, CLIENTS_LIFECYCLE, tenant.client.client_id)) == 1

    async def test_the_url_is_checked_before_the_client_is_locked(
        self, stack: RulesStack, tenant: Tenant
    ) -> None:
        client_id = tenant.client.client_id
        lockable_while_checked: list[bool] = []

        async def check(_: str) -> None:
            # A slow name server must not hold up the client's rotation or revocation.
            async with stack.runtime.pool.acquire() as other, other.transaction():
                try:
                    await other.execute(
                        "SELECT FROM api_clients WHERE id = $1 FOR UPDATE NOWAIT", client_id
                    )
                    lockable_while_checked.append(True)
                except asyncpg.LockNotAvailableError:
                    lockable_while_checked.append(False)

        async with stack.runtime.pool.acquire() as connection, connection.transaction():
            await clients.set_expiry_callback_url(
                connection, client_id, "http://127.0.0.1:9999/x", check=check, org_id=tenant.org_id
            )

        assert lockable_while_checked == [True]

    async def test_no_host_is_looked_up_for_another_organisations_client(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant
    ) -> None:
        other = await new_tenant(http, stack.seeder)
        looked_up: list[str] = []

        async def check(url: str) -> None:
            looked_up.append(url)

        async with stack.runtime.pool.acquire() as connection, connection.transaction():
            with pytest.raises(NotFound):
                await clients.set_expiry_callback_url(
                    connection,
                    tenant.client.client_id,
                    "https://internal-host.example/x",
                    check=check,
                    org_id=other.org_id,
                )

        assert looked_up == []

    async def test_an_editor_cannot_set_it(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant
    ) -> None:
        response = await http.put(
            f"/v1/clients/{tenant.client.client_id}/expiry-callback",
            json={"url": "http://127.0.0.1:9999/x"},
            headers=await headers_of(stack, tenant, "editor"),
        )

        assert response.status_code == 403

    async def test_another_organisations_client_is_not_found(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant
    ) -> None:
        other = await new_tenant(http, stack.seeder)

        response = await http.put(
            f"/v1/clients/{tenant.client.client_id}/expiry-callback",
            json={"url": "http://127.0.0.1:9999/x"},
            headers=other.headers,
        )

        assert response.status_code == 404
        assert len(await published(stack, CLIENTS_LIFECYCLE, tenant.client.client_id)) == 1


class TestBlockingMembers:
    async def test_an_editor_blocks_a_member_and_the_block_is_published(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant
    ) -> None:
        member = a_member()

        response = await http.post(
            f"/v1/members/{member}/block",
            json={"environment": "production", "reason": "reported as abused"},
            headers=await headers_of(stack, tenant, "editor"),
        )

        assert response.status_code == 200, response.text
        assert (response.json()["blocked"], response.json()["reason"]) == (
            True,
            "reported as abused",
        )
        key = f"production:{tenant.org_id}:{member}"
        [payload] = await published(stack, MEMBERS_LIFECYCLE, key)
        event = MemberLifecycleEvent.model_validate_json(payload)
        assert event.type == "member.blocked"
        assert (event.data.user_id, event.data.blocked, event.data.reason) == (
            member,
            True,
            "reported as abused",
        )
        assert event.key() == key

    async def test_the_standing_reads_back_and_the_change_is_audited(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        member = a_member()
        await http.post(
            f"/v1/members/{member}/block", json={"environment": "staging"}, headers=tenant.headers
        )

        standing = await http.get(
            f"/v1/members/{member}/standing?environment=staging", headers=tenant.headers
        )
        elsewhere = await http.get(
            f"/v1/members/{member}/standing?environment=production", headers=tenant.headers
        )

        assert standing.status_code == 200, standing.text
        assert (standing.json()["blocked"], standing.json()["changedBy"]) == (True, tenant.user_id)
        assert standing.json()["changedAt"] is not None
        assert elsewhere.json()["blocked"] is False
        line = (await audit_actions(http, tenant))[0]
        assert (line["action"], line["subjectId"]) == ("member.blocked", member)

    async def test_blocking_twice_publishes_once(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant
    ) -> None:
        member = a_member()
        body = {"environment": "staging", "reason": "first"}
        await http.post(f"/v1/members/{member}/block", json=body, headers=tenant.headers)

        again = await http.post(
            f"/v1/members/{member}/block",
            json={"environment": "staging", "reason": "second"},
            headers=tenant.headers,
        )

        assert (again.status_code, again.json()["reason"]) == (200, "first")
        assert (
            len(await published(stack, MEMBERS_LIFECYCLE, f"staging:{tenant.org_id}:{member}")) == 1
        )

    async def test_unblocking_publishes_the_member_unblocked(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant
    ) -> None:
        member = a_member()
        await http.post(
            f"/v1/members/{member}/block", json={"environment": "staging"}, headers=tenant.headers
        )

        response = await http.post(
            f"/v1/members/{member}/unblock", json={"environment": "staging"}, headers=tenant.headers
        )

        assert (response.status_code, response.json()["blocked"]) == (200, False)
        last = (await published(stack, MEMBERS_LIFECYCLE, f"staging:{tenant.org_id}:{member}"))[-1]
        assert MemberLifecycleEvent.model_validate_json(last).type == "member.unblocked"
        blocked = await http.get("/v1/members/blocked?environment=staging", headers=tenant.headers)
        assert blocked.json()["items"] == []

    async def test_the_blocked_list_pages_by_user_id(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        members = sorted(a_member() for _ in range(3))
        for member in members:
            await http.post(
                f"/v1/members/{member}/block",
                json={"environment": "staging"},
                headers=tenant.headers,
            )

        first = await http.get(
            "/v1/members/blocked?environment=staging&limit=2", headers=tenant.headers
        )
        rest = await http.get(
            f"/v1/members/blocked?environment=staging&limit=2&after={first.json()['nextAfter']}",
            headers=tenant.headers,
        )

        assert [item["userId"] for item in first.json()["items"]] == members[:2]
        assert [item["userId"] for item in rest.json()["items"]] == members[2:]
        assert rest.json()["nextAfter"] is None

    async def test_a_viewer_cannot_block(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant
    ) -> None:
        member = a_member()

        response = await http.post(
            f"/v1/members/{member}/block",
            json={"environment": "staging"},
            headers=await headers_of(stack, tenant, "viewer"),
        )

        assert response.status_code == 403
        assert await published(stack, MEMBERS_LIFECYCLE, f"staging:{tenant.org_id}:{member}") == []

    async def test_another_organisation_neither_sees_nor_changes_the_standing(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant
    ) -> None:
        member = a_member()
        other = await new_tenant(http, stack.seeder)
        await http.post(
            f"/v1/members/{member}/block", json={"environment": "staging"}, headers=tenant.headers
        )

        seen = await http.get(
            f"/v1/members/{member}/standing?environment=staging", headers=other.headers
        )
        listed = await http.get("/v1/members/blocked?environment=staging", headers=other.headers)
        await http.post(
            f"/v1/members/{member}/unblock", json={"environment": "staging"}, headers=other.headers
        )

        assert seen.json()["blocked"] is False
        assert listed.json()["items"] == []
        mine = await http.get(
            f"/v1/members/{member}/standing?environment=staging", headers=tenant.headers
        )
        assert mine.json()["blocked"] is True

    @pytest.mark.parametrize(
        "user_id",
        ["nul%00member", "tab%09member", "line%0Abreak", "x" * 129, "-leading-dash", "caf%C3%A9"],
    )
    async def test_hostile_user_ids_are_refused(
        self, http: httpx.AsyncClient, tenant: Tenant, user_id: str
    ) -> None:
        block = await http.post(
            f"/v1/members/{user_id}/block", json={"environment": "staging"}, headers=tenant.headers
        )
        read = await http.get(
            f"/v1/members/{user_id}/standing?environment=staging", headers=tenant.headers
        )

        assert (block.status_code, read.status_code) == (400, 400)
        assert "userId" in block.text

    async def test_a_reason_too_long_is_refused(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        response = await http.post(
            f"/v1/members/{a_member()}/block",
            json={"environment": "staging", "reason": "x" * 501},
            headers=tenant.headers,
        )

        assert response.status_code == 400
        assert "reason" in response.text


class TestConcurrentChanges:
    async def test_concurrent_blocks_of_a_member_publish_and_audit_one_block(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant
    ) -> None:
        member = a_member()

        responses = await asyncio.gather(*(change(http, tenant, member, "block") for _ in range(6)))

        assert [response.status_code for response in responses] == [200] * 6
        assert all(response.json()["blocked"] for response in responses)
        assert [event.type for event in await standing_events(stack, tenant, member)] == [
            "member.blocked"
        ]
        lines = [line for line in await audit_actions(http, tenant) if line["subjectId"] == member]
        assert [line["action"] for line in lines] == ["member.blocked"]

    async def test_racing_blocks_and_unblocks_publish_changes_in_the_order_of_their_time(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant
    ) -> None:
        member = a_member()

        for _ in range(5):
            await asyncio.gather(
                *(change(http, tenant, member, action) for action in ["block", "unblock"] * 3)
            )

        events = await standing_events(stack, tenant, member)
        times = [event.data.changed_at for event in events]
        assert times == sorted(times)
        assert len(set(times)) == len(times)
        assert all(
            earlier.data.blocked != later.data.blocked
            for earlier, later in itertools.pairwise(events)
        )
        final = await http.get(
            f"/v1/members/{member}/standing?environment=staging", headers=tenant.headers
        )
        assert final.json()["blocked"] == events[-1].data.blocked


class TestAnsweredOnceTheLedgerHasIt:
    async def test_a_block_and_an_unblock_are_answered_once_the_ledger_applies_them(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant, database_url: str
    ) -> None:
        member = a_member()
        async with running_ledger(database_url, stack) as ledger:
            blocked = await change(http, tenant, member, "block")
            at_the_ledger_once_blocked = await blocked_at_the_ledger(ledger, member)
            unblocked = await change(http, tenant, member, "unblock")
            at_the_ledger_once_unblocked = await blocked_at_the_ledger(ledger, member)

        assert (blocked.status_code, unblocked.status_code) == (200, 200)
        assert (at_the_ledger_once_blocked, at_the_ledger_once_unblocked) == (True, False)

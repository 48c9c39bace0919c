"""Issue 19 on the rules service: a client's `points.expired` callback URL, and business
users blocking and unblocking members, each audited and published through the outbox."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from contracts import (
    CLIENTS_LIFECYCLE,
    MEMBERS_LIFECYCLE,
    ClientLifecycleEvent,
    MemberLifecycleEvent,
)
from tests.helpers import RulesStack, Tenant, bearer, login, new_tenant


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

"""The rules service's console workflows over HTTP: activation checks, sharing, promotion,
the audit trail, login throttling and signing-key rotation.

One rules service runs for the whole module against a real PostgreSQL and a real
broker; every test seeds an organisation of its own, and tests that count failed
logins use a client IP of their own.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from contracts import NOTIFICATIONS_REQUESTED, RULES_LIFECYCLE, ShareEmailRequestedEvent
from infra.errors import StartupError
from infra.tokens import API_AUDIENCE, JWKS_PATH, JwksVerifier
from services.rules import accounts, repository
from services.rules.app import create_app as create_rules_app
from services.rules.key_vault import KeyVault
from services.rules.tokens import TokenIssuer, rotate_signing_key
from tests.helpers import (
    PASSWORD,
    RULES_URL,
    Client,
    RulesStack,
    Tenant,
    asgi_client,
    bearer,
    client_token,
    login,
    request_token,
    rule_body,
    rules_transaction,
)


async def create_rule(http: httpx.AsyncClient, tenant: Tenant, **overrides: Any) -> dict[str, Any]:
    body = rule_body(**{"authorizedClientIds": [tenant.client.client_id], **overrides})
    response = await http.post("/v1/rules", json=body, headers=tenant.headers)
    assert response.status_code == 201, response.text
    rule: dict[str, Any] = response.json()
    return rule


async def active_rule(http: httpx.AsyncClient, tenant: Tenant, **overrides: Any) -> dict[str, Any]:
    rule = await create_rule(http, tenant, **overrides)
    response = await http.post(f"/v1/rules/{rule['id']}/activate", headers=tenant.headers)
    assert response.status_code == 200, response.text
    activated: dict[str, Any] = response.json()
    return activated


async def get_rule(http: httpx.AsyncClient, tenant: Tenant, rule_id: str) -> dict[str, Any]:
    response = await http.get(f"/v1/rules/{rule_id}", headers=tenant.headers)
    assert response.status_code == 200, response.text
    rule: dict[str, Any] = response.json()
    return rule


async def audit_lines(
    http: httpx.AsyncClient, tenant: Tenant, **params: Any
) -> list[dict[str, Any]]:
    response = await http.get("/v1/audit", params=params, headers=tenant.headers)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def outbox_payloads(stack: RulesStack, topic: str, key: str) -> list[bytes]:
    rows = await stack.runtime.pool.fetch(
        "SELECT payload FROM outbox WHERE topic = $1 AND key = $2 ORDER BY id", topic, key
    )
    return [row["payload"] for row in rows]


async def viewer_headers(stack: RulesStack, tenant: Tenant) -> dict[str, str]:
    viewer = await stack.seeder.user(tenant.org_id, "viewer")
    return bearer(await login(stack.http, viewer))


class TestActivationChecks:
    async def test_every_reason_a_rule_cannot_be_activated_is_returned_at_once(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant
    ) -> None:
        second = await stack.seeder.client(tenant.org_id, "staging")
        rule = await create_rule(
            http, tenant, authorizedClientIds=[tenant.client.client_id, second.client_id]
        )
        await stack.seeder.revoke(tenant.client.client_id)
        await stack.seeder.revoke(second.client_id)
        async with rules_transaction(stack.database_url) as connection:
            await connection.execute(
                "UPDATE rules SET starts_at = now() - interval '2 days', "
                "ends_at = now() - interval '1 day' WHERE id = $1",
                rule["id"],
            )

        response = await http.post(f"/v1/rules/{rule['id']}/activate", headers=tenant.headers)

        assert response.status_code == 422
        assert response.headers["content-type"].startswith("application/problem+json")
        body = response.json()
        assert body["code"] == "ACTIVATION_BLOCKED"
        named = {(p["field"], p["code"], p.get("clientId")) for p in body["problems"]}
        assert len(body["problems"]) == 3
        assert named == {
            ("authorizedClientIds", "CLIENT_NOT_ACTIVE", second.client_id),
            ("authorizedClientIds", "CLIENT_NOT_ACTIVE", tenant.client.client_id),
            ("endsAt", "END_IN_PAST", None),
        }
        current = await get_rule(http, tenant, rule["id"])
        assert (current["status"], current["version"]) == ("draft", 1)

    async def test_an_api_triggered_rule_without_clients_is_refused_naming_the_field(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        rule = await create_rule(http, tenant, authorizedClientIds=[])

        response = await http.post(f"/v1/rules/{rule['id']}/activate", headers=tenant.headers)

        assert response.status_code == 422
        assert [(p["field"], p["code"]) for p in response.json()["problems"]] == [
            ("authorizedClientIds", "NO_AUTHORIZED_CLIENT")
        ]

    async def test_a_refused_activation_publishes_and_audits_nothing(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant
    ) -> None:
        rule = await create_rule(http, tenant, authorizedClientIds=[])

        await http.post(f"/v1/rules/{rule['id']}/activate", headers=tenant.headers)

        assert len(await outbox_payloads(stack, RULES_LIFECYCLE, rule["id"])) == 1  # created
        actions = [line["action"] for line in await audit_lines(http, tenant, ruleId=rule["id"])]
        assert actions == ["rule.created"]


class TestSharing:
    async def test_a_draft_rule_is_not_shared(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        rule = await create_rule(http, tenant)

        response = await http.get(f"/v1/rules/{rule['id']}/share", headers=tenant.headers)

        assert response.status_code == 409
        assert response.json()["code"] == "RULE_NOT_ACTIVE"

    async def test_a_paused_rule_cannot_be_emailed(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant
    ) -> None:
        rule = await active_rule(http, tenant)
        await http.post(f"/v1/rules/{rule['id']}/pause", headers=tenant.headers)

        response = await http.post(
            f"/v1/rules/{rule['id']}/share/email",
            json={"to": ["dev@partner.example.com"]},
            headers=tenant.headers,
        )

        assert response.status_code == 409
        assert response.json()["code"] == "RULE_NOT_ACTIVE"
        assert await outbox_payloads(stack, NOTIFICATIONS_REQUESTED, rule["id"]) == []

    async def test_emailing_an_active_rule_queues_exactly_its_share_details(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant
    ) -> None:
        rule = await active_rule(http, tenant, name="Coffee stamps")

        response = await http.post(
            f"/v1/rules/{rule['id']}/share/email",
            json={"to": ["dev@partner.example.com", "ops@partner.example.com"]},
            headers=tenant.headers,
        )

        assert response.status_code == 202, response.text
        notification_id = response.json()["notificationId"]
        [payload] = await outbox_payloads(stack, NOTIFICATIONS_REQUESTED, rule["id"])
        event = ShareEmailRequestedEvent.model_validate_json(payload)
        assert str(event.data.notification_id) == notification_id
        assert (event.org_id, event.environment) == (tenant.org_id, "staging")
        assert event.data.model_dump(exclude={"notification_id"}) == {
            "rule_id": rule["id"],
            "rule_name": "Coffee stamps",
            "rule_type": "earn",
            "environment": "staging",
            "url_endpoint": "https://trigger-staging.example.com/v1/points/requests",
            "integration_guide_url": f"{RULES_URL}/docs/integration-guide?environment=staging",
            "recipients": ("dev@partner.example.com", "ops@partner.example.com"),
            "requested_by": tenant.user_id,
        }
        assert tenant.client.client_secret.encode() not in payload

    async def test_the_email_request_is_audited_with_its_recipients(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        rule = await active_rule(http, tenant)

        await http.post(
            f"/v1/rules/{rule['id']}/share/email",
            json={"to": ["dev@partner.example.com"]},
            headers=tenant.headers,
        )

        [line] = await audit_lines(http, tenant, ruleId=rule["id"], actor=tenant.user_id, limit=1)
        assert line["action"] == "rule.shared_by_email"
        assert line["details"]["recipients"] == ["dev@partner.example.com"]

    async def test_an_organisation_sends_to_a_limited_number_of_addresses_a_day(
        self,
        http: httpx.AsyncClient,
        stack: RulesStack,
        tenant: Tenant,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setattr(stack.settings, "share_email_recipients_per_day", 25)
        rule = await active_rule(http, tenant)

        async def send(count: int, batch: int) -> httpx.Response:
            to = [f"dev{batch}-{n}@partner.example.com" for n in range(count)]
            return await http.post(
                f"/v1/rules/{rule['id']}/share/email", json={"to": to}, headers=tenant.headers
            )

        first, second = await send(20, 1), await send(5, 2)
        over = await send(1, 3)

        assert (first.status_code, second.status_code) == (202, 202)
        assert over.status_code == 429
        assert over.json()["code"] == "SHARE_EMAIL_LIMIT"
        assert 0 < int(over.headers["Retry-After"]) <= 86_400
        assert len(await outbox_payloads(stack, NOTIFICATIONS_REQUESTED, rule["id"])) == 2
        other = await stack.seeder.organisation()
        other_headers = bearer(await login(http, other.email))
        other_client = await stack.seeder.client(other.id, "staging")
        elsewhere = await active_rule(http, Tenant(other.id, "", other_headers, other_client))
        unaffected = await http.post(
            f"/v1/rules/{elsewhere['id']}/share/email",
            json={"to": ["dev@partner.example.com"]},
            headers=other_headers,
        )
        assert unaffected.status_code == 202, unaffected.text

    @pytest.mark.parametrize(
        ("to", "field"),
        [
            ([], "to"),
            (["not-an-address"], "to.0"),
            (["dev@partner.example.com", "dev @partner.example.com"], "to.1"),
            ([f"dev{n}@partner.example.com" for n in range(21)], "to"),
        ],
    )
    async def test_bad_recipients_are_refused_naming_the_field(
        self,
        http: httpx.AsyncClient,
        stack: RulesStack,
        tenant: Tenant,
        to: list[str],
        field: str,
    ) -> None:
        rule = await active_rule(http, tenant)

        response = await http.post(
            f"/v1/rules/{rule['id']}/share/email", json={"to": to}, headers=tenant.headers
        )

        assert response.status_code == 400
        assert [error["field"] for error in response.json()["errors"]] == [field]
        assert await outbox_payloads(stack, NOTIFICATIONS_REQUESTED, rule["id"]) == []

    async def test_a_viewer_cannot_send_the_email(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant
    ) -> None:
        rule = await active_rule(http, tenant)

        response = await http.post(
            f"/v1/rules/{rule['id']}/share/email",
            json={"to": ["dev@partner.example.com"]},
            headers=await viewer_headers(stack, tenant),
        )

        assert response.status_code == 403
        assert await outbox_payloads(stack, NOTIFICATIONS_REQUESTED, rule["id"]) == []

    async def test_another_organisation_cannot_email_the_rule(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant
    ) -> None:
        rule = await active_rule(http, tenant)
        intruder = await stack.seeder.organisation("Intruder Inc")

        response = await http.post(
            f"/v1/rules/{rule['id']}/share/email",
            json={"to": ["dev@partner.example.com"]},
            headers=bearer(await login(http, intruder.email)),
        )

        assert response.status_code == 404
        assert await outbox_payloads(stack, NOTIFICATIONS_REQUESTED, rule["id"]) == []


class TestPromotion:
    async def test_a_staging_rule_is_copied_into_a_production_draft_without_clients(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        source = await active_rule(http, tenant)

        response = await http.post(f"/v1/rules/{source['id']}/promote", headers=tenant.headers)

        assert response.status_code == 201, response.text
        promoted = response.json()
        copied = (
            "name",
            "description",
            "type",
            "apiTrigger",
            "capMax",
            "capPerMember",
            "maxAmountPerRequest",
            "startsAt",
            "endsAt",
        )
        assert {field: promoted[field] for field in copied} == {
            field: source[field] for field in copied
        }
        assert promoted["id"] != source["id"]
        assert (promoted["environment"], promoted["status"], promoted["version"]) == (
            "production",
            "draft",
            1,
        )
        assert (promoted["authorizedClientIds"], promoted["promotedFrom"]) == ([], source["id"])
        assert source["promotedFrom"] is None
        assert (await get_rule(http, tenant, source["id"]))["status"] == "active"

    async def test_the_production_draft_is_announced_and_audited(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant
    ) -> None:
        source = await create_rule(http, tenant)

        promoted = (
            await http.post(f"/v1/rules/{source['id']}/promote", headers=tenant.headers)
        ).json()

        [payload] = await outbox_payloads(stack, RULES_LIFECYCLE, promoted["id"])
        assert b'"type":"rule.created"' in payload
        assert b'"environment":"production"' in payload
        [line] = await audit_lines(http, tenant, ruleId=promoted["id"])
        assert (line["action"], line["details"]["promotedFrom"]) == ("rule.promoted", source["id"])

    async def test_the_production_draft_needs_production_clients_before_activation(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant
    ) -> None:
        source = await create_rule(http, tenant)
        promoted = (
            await http.post(f"/v1/rules/{source['id']}/promote", headers=tenant.headers)
        ).json()
        refused = await http.post(f"/v1/rules/{promoted['id']}/activate", headers=tenant.headers)
        production = await stack.seeder.client(tenant.org_id, "production")

        await http.patch(
            f"/v1/rules/{promoted['id']}",
            json={"version": 1, "authorizedClientIds": [production.client_id]},
            headers=tenant.headers,
        )
        accepted = await http.post(f"/v1/rules/{promoted['id']}/activate", headers=tenant.headers)

        assert refused.status_code == 422
        assert accepted.status_code == 200, accepted.text
        assert accepted.json()["status"] == "active"

    async def test_a_production_rule_cannot_be_promoted(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant
    ) -> None:
        production = await stack.seeder.client(tenant.org_id, "production")
        rule = await create_rule(
            http, tenant, environment="production", authorizedClientIds=[production.client_id]
        )

        response = await http.post(f"/v1/rules/{rule['id']}/promote", headers=tenant.headers)

        assert response.status_code == 409
        assert response.json()["code"] == "ALREADY_PRODUCTION"
        listed = await http.get("/v1/rules", headers=tenant.headers)
        assert [item["id"] for item in listed.json()["items"]] == [rule["id"]]

    async def test_an_archived_rule_cannot_be_promoted(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        rule = await create_rule(http, tenant)
        await http.post(f"/v1/rules/{rule['id']}/archive", headers=tenant.headers)

        response = await http.post(f"/v1/rules/{rule['id']}/promote", headers=tenant.headers)

        assert response.status_code == 409
        assert response.json()["code"] == "RULE_ARCHIVED"

    async def test_a_viewer_cannot_promote(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant
    ) -> None:
        rule = await create_rule(http, tenant)

        response = await http.post(
            f"/v1/rules/{rule['id']}/promote", headers=await viewer_headers(stack, tenant)
        )

        assert response.status_code == 403


class TestAuditTrail:
    async def test_an_update_records_the_changed_fields_before_and_after(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        rule = await create_rule(http, tenant)
        new_end = datetime(2031, 1, 1, tzinfo=UTC)

        await http.patch(
            f"/v1/rules/{rule['id']}",
            json={"version": 1, "capMax": 500, "name": rule["name"], "endsAt": new_end.isoformat()},
            headers=tenant.headers,
        )

        [line, _created] = await audit_lines(http, tenant, ruleId=rule["id"])
        before, after = line["details"]["before"], line["details"]["after"]
        assert (line["action"], sorted(before), sorted(after)) == (
            "rule.updated",
            ["capMax", "endsAt"],
            ["capMax", "endsAt"],
        )
        assert (before["capMax"], after["capMax"]) == (10_000, 500)
        assert datetime.fromisoformat(before["endsAt"]) == datetime.fromisoformat(rule["endsAt"])
        assert datetime.fromisoformat(after["endsAt"]) == new_end

    async def test_a_status_change_records_the_status_before_and_after(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        rule = await active_rule(http, tenant)
        await http.post(f"/v1/rules/{rule['id']}/pause", headers=tenant.headers)

        lines = await audit_lines(http, tenant, ruleId=rule["id"])

        assert [(line["details"].get("before"), line["details"].get("after")) for line in lines][
            :2
        ] == [
            ({"status": "active"}, {"status": "paused"}),
            ({"status": "draft"}, {"status": "active"}),
        ]

    async def test_the_log_is_filtered_by_rule_actor_and_time(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant
    ) -> None:
        editor_email = await stack.seeder.user(tenant.org_id, "editor")
        editor_headers = bearer(await login(http, editor_email))
        first = await create_rule(http, tenant)
        second = await create_rule(http, tenant)
        await http.patch(
            f"/v1/rules/{second['id']}",
            json={"version": 1, "name": "Edited"},
            headers=editor_headers,
        )
        everything = await audit_lines(http, tenant)
        last_at = everything[0]["at"]

        by_rule = await audit_lines(http, tenant, ruleId=first["id"])
        by_actor = await audit_lines(http, tenant, actor=tenant.user_id, ruleId=second["id"])
        since_last = await audit_lines(http, tenant, since=last_at)
        until_last = await audit_lines(http, tenant, until=last_at)

        assert [line["subjectId"] for line in by_rule] == [first["id"]]
        assert [line["action"] for line in by_actor] == ["rule.created"]
        assert everything[0]["actorEmail"] == editor_email
        assert [line["id"] for line in since_last] == [everything[0]["id"]]
        assert [line["id"] for line in until_last] == [line["id"] for line in everything[1:]]

    async def test_the_log_is_paged_with_before_and_limit(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        for _ in range(3):
            await create_rule(http, tenant)
        everything = await audit_lines(http, tenant)

        page = await http.get("/v1/audit", params={"limit": 2}, headers=tenant.headers)
        rest = await audit_lines(http, tenant, before=page.json()["nextBefore"])

        assert [line["id"] for line in page.json()["items"] + rest] == [
            line["id"] for line in everything
        ]

    async def test_another_organisations_lines_are_not_listed(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant
    ) -> None:
        rule = await create_rule(http, tenant)
        intruder = await stack.seeder.organisation("Intruder Inc")
        headers = bearer(await login(http, intruder.email))

        response = await http.get("/v1/audit", params={"ruleId": rule["id"]}, headers=headers)

        assert response.json()["items"] == []

    @pytest.mark.parametrize(
        ("params", "field"),
        [
            ({"since": "yesterday"}, "query.since"),
            ({"until": "2026-13-01T00:00:00Z"}, "query.until"),
            ({"since": "2026-01-01T00:00:00"}, "query.since"),  # no time zone
            ({"before": "abc"}, "query.before"),
            ({"limit": "0"}, "query.limit"),
            ({"limit": "1000"}, "query.limit"),
        ],
    )
    async def test_a_bad_filter_is_refused_naming_the_parameter(
        self, http: httpx.AsyncClient, tenant: Tenant, params: dict[str, str], field: str
    ) -> None:
        response = await http.get("/v1/audit", params=params, headers=tenant.headers)

        assert response.status_code == 400
        assert [error["field"] for error in response.json()["errors"]] == [field]

    async def test_until_before_since_is_refused(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        response = await http.get(
            "/v1/audit",
            params={"since": "2026-02-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"},
            headers=tenant.headers,
        )

        assert response.status_code == 400
        assert response.json()["field"] == "until"


@asynccontextmanager
async def from_address(
    stack: RulesStack, address: str | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """The rules API as seen from one client address (by default one no other test uses)."""
    address = address or "10." + ".".join(str(byte) for byte in uuid.uuid4().bytes[:3])
    transport = httpx.ASGITransport(app=stack.app, client=(address, 40000))
    async with httpx.AsyncClient(transport=transport, base_url=RULES_URL) as client:
        yield client


class TestLoginThrottling:
    @pytest.fixture
    async def from_own_ip(self, stack: RulesStack) -> AsyncIterator[httpx.AsyncClient]:
        async with from_address(stack) as client:
            yield client

    @staticmethod
    async def attempt(http: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
        return await http.post("/v1/auth/login", json={"email": email, "password": password})

    async def test_the_sixth_attempt_within_the_window_is_refused_even_with_the_right_password(
        self, from_own_ip: httpx.AsyncClient, stack: RulesStack
    ) -> None:
        organisation = await stack.seeder.organisation()
        failures = [await self.attempt(from_own_ip, organisation.email, "wrong") for _ in range(5)]

        response = await self.attempt(from_own_ip, organisation.email, PASSWORD)

        assert [failure.status_code for failure in failures] == [401] * 5
        assert response.status_code == 429
        assert response.json()["code"] == "TOO_MANY_LOGIN_ATTEMPTS"
        assert 0 < int(response.headers["Retry-After"]) <= 900
        assert "accessToken" not in response.json()

    async def test_strangers_guessing_a_known_email_never_lock_its_user_out(
        self, stack: RulesStack, from_own_ip: httpx.AsyncClient
    ) -> None:
        organisation = await stack.seeder.organisation()
        for n in range(3):
            async with from_address(stack, f"192.0.2.{n + 1}") as stranger:
                for _ in range(8):
                    await self.attempt(stranger, organisation.email.upper(), "wrong")

        response = await self.attempt(from_own_ip, organisation.email, PASSWORD)

        assert response.status_code == 200, response.text

    async def test_guesses_sent_at_once_get_the_free_attempts_and_no_more(
        self, from_own_ip: httpx.AsyncClient, stack: RulesStack
    ) -> None:
        organisation = await stack.seeder.organisation()

        responses = await asyncio.gather(
            *(self.attempt(from_own_ip, organisation.email, "wrong") for _ in range(20))
        )

        statuses = sorted(response.status_code for response in responses)
        assert statuses == [401] * 5 + [429] * 15

    async def test_each_attempt_past_the_free_ones_waits_twice_as_long(
        self, from_own_ip: httpx.AsyncClient, stack: RulesStack
    ) -> None:
        organisation = await stack.seeder.organisation()
        for _ in range(5):
            await self.attempt(from_own_ip, organisation.email, "wrong")
        first_wait = await self.attempt(from_own_ip, organisation.email, "wrong")
        await asyncio.sleep(int(first_wait.headers["Retry-After"]))
        after_waiting = await self.attempt(from_own_ip, organisation.email, "wrong")
        second_wait = await self.attempt(from_own_ip, organisation.email, PASSWORD)

        assert first_wait.status_code == 429
        assert first_wait.headers["Retry-After"] == "1"
        assert after_waiting.status_code == 401
        assert second_wait.status_code == 429
        assert second_wait.headers["Retry-After"] == "2"

    async def test_a_success_resets_the_count(
        self, from_own_ip: httpx.AsyncClient, stack: RulesStack
    ) -> None:
        organisation = await stack.seeder.organisation()
        for _ in range(4):
            await self.attempt(from_own_ip, organisation.email, "wrong")
        assert (await self.attempt(from_own_ip, organisation.email, PASSWORD)).status_code == 200

        responses = [await self.attempt(from_own_ip, organisation.email, "wrong") for _ in range(5)]

        assert [response.status_code for response in responses] == [401] * 5

    async def test_logins_work_again_once_the_window_has_passed(
        self, from_own_ip: httpx.AsyncClient, stack: RulesStack
    ) -> None:
        organisation = await stack.seeder.organisation()
        for _ in range(6):
            await self.attempt(from_own_ip, organisation.email, "wrong")
        await stack.runtime.pool.execute(
            "UPDATE sign_in_attempts SET last_attempt_at = now() - interval '16 minutes'"
            " WHERE key LIKE '% ' || $1",
            organisation.email.lower(),
        )

        response = await self.attempt(from_own_ip, organisation.email, PASSWORD)

        assert response.status_code == 200, response.text

    async def test_one_address_guessing_many_emails_is_slowed_down(
        self, from_own_ip: httpx.AsyncClient, stack: RulesStack
    ) -> None:
        organisation = await stack.seeder.organisation()
        limit = stack.seeder.settings.login_max_attempts_per_ip
        for n in range(limit):
            await self.attempt(from_own_ip, f"guess{n}@example.com", "wrong")

        response = await self.attempt(from_own_ip, organisation.email, PASSWORD)
        elsewhere = await self.attempt(stack.http, organisation.email, PASSWORD)

        assert response.status_code == 429
        assert elsewhere.status_code == 200


class TestTokenThrottling:
    async def test_a_flood_of_wrong_secrets_is_slowed_down_and_the_client_still_gets_tokens(
        self, stack: RulesStack, tenant: Tenant
    ) -> None:
        wrong = Client(tenant.client.client_id, "not-the-secret")
        async with from_address(stack) as attacker:
            flood = await asyncio.gather(*(request_token(attacker, wrong) for _ in range(40)))
            jwks = await attacker.get(JWKS_PATH)
        async with from_address(stack) as partner:
            token = await request_token(partner, tenant.client)

        statuses = sorted(response.status_code for response in flood)
        limit = stack.settings.token_max_attempts_per_client
        assert statuses == [401] * limit + [429] * (40 - limit)
        refused = next(response for response in flood if response.status_code == 429)
        assert refused.json()["error"] == "slow_down"
        assert int(refused.headers["Retry-After"]) >= 1
        assert jwks.status_code == 200
        assert token.status_code == 200, token.text

    async def test_an_address_told_to_wait_is_refused_without_a_database_round_trip(
        self, stack: RulesStack, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        limit = 4
        monkeypatch.setattr(stack.settings, "token_max_attempts_per_ip", limit)
        context = stack.app.state.rules
        acquired: list[str] = []

        def counting_pool() -> Any:
            acquired.append("pool")
            return stack.runtime.pool

        async with from_address(stack) as scanner:
            for n in range(limit + 1):  # the last one is refused, and its address noted
                await request_token(scanner, Client(f"cli_scan{n}", "wrong"))
            monkeypatch.setattr(type(context), "pool", property(lambda _: counting_pool()))
            flood = await asyncio.gather(
                *(request_token(scanner, Client(f"cli_more{n}", "wrong")) for n in range(30))
            )
            pool_used_by_the_flood = len(acquired)
            others = await request_token(stack.http, tenant.client)

        assert {response.status_code for response in flood} == {429}
        assert {response.json()["error"] for response in flood} == {"slow_down"}
        assert pool_used_by_the_flood == 0
        assert others.status_code == 200, others.text
        assert acquired  # the other address's request went to the database

    async def test_one_address_trying_many_client_ids_is_slowed_down(
        self, stack: RulesStack, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        limit = 4  # of the default 100, which would take long to spend on argon2 checks
        monkeypatch.setattr(stack.settings, "token_max_attempts_per_ip", limit)
        async with from_address(stack) as scanner:
            for n in range(limit):
                await request_token(scanner, Client(f"cli_guess{n}", "wrong"))
            refused = await request_token(scanner, tenant.client)

        assert refused.status_code == 429

    async def test_successes_from_a_shared_address_never_use_up_its_allowance(
        self, stack: RulesStack, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        limit = 4
        monkeypatch.setattr(stack.settings, "token_max_attempts_per_ip", limit)
        async with from_address(stack) as office:
            answers = [await request_token(office, tenant.client) for _ in range(limit + 5)]

        assert {answer.status_code for answer in answers} == {200}


class TestTokensForOneUse:
    async def test_the_consoles_ledger_token_reads_the_ledger_but_not_the_rules_api(
        self, stack: RulesStack, tenant: Tenant
    ) -> None:
        issuer = TokenIssuer.for_settings(stack.settings)
        async with rules_transaction(stack.database_url) as connection:
            user = await accounts.require_user(connection, tenant.org_id, tenant.user_id)
            token = await issuer.user_token(connection, user, 60, audiences=(API_AUDIENCE,))
        verifier = JwksVerifier(RULES_URL, http=asgi_client(stack.app, RULES_URL))

        principal = await verifier.verify(token)  # as the ledger checks it
        refused = await stack.http.get("/v1/rules", headers=bearer(token))

        assert principal.kind == "user" and principal.org_id == tenant.org_id
        assert refused.status_code == 401

    async def test_the_rules_api_refuses_a_token_without_an_expiry(
        self, stack: RulesStack, tenant: Tenant
    ) -> None:
        claims = jwt.decode(
            tenant.headers["Authorization"].removeprefix("Bearer "),
            options={"verify_signature": False},
        )
        del claims["exp"]
        async with rules_transaction(stack.database_url) as connection:
            key = await repository.newest_signing_key(connection)
        private = KeyVault(stack.settings.signing_key_encryption_key).open(
            key["kid"], key["sealed_private_key"]
        )
        forever = jwt.encode(claims, private, algorithm="ES256", headers={"kid": key["kid"]})

        assert (await stack.http.get("/v1/rules", headers=tenant.headers)).status_code == 200
        assert (await stack.http.get("/v1/rules", headers=bearer(forever))).status_code == 401


class TestSigningKeyRotation:
    async def test_a_token_signed_before_rotation_still_verifies_and_new_tokens_use_the_new_key(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant
    ) -> None:
        before = await client_token(http, tenant.client)

        async with rules_transaction(stack.database_url) as connection:
            kid = await rotate_signing_key(connection, TokenIssuer.for_settings(stack.settings))
        after = await client_token(http, tenant.client)

        jwks = (await http.get(JWKS_PATH)).json()
        keys = {key["kid"]: jwt.PyJWK(key).key for key in jwks["keys"]}
        for token in (before, after):
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(
                token, keys[header["kid"]], algorithms=["ES256"], audience=API_AUDIENCE
            )
            assert claims["client_id"] == tenant.client.client_id
        assert jwt.get_unverified_header(after)["kid"] == kid
        assert jwt.get_unverified_header(before)["kid"] != kid

    async def test_keys_before_the_previous_one_stop_signing_but_stay_published(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant
    ) -> None:
        oldest = jwt.get_unverified_header(await client_token(http, tenant.client))["kid"]
        async with rules_transaction(stack.database_url) as connection:
            previous = await rotate_signing_key(
                connection, TokenIssuer.for_settings(stack.settings)
            )
            newest = await rotate_signing_key(connection, TokenIssuer.for_settings(stack.settings))

        rows = await stack.runtime.pool.fetch(
            "SELECT kid, retired_at FROM signing_keys WHERE kid = ANY($1::text[])",
            [oldest, previous, newest],
        )
        published = {key["kid"] for key in (await http.get(JWKS_PATH)).json()["keys"]}

        retired = {row["kid"] for row in rows if row["retired_at"] is not None}
        assert retired == {oldest}
        assert {oldest, previous, newest} <= published
        token = await client_token(http, tenant.client)
        assert jwt.get_unverified_header(token)["kid"] == newest

    async def test_business_users_stay_logged_in_across_a_rotation(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant
    ) -> None:
        async with rules_transaction(stack.database_url) as connection:
            await rotate_signing_key(connection, TokenIssuer.for_settings(stack.settings))

        response = await http.get("/v1/rules", headers=tenant.headers)

        assert response.status_code == 200


class TestSigningKeysAtRest:
    async def test_the_database_holds_the_signing_key_only_sealed(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant
    ) -> None:
        token = await client_token(http, tenant.client)
        kid = jwt.get_unverified_header(token)["kid"]

        stored = await stack.runtime.pool.fetchval(
            "SELECT sealed_private_key FROM signing_keys WHERE kid = $1", kid
        )

        assert "PRIVATE KEY" not in stored
        with pytest.raises(StartupError):
            KeyVault("a copy of the database without the platform key").open(kid, stored)
        opened = KeyVault(stack.settings.signing_key_encryption_key).open(kid, stored)
        jwks = (await http.get(JWKS_PATH)).json()
        published = next(key for key in jwks["keys"] if key["kid"] == kid)
        assert jwt.PyJWK(published).key.public_numbers() == opened.public_key().public_numbers()

    async def test_a_key_an_older_release_stored_in_the_clear_is_sealed_at_start_and_still_signs(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant
    ) -> None:
        kid = await insert_plain_signing_key(stack)

        async with stack.runtime.pool.acquire() as connection, connection.transaction():
            await TokenIssuer.for_settings(stack.settings).ensure_signing_key(connection)
        token = await client_token(http, tenant.client)

        stored = await stack.runtime.pool.fetchval(
            "SELECT sealed_private_key FROM signing_keys WHERE kid = $1", kid
        )
        assert "PRIVATE KEY" not in stored
        assert jwt.get_unverified_header(token)["kid"] == kid
        jwks = (await http.get(JWKS_PATH)).json()
        published = next(key for key in jwks["keys"] if key["kid"] == kid)
        claims = jwt.decode(
            token, jwt.PyJWK(published).key, algorithms=["ES256"], audience=API_AUDIENCE
        )
        assert claims["client_id"] == tenant.client.client_id

    async def test_a_service_given_another_encryption_key_refuses_to_start_and_says_why(
        self, stack: RulesStack
    ) -> None:
        settings = stack.settings.model_copy(
            update={"signing_key_encryption_key": "not the key the signing keys were sealed with"}
        )
        _, runtime = create_rules_app(settings)
        try:
            with pytest.raises(StartupError, match="RULES_SIGNING_KEY_ENCRYPTION_KEY"):
                await runtime.start()
        finally:
            await runtime.stop()


async def insert_plain_signing_key(stack: RulesStack) -> str:
    """Write a signing key the way releases before sealing did: PEM in the clear, newest."""
    private_key = ec.generate_private_key(ec.SECP256R1())
    kid = uuid.uuid4().hex
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_jwk = jwt.algorithms.ECAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    public_jwk.update({"kid": kid, "use": "sig", "alg": "ES256"})
    await stack.runtime.pool.execute(
        "INSERT INTO signing_keys (kid, sealed_private_key, public_jwk, created_at)"
        " VALUES ($1, $2, $3, clock_timestamp())",
        kid,
        pem,
        public_jwk,
    )
    return kid

"""An earn rule's expiry policy through the rules API (issue 19): what is accepted and
refused, and that the policy travels everywhere the rule does: its lifecycle events,
its production copy and its share information."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from contracts import RULES_LIFECYCLE, RuleLifecycleEvent
from tests.helpers import RulesStack, Tenant, rule_body


async def post_rule(http: httpx.AsyncClient, tenant: Tenant, **overrides: Any) -> httpx.Response:
    body = rule_body(authorizedClientIds=[tenant.client.client_id], **overrides)
    return await http.post("/v1/rules", json=body, headers=tenant.headers)


async def created(http: httpx.AsyncClient, tenant: Tenant, **overrides: Any) -> dict[str, Any]:
    response = await post_rule(http, tenant, **overrides)
    assert response.status_code == 201, response.text
    rule: dict[str, Any] = response.json()
    return rule


async def snapshots(stack: RulesStack, rule_id: str) -> list[RuleLifecycleEvent]:
    rows = await stack.runtime.pool.fetch(
        "SELECT payload FROM outbox WHERE topic = $1 AND key = $2 ORDER BY id",
        RULES_LIFECYCLE,
        rule_id,
    )
    return [RuleLifecycleEvent.model_validate_json(row["payload"]) for row in rows]


def in_days(days: float) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()


class TestExpiryPolicyIsChecked:
    async def test_both_policies_at_once_are_refused(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        response = await post_rule(
            http, tenant, pointsExpireAfterDays=30, pointsExpireAt=in_days(60)
        )

        assert response.status_code == 400
        assert response.json()["code"] == "EXPIRY_POLICY_CONFLICT"

    async def test_a_redeem_rule_with_a_policy_is_refused(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        response = await post_rule(http, tenant, type="redeem", pointsExpireAfterDays=30)

        assert response.status_code == 400
        assert response.json()["code"] == "EXPIRY_ON_REDEEM_RULE"
        assert "earn rule" in response.json()["detail"]

    async def test_a_draft_with_a_policy_cannot_become_a_redeem_rule(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        rule = await created(http, tenant, pointsExpireAfterDays=30)

        response = await http.patch(
            f"/v1/rules/{rule['id']}",
            json={"version": rule["version"], "type": "redeem"},
            headers=tenant.headers,
        )

        assert response.status_code == 400
        assert response.json()["code"] == "EXPIRY_ON_REDEEM_RULE"

    async def test_days_out_of_range_are_refused(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        for days in (0, -1, 36_501, 2**63):
            response = await post_rule(http, tenant, pointsExpireAfterDays=days)

            assert response.status_code == 400, days
            assert "pointsExpireAfterDays" in response.text

    @pytest.mark.parametrize("days", [True, "30", 30.0, "thirty"])
    async def test_days_that_are_not_a_json_integer_are_refused_not_read_as_one(
        self, http: httpx.AsyncClient, tenant: Tenant, days: object
    ) -> None:
        on_create = await post_rule(http, tenant, pointsExpireAfterDays=days)
        rule = await created(http, tenant)
        updated = await http.patch(
            f"/v1/rules/{rule['id']}",
            json={"version": rule["version"], "pointsExpireAfterDays": days},
            headers=tenant.headers,
        )

        for response in (on_create, updated):
            assert response.status_code == 400, response.text
            assert response.json()["code"] == "INVALID_REQUEST"
            [error] = response.json()["errors"]
            assert error["field"] == "pointsExpireAfterDays"
        unchanged = await http.get(f"/v1/rules/{rule['id']}", headers=tenant.headers)
        assert unchanged.json()["pointsExpireAfterDays"] is None

    @pytest.mark.parametrize("instant", [4102444800, "4102444800", 4102444800.0, True])
    async def test_an_instant_that_is_not_an_iso_8601_string_is_refused_not_read_as_seconds(
        self, http: httpx.AsyncClient, tenant: Tenant, instant: object
    ) -> None:
        response = await post_rule(http, tenant, pointsExpireAt=instant)

        assert response.status_code == 400, response.text
        assert response.json()["code"] == "INVALID_REQUEST"
        [error] = response.json()["errors"]
        assert error["field"] == "pointsExpireAt"
        assert "ISO 8601" in error["message"]

    async def test_an_instant_before_the_rule_ends_is_refused(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        response = await post_rule(http, tenant, endsAt=in_days(30), pointsExpireAt=in_days(10))

        assert response.status_code == 400
        assert response.json()["code"] == "EXPIRY_BEFORE_RULE_ENDS"

    async def test_an_instant_without_a_timezone_is_refused(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        response = await post_rule(http, tenant, pointsExpireAt="2099-01-01T00:00:00")

        assert response.status_code == 400
        assert "pointsExpireAt" in response.text

    async def test_a_rule_whose_points_expire_in_the_past_cannot_be_activated(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        rule = await created(
            http,
            tenant,
            startsAt=in_days(-10),
            endsAt=in_days(-5),
            pointsExpireAt=in_days(-1),
        )
        await http.patch(
            f"/v1/rules/{rule['id']}",
            json={"version": rule["version"], "endsAt": None},
            headers=tenant.headers,
        )

        response = await http.post(f"/v1/rules/{rule['id']}/activate", headers=tenant.headers)

        assert response.status_code == 422
        assert [problem["code"] for problem in response.json()["problems"]] == ["EXPIRY_IN_PAST"]
        assert response.json()["problems"][0]["field"] == "pointsExpireAt"

    async def test_an_active_rule_cannot_be_given_a_past_instant(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        rule = await created(http, tenant, endsAt=None, startsAt=in_days(-3))
        activated = await http.post(f"/v1/rules/{rule['id']}/activate", headers=tenant.headers)

        response = await http.patch(
            f"/v1/rules/{rule['id']}",
            json={"version": activated.json()["version"], "pointsExpireAt": in_days(-1)},
            headers=tenant.headers,
        )

        assert response.status_code == 400
        assert response.json()["code"] == "EXPIRY_IN_PAST"


class TestExpiryPolicyTravelsWithTheRule:
    async def test_the_policy_round_trips_and_is_in_the_lifecycle_snapshot(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant
    ) -> None:
        rule = await created(http, tenant, pointsExpireAfterDays=30)

        read = (await http.get(f"/v1/rules/{rule['id']}", headers=tenant.headers)).json()

        assert (read["pointsExpireAfterDays"], read["pointsExpireAt"]) == (30, None)
        [event] = await snapshots(stack, rule["id"])
        assert event.data.points_expire_after_days == 30
        assert event.data.points_expire_at is None

    async def test_setting_an_instant_replaces_the_days_and_is_published(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant
    ) -> None:
        rule = await created(http, tenant, pointsExpireAfterDays=30)
        instant = datetime.now(UTC).replace(microsecond=0) + timedelta(days=90)

        response = await http.patch(
            f"/v1/rules/{rule['id']}",
            json={"version": rule["version"], "pointsExpireAt": instant.isoformat()},
            headers=tenant.headers,
        )

        assert response.status_code == 200, response.text
        assert response.json()["pointsExpireAfterDays"] is None
        assert datetime.fromisoformat(response.json()["pointsExpireAt"]) == instant
        updated = (await snapshots(stack, rule["id"]))[-1]
        assert (updated.type, updated.data.points_expire_at) == ("rule.updated", instant)

    async def test_the_policy_can_be_cleared(self, http: httpx.AsyncClient, tenant: Tenant) -> None:
        rule = await created(http, tenant, pointsExpireAfterDays=30)

        response = await http.patch(
            f"/v1/rules/{rule['id']}",
            json={"version": rule["version"], "pointsExpireAfterDays": None},
            headers=tenant.headers,
        )

        assert response.status_code == 200, response.text
        assert response.json()["pointsExpireAfterDays"] is None

    async def test_promotion_copies_the_policy(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant
    ) -> None:
        rule = await created(http, tenant, pointsExpireAfterDays=45)

        promoted = await http.post(f"/v1/rules/{rule['id']}/promote", headers=tenant.headers)

        assert promoted.status_code == 201, promoted.text
        assert promoted.json()["pointsExpireAfterDays"] == 45
        [event] = await snapshots(stack, promoted.json()["id"])
        assert event.data.points_expire_after_days == 45

    async def test_the_share_information_names_the_policy(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        rule = await created(http, tenant, pointsExpireAfterDays=365)
        await http.post(f"/v1/rules/{rule['id']}/activate", headers=tenant.headers)

        share = (await http.get(f"/v1/rules/{rule['id']}/share", headers=tenant.headers)).json()

        assert (share["pointsExpireAfterDays"], share["pointsExpireAt"]) == (365, None)

"""The rules API refuses, as a 400 naming the field, what PostgreSQL could not store.

Found by the OpenAPI fuzz run (tests/e2e/test_openapi_fuzz.py): each was a 500.
"""

from __future__ import annotations

import httpx
import pytest

from tests.helpers import RulesStack, bearer, login

#: Times Python parses but cannot convert to UTC, which asyncpg does to store a timestamptz.
NO_UTC_TIME = ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"]


@pytest.fixture
async def admin(stack: RulesStack) -> dict[str, str]:
    organisation = await stack.seeder.organisation()
    return bearer(await login(stack.http, organisation.email))


def assert_refused(response: httpx.Response, field: str) -> None:
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "INVALID_REQUEST"
    assert [error["field"] for error in response.json()["errors"]] == [field]


class TestAuditFilters:
    async def test_an_id_past_bigint_is_refused(
        self, stack: RulesStack, admin: dict[str, str]
    ) -> None:
        response = await stack.http.get("/v1/audit", params={"before": 2**63}, headers=admin)

        assert_refused(response, "query.before")

    @pytest.mark.parametrize("when", NO_UTC_TIME)
    @pytest.mark.parametrize("name", ["since", "until"])
    async def test_a_time_with_no_utc_equivalent_is_refused(
        self, stack: RulesStack, admin: dict[str, str], name: str, when: str
    ) -> None:
        response = await stack.http.get("/v1/audit", params={name: when}, headers=admin)

        assert_refused(response, f"query.{name}")


class TestRulePeriod:
    @pytest.mark.parametrize("when", NO_UTC_TIME)
    async def test_a_new_rule_starting_at_a_time_with_no_utc_equivalent_is_refused(
        self, stack: RulesStack, admin: dict[str, str], when: str
    ) -> None:
        body = {"name": "Far", "type": "earn", "environment": "staging", "startsAt": when}

        response = await stack.http.post("/v1/rules", json=body, headers=admin)

        assert_refused(response, "startsAt")

    @pytest.mark.parametrize("when", NO_UTC_TIME)
    async def test_a_change_ending_a_rule_at_a_time_with_no_utc_equivalent_is_refused(
        self, stack: RulesStack, admin: dict[str, str], when: str
    ) -> None:
        body = {"name": "Far", "type": "earn", "environment": "staging"}
        created = await stack.http.post("/v1/rules", json=body, headers=admin)

        response = await stack.http.patch(
            f"/v1/rules/{created.json()['id']}", json={"version": 1, "endsAt": when}, headers=admin
        )

        assert_refused(response, "endsAt")

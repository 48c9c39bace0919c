"""API clients managed over the rules API, as the console does it: admins create, rotate,
revoke and configure clients; every role of the organisation lists them; another
organisation's client does not exist; secrets are answered once and kept nowhere in
clear; and what an admin changes reaches the trigger gateway before the answer.

One rules service and one gateway run for the whole module against a real PostgreSQL
and a real broker; each test seeds the organisations it needs.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric import ec
from structlog.testing import capture_logs

from contracts import ClientRateLimit, ClientSnapshot
from infra.request_signing import public_pem
from services.rules import sessions
from services.trigger import repository as trigger_repository
from tests.helpers import (
    PASSWORD,
    Client,
    TriggerStack,
    bearer,
    fresh_trigger_stack,
    login,
    request_token,
)

ARGON2_HASH = re.compile(r"\$argon2(id|i|d)\$")
ROLES = ("admin", "editor", "viewer")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(postgres_server_dsn: str) -> AsyncIterator[TriggerStack]:
    async with fresh_trigger_stack(postgres_server_dsn) as running:
        yield running


@dataclass(frozen=True)
class Organisation:
    """A seeded organisation and a bearer header for each of its roles."""

    id: str
    headers: dict[str, dict[str, str]]
    stack: TriggerStack

    @property
    def http(self) -> httpx.AsyncClient:
        return self.stack.rules_http

    async def create(self, role: str = "admin", **body: Any) -> httpx.Response:
        body = {"name": "Partner app", "environment": "staging", **body}
        return await self.http.post("/v1/clients", json=body, headers=self.headers[role])

    async def created(self, **body: Any) -> dict[str, Any]:
        response = await self.create(**body)
        assert response.status_code == 201, response.text
        return dict(response.json())

    async def change(
        self, client_id: str, action: str, role: str = "admin", body: Any = None
    ) -> httpx.Response:
        """``POST`` (revoke, rotate-secret) or ``PUT`` (public-key, rate-limit) a change."""
        method = "POST" if action in ("revoke", "rotate-secret") else "PUT"
        return await self.http.request(
            method, f"/v1/clients/{client_id}/{action}", json=body, headers=self.headers[role]
        )

    async def listed(self, role: str = "admin", environment: str = "staging") -> list[Any]:
        response = await self.http.get(
            "/v1/clients", params={"environment": environment}, headers=self.headers[role]
        )
        assert response.status_code == 200, response.text
        return list(response.json()["items"])

    async def rule_for(self, client_id: str) -> str:
        """An active staging earn rule that ``client_id`` may trigger."""
        body = {
            "name": f"Rule for {client_id}",
            "type": "earn",
            "environment": "staging",
            "apiTrigger": True,
            "authorizedClientIds": [client_id],
        }
        created = await self.http.post("/v1/rules", json=body, headers=self.headers["admin"])
        assert created.status_code == 201, created.text
        rule_id = str(created.json()["id"])
        activated = await self.http.post(
            f"/v1/rules/{rule_id}/activate", headers=self.headers["admin"]
        )
        assert activated.status_code == 200, activated.text
        return rule_id

    async def trigger(self, token: str, rule_id: str) -> httpx.Response:
        return await self.stack.gateway.post(
            "/v1/points/requests",
            headers=bearer(token),
            json={
                "userId": "member-1",
                "ruleId": rule_id,
                "amount": 1,
                "requestId": uuid.uuid4().hex,
            },
        )


async def new_organisation(stack: TriggerStack) -> Organisation:
    organisation = await stack.seeder.organisation(f"Org {uuid.uuid4().hex[:6]}")
    headers = {"admin": bearer(await login(stack.rules_http, organisation.email))}
    for role in ("editor", "viewer"):
        email = await stack.seeder.user(organisation.id, role)
        headers[role] = bearer(await login(stack.rules_http, email))
    return Organisation(organisation.id, headers, stack)


@pytest.fixture
async def org(stack: TriggerStack) -> Organisation:
    return await new_organisation(stack)


@pytest.fixture
async def other_org(stack: TriggerStack) -> Organisation:
    return await new_organisation(stack)


def credentials(issued: dict[str, Any]) -> Client:
    return Client(issued["clientId"], issued["clientSecret"])


async def token_of(http: httpx.AsyncClient, client: Client) -> str:
    response = await request_token(http, client)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["code"] == code


def a_public_key() -> str:
    return public_pem(ec.generate_private_key(ec.SECP256R1()).public_key())


#: Each change an admin may make to a client, with a body it accepts.
CHANGES: list[tuple[str, Any]] = [
    ("rotate-secret", None),
    ("revoke", None),
    ("public-key", {"publicKey": None}),
    ("rate-limit", {"perSecond": 10, "burst": 20}),
]


class TestCreating:
    async def test_an_admin_gets_the_client_with_its_secrets_once(self, org: Organisation) -> None:
        response = await org.create(name="Checkout app", environment="production")

        assert response.status_code == 201, response.text
        issued = response.json()
        assert issued["clientId"].startswith("cli_")
        assert issued["name"] == "Checkout app"
        assert issued["environment"] == "production"
        assert issued["status"] == "active"
        assert issued["lastTokenIssuedAt"] is None
        assert issued["rateLimit"] is None
        assert issued["requestSigningKeySet"] is False
        assert len(issued["clientSecret"]) >= 32
        assert len(issued["callbackSigningSecret"]) >= 32
        assert response.headers["Cache-Control"] == "no-store"

    async def test_the_secret_gets_a_token_at_once(self, org: Organisation) -> None:
        issued = await org.created()

        assert (await request_token(org.http, credentials(issued))).status_code == 200

    @pytest.mark.parametrize("role", ["editor", "viewer"])
    async def test_only_an_admin_may_create_a_client(self, org: Organisation, role: str) -> None:
        response = await org.create(role)

        assert_problem(response, 403, "ADMIN_ROLE_REQUIRED")
        assert await org.listed() == []

    @pytest.mark.parametrize(
        "body",
        [
            {"name": "", "environment": "staging"},
            {"name": "a\x00b", "environment": "staging"},
            {"name": "x" * 201, "environment": "staging"},
            {"name": "App", "environment": "qa"},
            {"name": "App"},
        ],
    )
    async def test_a_malformed_client_is_refused(self, org: Organisation, body: Any) -> None:
        response = await org.http.post("/v1/clients", json=body, headers=org.headers["admin"])

        assert_problem(response, 400, "INVALID_REQUEST")


class TestListing:
    @pytest.mark.parametrize("role", ROLES)
    async def test_every_role_lists_the_clients_without_secrets(
        self, org: Organisation, role: str
    ) -> None:
        issued = await org.created(name="Listed app")

        items = await org.listed(role)

        assert [item["clientId"] for item in items] == [issued["clientId"]]
        assert items[0]["name"] == "Listed app"
        assert items[0]["status"] == "active"
        assert "clientSecret" not in items[0]
        assert "callbackSigningSecret" not in items[0]
        text = str(items)
        assert issued["clientSecret"] not in text
        assert issued["callbackSigningSecret"] not in text

    async def test_the_list_shows_one_environment_at_a_time(self, org: Organisation) -> None:
        await org.created(name="Staging app", environment="staging")
        await org.created(name="Production app", environment="production")

        staging = await org.listed(environment="staging")
        production = await org.listed(environment="production")

        assert [item["name"] for item in staging] == ["Staging app"]
        assert [item["name"] for item in production] == ["Production app"]

    async def test_the_list_says_when_a_token_was_last_issued(self, org: Organisation) -> None:
        issued = await org.created()
        await token_of(org.http, credentials(issued))

        [item] = await org.listed()

        assert item["lastTokenIssuedAt"] is not None

    async def test_another_organisations_clients_are_not_listed(
        self, org: Organisation, other_org: Organisation
    ) -> None:
        await other_org.created(name="Their app")

        assert await org.listed() == []


class TestTokenIssuedTracking:
    async def test_tokens_issued_within_a_minute_write_the_time_once(
        self, org: Organisation
    ) -> None:
        client = credentials(await org.created())
        await token_of(org.http, client)
        [first] = await org.listed()

        for _ in range(3):
            await token_of(org.http, client)
        [later] = await org.listed()

        assert later["lastTokenIssuedAt"] == first["lastTokenIssuedAt"]


class TestTenancy:
    @pytest.mark.parametrize(("action", "body"), CHANGES)
    async def test_another_organisations_client_does_not_exist(
        self, org: Organisation, other_org: Organisation, action: str, body: Any
    ) -> None:
        theirs = await other_org.created()

        response = await org.change(theirs["clientId"], action, body=body)

        assert_problem(response, 404, "CLIENT_NOT_FOUND")
        [unchanged] = await other_org.listed()
        assert unchanged["status"] == "active"
        assert unchanged["rotatedAt"] is None
        assert unchanged["rateLimit"] is None

    async def test_a_client_that_does_not_exist_is_answered_the_same(
        self, org: Organisation
    ) -> None:
        response = await org.change("cli_does_not_exist", "revoke")

        assert_problem(response, 404, "CLIENT_NOT_FOUND")


class TestRoles:
    @pytest.mark.parametrize(("action", "body"), CHANGES)
    @pytest.mark.parametrize("role", ["editor", "viewer"])
    async def test_only_an_admin_may_change_a_client(
        self, org: Organisation, role: str, action: str, body: Any
    ) -> None:
        issued = await org.created()

        response = await org.change(issued["clientId"], action, role, body)

        assert_problem(response, 403, "ADMIN_ROLE_REQUIRED")
        [unchanged] = await org.listed()
        assert (unchanged["status"], unchanged["rotatedAt"]) == ("active", None)


class TestConsoleSession:
    async def open_session(self, org: Organisation) -> tuple[dict[str, str], str]:
        """The cookie header of a new console session of the org's admin, and its CSRF
        token (the module's HTTP client keeps no cookie of it)."""
        email = await org.stack.seeder.user(org.id, "admin")
        response = await org.http.post(
            "/v1/auth/session", json={"email": email, "password": PASSWORD}
        )
        assert response.status_code == 200, response.text
        cookie = response.cookies[sessions.COOKIE_NAME]
        org.http.cookies.clear()
        return {"Cookie": f"{sessions.COOKIE_NAME}={cookie}"}, response.json()["csrfToken"]

    @pytest.mark.parametrize(("action", "body"), [("create", None), *CHANGES])
    async def test_a_change_through_the_cookie_needs_the_csrf_header(
        self, org: Organisation, action: str, body: Any
    ) -> None:
        issued = await org.created()
        cookie, _ = await self.open_session(org)
        if action == "create":
            response = await org.http.post(
                "/v1/clients", json={"name": "App", "environment": "staging"}, headers=cookie
            )
        else:
            method = "POST" if action in ("revoke", "rotate-secret") else "PUT"
            path = f"/v1/clients/{issued['clientId']}/{action}"
            response = await org.http.request(method, path, json=body, headers=cookie)

        assert_problem(response, 403, "CSRF_TOKEN_INVALID")
        assert len(await org.listed()) == 1

    async def test_an_admin_creates_a_client_through_the_cookie_with_the_csrf_header(
        self, org: Organisation
    ) -> None:
        cookie, csrf = await self.open_session(org)

        response = await org.http.post(
            "/v1/clients",
            json={"name": "Console app", "environment": "staging"},
            headers={**cookie, sessions.CSRF_HEADER: csrf},
        )

        assert response.status_code == 201, response.text

    async def test_every_role_reads_the_list_through_the_cookie_without_the_header(
        self, org: Organisation
    ) -> None:
        await org.created()
        cookie, _ = await self.open_session(org)

        response = await org.http.get("/v1/clients", headers=cookie)

        assert response.status_code == 200
        assert len(response.json()["items"]) == 1


class TestRotation:
    async def test_the_new_secret_is_answered_once(self, org: Organisation) -> None:
        issued = await org.created()

        response = await org.change(issued["clientId"], "rotate-secret")

        assert response.status_code == 200, response.text
        rotated = response.json()
        assert rotated["clientSecret"] != issued["clientSecret"]
        assert rotated["callbackSigningSecret"] != issued["callbackSigningSecret"]
        assert rotated["rotatedAt"] is not None
        assert rotated["previousSecretValidUntil"] is not None
        assert response.headers["Cache-Control"] == "no-store"
        assert rotated["clientSecret"] not in str(await org.listed())

    async def test_the_old_secret_works_during_the_overlap_and_the_new_one_too(
        self, org: Organisation
    ) -> None:
        issued = await org.created()
        rotated = (await org.change(issued["clientId"], "rotate-secret")).json()

        old = await request_token(org.http, credentials(issued))
        new = await request_token(org.http, credentials(rotated))

        assert (old.status_code, new.status_code) == (200, 200)

    async def test_a_revoked_client_cannot_be_rotated(self, org: Organisation) -> None:
        issued = await org.created()
        await org.change(issued["clientId"], "revoke")

        response = await org.change(issued["clientId"], "rotate-secret")

        assert_problem(response, 409, "CLIENT_REVOKED")


class TestRevoking:
    async def test_a_revoked_client_gets_no_token(self, org: Organisation) -> None:
        issued = await org.created()

        response = await org.change(issued["clientId"], "revoke")

        assert response.status_code == 200, response.text
        assert response.json()["status"] == "revoked"
        assert response.json()["revokedAt"] is not None
        refused = await request_token(org.http, credentials(issued))
        assert refused.status_code == 401
        assert refused.json()["error"] == "invalid_client"

    async def test_the_gateway_refuses_a_revoked_clients_next_trigger(
        self, org: Organisation
    ) -> None:
        issued = await org.created()
        rule_id = await org.rule_for(issued["clientId"])
        token = await token_of(org.http, credentials(issued))
        assert (await org.trigger(token, rule_id)).status_code == 202

        await org.change(issued["clientId"], "revoke")
        response = await org.trigger(token, rule_id)

        assert_problem(response, 401, "UNAUTHORIZED")

    async def test_revoking_twice_changes_nothing(self, org: Organisation) -> None:
        issued = await org.created()
        first = (await org.change(issued["clientId"], "revoke")).json()

        again = await org.change(issued["clientId"], "revoke")

        assert again.status_code == 200
        assert again.json()["revokedAt"] == first["revokedAt"]


class TestPublicKey:
    async def test_an_admin_registers_the_key_the_client_signs_with(
        self, org: Organisation
    ) -> None:
        issued = await org.created()

        response = await org.change(
            issued["clientId"], "public-key", body={"publicKey": a_public_key()}
        )

        assert response.status_code == 200, response.text
        assert response.json()["requestSigningKeyFingerprint"]
        [listed] = await org.listed()
        assert listed["requestSigningKeySet"] is True

    async def test_the_gateway_then_wants_a_signature(self, org: Organisation) -> None:
        issued = await org.created()
        rule_id = await org.rule_for(issued["clientId"])
        token = await token_of(org.http, credentials(issued))

        await org.change(issued["clientId"], "public-key", body={"publicKey": a_public_key()})
        response = await org.trigger(token, rule_id)

        assert_problem(response, 401, "SIGNATURE_REQUIRED")

    async def test_a_key_that_is_not_one_is_refused(self, org: Organisation) -> None:
        issued = await org.created()

        response = await org.change(
            issued["clientId"], "public-key", body={"publicKey": "not a key"}
        )

        assert_problem(response, 422, "INVALID_PUBLIC_KEY")


class TestRateLimit:
    async def test_a_burst_over_the_limit_is_refused_by_the_gateway_at_once(
        self, org: Organisation
    ) -> None:
        issued = await org.created()
        rule_id = await org.rule_for(issued["clientId"])
        token = await token_of(org.http, credentials(issued))

        response = await org.change(
            issued["clientId"], "rate-limit", body={"perSecond": 0.01, "burst": 2}
        )
        burst = [await org.trigger(token, rule_id) for _ in range(3)]

        assert response.status_code == 200, response.text
        assert response.json() == {"perSecond": 0.01, "burst": 2}
        assert [answer.status_code for answer in burst[:2]] == [202, 202]
        assert_problem(burst[2], 429, "RATE_LIMITED")
        [listed] = await org.listed()
        assert listed["rateLimit"] == {"perSecond": 0.01, "burst": 2}

    async def test_raising_the_limit_lets_the_next_trigger_through(self, org: Organisation) -> None:
        issued = await org.created()
        rule_id = await org.rule_for(issued["clientId"])
        token = await token_of(org.http, credentials(issued))
        await org.change(issued["clientId"], "rate-limit", body={"perSecond": 0.01, "burst": 1})
        await org.trigger(token, rule_id)
        assert (await org.trigger(token, rule_id)).status_code == 429

        await org.change(issued["clientId"], "rate-limit", body={"perSecond": 1000, "burst": 1000})

        assert (await org.trigger(token, rule_id)).status_code == 202

    @pytest.mark.parametrize(
        "body",
        [
            {"perSecond": 0, "burst": 1},
            {"perSecond": -1, "burst": 1},
            {"perSecond": 1_000_001, "burst": 1},
            {"perSecond": 1, "burst": 0},
            {"perSecond": 1, "burst": 1_000_001},
            {"perSecond": 1, "burst": 1.5},
            {"perSecond": "5", "burst": 1},
            {"perSecond": True, "burst": 1},
            {"perSecond": 1},
        ],
    )
    async def test_a_limit_out_of_the_clis_bounds_is_refused(
        self, org: Organisation, body: Any
    ) -> None:
        issued = await org.created()

        response = await org.change(issued["clientId"], "rate-limit", body=body)

        assert_problem(response, 400, "INVALID_REQUEST")


class TestAudit:
    async def test_every_change_is_audited_with_who_made_it(self, org: Organisation) -> None:
        issued = await org.created()
        client_id = issued["clientId"]
        for action, body in [CHANGES[0], CHANGES[3], CHANGES[2], CHANGES[1]]:
            assert (await org.change(client_id, action, body=body)).status_code == 200

        response = await org.http.get("/v1/audit", headers=org.headers["admin"])

        lines = [line for line in response.json()["items"] if line["subjectId"] == client_id]
        assert [line["action"] for line in reversed(lines)] == [
            "client.registered",
            "client.secret_rotated",
            "client.rate_limit_changed",
            "client.revoked",
        ]
        assert all(line["actorEmail"] for line in lines)
        rate_limit = next(line for line in lines if line["action"] == "client.rate_limit_changed")
        assert rate_limit["details"]["after"] == {"rateLimit": "10/s, burst 20"}


class TestSecretsAreShownOnce:
    async def test_no_secret_is_in_the_audit_log_the_database_or_a_log_line(
        self, org: Organisation, caplog: pytest.LogCaptureFixture
    ) -> None:
        with capture_logs() as structlog_entries, caplog.at_level(logging.DEBUG):
            issued = await org.created()
            rotated = (await org.change(issued["clientId"], "rotate-secret")).json()
            await token_of(org.http, credentials(rotated))
            await request_token(org.http, Client(issued["clientId"], "wrong secret"))
        secrets = [
            issued["clientSecret"],
            issued["callbackSigningSecret"],
            rotated["clientSecret"],
            rotated["callbackSigningSecret"],
        ]
        audit_log = (await org.http.get("/v1/audit", headers=org.headers["admin"])).text
        database = await everything_stored(org.stack)
        log_lines = [caplog.text, *map(repr, caplog.records), *map(repr, structlog_entries)]

        assert any("client.registered" in line for line in log_lines)
        assert [secret for secret in secrets if secret in audit_log] == []
        assert [secret for secret in secrets if secret in database] == []
        assert [line for line in log_lines if any(secret in line for secret in secrets)] == []
        assert not any(ARGON2_HASH.search(line) for line in log_lines)


async def everything_stored(stack: TriggerStack) -> str:
    """Every row of every table of the rules and trigger schemas, as text."""
    connection = await stack.runtime.pool.acquire()
    try:
        tables = await connection.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema IN ('rules', 'trigger') AND table_type = 'BASE TABLE'"
        )
        rows = []
        for table in tables:
            name = f'"{table["table_schema"]}"."{table["table_name"]}"'
            rows += await connection.fetch(f"SELECT t::text AS row FROM {name} AS t")  # noqa: S608
        return "\n".join(row["row"] for row in rows)
    finally:
        await stack.runtime.pool.release(connection)


class TestGatewayProjection:
    """How the gateway's projection keeps a client's rate limit from its events."""

    def snapshot(self, client_id: str, rate_limit: ClientRateLimit | None) -> ClientSnapshot:
        return ClientSnapshot(
            client_id=client_id,
            org_id="org_projection",
            environment="staging",
            name="Projected app",
            status="active",
            signing_key_salt="salt",
            rate_limit=rate_limit,
        )

    async def project(self, stack: TriggerStack, snapshot: ClientSnapshot, minutes_ago: int) -> Any:
        occurred_at = datetime.now(UTC) - timedelta(minutes=minutes_ago)
        async with stack.runtime.pool.acquire() as connection:
            await trigger_repository.upsert_client(connection, snapshot, occurred_at)
            return await connection.fetchrow(
                "SELECT per_second, burst FROM client_rate_limits WHERE client_id = $1",
                snapshot.client_id,
            )

    async def test_an_event_without_a_limit_keeps_the_one_the_gateway_has(
        self, stack: TriggerStack
    ) -> None:
        client_id = f"cli_{uuid.uuid4().hex}"
        await self.project(
            stack, self.snapshot(client_id, ClientRateLimit(per_second=5, burst=9)), 2
        )

        kept = await self.project(stack, self.snapshot(client_id, None), 1)

        assert (kept["per_second"], kept["burst"]) == (5, 9)

    async def test_an_older_event_arriving_late_does_not_bring_back_its_limit(
        self, stack: TriggerStack
    ) -> None:
        client_id = f"cli_{uuid.uuid4().hex}"
        newer = ClientRateLimit(per_second=50, burst=100)
        await self.project(stack, self.snapshot(client_id, newer), 1)

        kept = await self.project(
            stack, self.snapshot(client_id, ClientRateLimit(per_second=1, burst=1)), 5
        )

        assert (kept["per_second"], kept["burst"]) == (50, 100)

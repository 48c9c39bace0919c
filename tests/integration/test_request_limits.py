"""Hostile requests against every service on real PostgreSQL: bodies over the limit,
JSON that is not JSON, NUL in paths and queries, and a trigger the database refuses
sharing a batch with good ones. None of it is a 5xx, and none of it touches anyone else.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio

from infra.tokens import JwksVerifier
from services.ledger.app import create_app as create_ledger_app
from services.ledger.settings import LedgerSettings
from services.notifier.app import create_app as create_notifier_app
from services.notifier.settings import NotifierSettings
from services.trigger import admission, checks
from services.trigger.admission import Gateway
from services.trigger.settings import TriggerSettings
from tests.helpers import (
    RULES_URL,
    TriggerStack,
    asgi_client,
    fresh_trigger_stack,
)

#: The limit every service is given here, smaller than the default to keep bodies small.
LIMIT = 4096


@dataclass
class Services:
    """Every service's HTTP app on one database, with the credentials to call them."""

    stack: TriggerStack
    ledger: httpx.AsyncClient
    notifier: httpx.AsyncClient

    @property
    def by_name(self) -> dict[str, tuple[httpx.AsyncClient, str, dict[str, str]]]:
        """Each service, a route of it that takes a JSON body, and the headers it needs."""
        return {
            "trigger": (self.stack.gateway, "/v1/points/requests", self.stack.developer),
            "rules": (self.stack.rules_http, "/v1/rules", self.stack.console),
            "ledger": (
                self.ledger,
                f"/v1/transactions/{uuid.uuid4()}/reversal",
                self.stack.console,
            ),
            "notifier": (self.notifier, "/v1/deliveries/1/replay", {}),
        }


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def services(postgres_server_dsn: str) -> AsyncIterator[Services]:
    async with fresh_trigger_stack(postgres_server_dsn) as stack:
        ledger_app, ledger_runtime = create_ledger_app(
            LedgerSettings(
                database_url=stack.database_url, max_body_bytes=LIMIT, startup_timeout_seconds=15
            ),
            verifier=JwksVerifier(RULES_URL, http=stack.rules_http),
            consume=False,
        )
        notifier_app, _ = create_notifier_app(
            NotifierSettings(
                mode="development", database_url=stack.database_url, max_body_bytes=LIMIT
            )
        )
        await ledger_runtime.start()
        try:
            async with (
                asgi_client(ledger_app, "http://ledger.test") as ledger_http,
                asgi_client(notifier_app, "http://notifier.test") as notifier_http,
            ):
                yield Services(stack, ledger_http, notifier_http)
        finally:
            await ledger_runtime.stop()


SERVICES = ["trigger", "rules", "ledger", "notifier"]
#: The notifier has no route that reads a body: one it is sent is never read at all.
BODY_READERS = ["trigger", "rules", "ledger"]


def assert_problem(response: httpx.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    if code is not None:
        assert response.json()["code"] == code


async def oversized(name: str, services: Services, **request: Any) -> httpx.Response:
    http, path, headers = services.by_name[name]
    return await http.post(path, headers={**headers, "content-type": "application/json"}, **request)


class TestBodyLimit:
    """The trigger gateway and rules service run with the default 64 KiB; the ledger and
    notifier here with 4 KiB."""

    @pytest.mark.parametrize("name", SERVICES)
    async def test_a_body_declared_over_the_limit_is_413(
        self, services: Services, name: str
    ) -> None:
        response = await oversized(name, services, content=b" " * 70_000)

        assert_problem(response, 413, "BODY_TOO_LARGE")

    @pytest.mark.parametrize("name", BODY_READERS)
    async def test_a_chunked_body_over_the_limit_is_413(
        self, services: Services, name: str
    ) -> None:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(20):
                yield b" " * 4000

        response = await oversized(name, services, content=chunks())

        assert_problem(response, 413, "BODY_TOO_LARGE")

    @pytest.mark.parametrize("name", BODY_READERS)
    @pytest.mark.parametrize("body", [b'{"half": ', b'{"name": "\xff\xfe"}', b"\x00"])
    async def test_a_body_that_is_not_json_or_not_utf_8_is_a_4xx_problem(
        self, services: Services, name: str, body: bytes
    ) -> None:
        response = await oversized(name, services, content=body)

        assert 400 <= response.status_code < 500
        assert response.headers["content-type"] == "application/problem+json"


class TestNulInPathsAndQueries:
    @pytest.mark.parametrize(
        ("name", "path", "field"),
        [
            ("trigger", "/v1/points/requests/a%00b", "path.request_id"),
            ("rules", "/v1/rules/a%00b", "path.rule_id"),
            ("rules", "/v1/audit?actor=a%00b", "query.actor"),
            ("rules", "/v1/rules?environment=%1b", "query.environment"),
            ("ledger", "/v1/members/a%00b/balance?environment=staging", "path.user_id"),
            ("ledger", "/v1/members/m/transactions?environment=staging&cursor=%00", "query.cursor"),
            ("notifier", "/v1/deliveries?status=%00", "query.status"),
        ],
    )
    async def test_is_a_problem_naming_the_parameter(
        self, services: Services, name: str, path: str, field: str
    ) -> None:
        http, _, headers = services.by_name[name]

        response = await http.get(path, headers=headers)

        assert_problem(response, 400, "INVALID_REQUEST")
        assert field in [error["field"] for error in response.json()["errors"]]

    async def test_a_nul_in_a_token_request_is_an_oauth_error(self, services: Services) -> None:
        response = await services.stack.rules_http.post(
            "/realms/partner/protocol/openid-connect/token",
            data={"grant_type": "client_credentials", "client_id": "a\x00b", "client_secret": "s"},
        )

        assert (response.status_code, response.json()["error"]) == (400, "invalid_request")

    async def test_basic_credentials_that_are_not_ascii_are_an_oauth_error(
        self, services: Services
    ) -> None:
        response = await services.stack.rules_http.post(
            "/realms/partner/protocol/openid-connect/token",
            data={"grant_type": "client_credentials"},
            headers={"authorization": "Basic \xe9t\xe9".encode("latin-1")},  # type: ignore[dict-item]
        )

        assert (response.status_code, response.json()["error"]) == (401, "invalid_client")


def batching_gateway(services: Services) -> Gateway:
    """The gateway's coalescers on its database, one batch in flight, so that whatever
    arrives while one runs goes together in the next."""
    settings = TriggerSettings(database_url=services.stack.database_url, db_batches_in_flight=1)
    return Gateway.on_database(lambda: services.stack.runtime.pool, settings)


async def caller_of(services: Services) -> checks.Caller:
    row = await services.stack.runtime.pool.fetchrow(
        "SELECT client_id, org_id, environment FROM clients LIMIT 1"
    )
    return checks.Caller(row["client_id"], row["org_id"], row["environment"])


def trigger(services: Services, request_id: str) -> checks.Trigger:
    return checks.Trigger("member-1", services.stack.rule_id, 1, request_id, None)


async def together(submissions: list[Any]) -> list[Any]:
    return list(await asyncio.gather(*submissions, return_exceptions=True))


class TestOneBadTriggerInABatch:
    async def test_only_the_trigger_the_database_refuses_fails_its_admission(
        self, services: Services
    ) -> None:
        gateway, caller = batching_gateway(services), await caller_of(services)
        ids = [f"good-{uuid.uuid4().hex}" for _ in range(4)]
        # Past the API's own checks, as a value the database refuses would be.
        bad = admission.Arrival(caller, trigger(services, "bad\x00id"))

        outcomes = await together(
            [
                gateway.admissions.submit(admission.Arrival(caller, trigger(services, i)))
                for i in ids
            ]
            + [gateway.admissions.submit(bad)]
        )

        assert all(isinstance(outcome, admission.Admission) for outcome in outcomes[:4])
        assert all(outcome.lookup.rule is not None for outcome in outcomes[:4])
        assert isinstance(outcomes[4], asyncpg.DataError)

    async def test_only_the_trigger_the_database_refuses_fails_its_recording(
        self, services: Services
    ) -> None:
        gateway, caller = batching_gateway(services), await caller_of(services)
        ids = [f"good-{uuid.uuid4().hex}" for _ in range(4)]
        admitted = [
            await gateway.admissions.submit(admission.Arrival(caller, trigger(services, i)))
            for i in [*ids, "bad-one"]
        ]
        recordings = [
            checks.check_trigger(caller, trigger(services, i), admitted.lookup, "test")
            for i, admitted in zip([*ids, "bad-one"], admitted, strict=True)
        ]
        spoilt = recordings[-1].event.data.model_copy(update={"user_id": "member\x00"})
        recordings[-1] = dataclasses.replace(
            recordings[-1], event=recordings[-1].event.model_copy(update={"data": spoilt})
        )

        outcomes = await together(
            [gateway.recordings.submit(recording) for recording in recordings]
        )

        assert [outcome["status"] for outcome in outcomes[:4]] == ["pending"] * 4
        assert isinstance(outcomes[4], asyncpg.DataError)
        recorded = await services.stack.runtime.pool.fetchval(
            "SELECT count(*) FROM requests WHERE request_id = ANY($1::text[])", [*ids, "bad-one"]
        )
        assert recorded == 4

    async def test_a_nul_request_id_among_concurrent_triggers_fails_only_that_one(
        self, services: Services
    ) -> None:
        request_ids = [f"ok-{uuid.uuid4().hex}" for _ in range(9)] + ["bad\x00id"]

        responses = await together([services.stack.trigger(i) for i in request_ids])

        assert [r.status_code for r in responses] == [202] * 9 + [400]
        assert responses[-1].json()["errors"][0]["field"] == "requestId"

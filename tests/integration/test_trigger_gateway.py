"""The trigger gateway as a developer meets it: real tokens, a real broker, real PostgreSQL.

One stack runs for the whole module: the rules service (token issuer and rule
lifecycle) and the gateway share a database and a broker, and the gateway
verifies tokens against the rules service's JWKS through an in-process
transport. Rules are created through the console API and reach the gateway
the way they do in production, as ``rules.lifecycle.v1`` events.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import http_sf
import httpx
import jwt
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client import CollectorRegistry

from contracts import (
    ALL_TOPICS,
    POINTS_REQUESTED,
    POINTS_RESULTS,
    PointsRequestedEvent,
    PointsResult,
    PointsResultEvent,
)
from infra.kafka_admin import create_topics
from infra.request_signing import public_pem
from infra.runtime import ServiceRuntime
from infra.tokens import API_AUDIENCE, REALM_PATH, JwksVerifier
from services.rules.app import create_app as create_rules_app
from services.rules.settings import RulesSettings
from services.rules.tokens import TokenIssuer
from services.trigger import admission, housekeeping, rate_limits, settlement
from services.trigger.app import create_app as create_trigger_app
from services.trigger.checks import Refused
from services.trigger.housekeeping import PendingReconciler
from services.trigger.settings import TriggerSettings
from tests.helpers import (
    RULES_URL,
    TRIGGER_URL,
    Client,
    Seeder,
    asgi_client,
    bearer,
    client_token,
    eventually,
    fresh_database,
    kafka_broker,
    login,
    points,
    rules_settings,
    rules_transaction,
)

REQUESTS_PATH = "/v1/points/requests"
PROJECTION_TIMEOUT = 30.0


def iso(moment: datetime) -> str:
    return moment.isoformat()


@dataclass
class Gateway:
    """The running stack, the seeded tenants and the rules the tests trigger."""

    http: httpx.AsyncClient
    runtime: ServiceRuntime
    seeder: Seeder
    bootstrap_servers: str
    org_id: str
    rules_http: httpx.AsyncClient
    console: dict[str, str]
    clients: dict[str, Client] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    rules: dict[str, str] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    #: A second gateway app on the same database and broker: another replica.
    replica: httpx.AsyncClient | None = None

    async def trigger(
        self,
        rule: str,
        *,
        amount: Any = 10,
        user_id: Any = "member-1",
        request_id: str | None = None,
        client: str = "main",
        rule_id: str | None = None,
        callback_url: str | None = None,
        on_replica: bool = False,
    ) -> httpx.Response:
        body = {
            "userId": user_id,
            "ruleId": rule_id or self.rules[rule],
            "amount": amount,
            "requestId": request_id or f"req-{uuid.uuid4().hex}",
        }
        if callback_url is not None:
            body["callbackUrl"] = callback_url
        http = self.replica if on_replica and self.replica is not None else self.http
        return await http.post(REQUESTS_PATH, json=body, headers=bearer(self.tokens[client]))

    async def client_projected(self, client_id: str, **expected: Any) -> None:
        """Wait until the gateway has seen the client (as ``expected``, when given)."""

        async def projected() -> bool:
            row = await self.runtime.pool.fetchrow(
                "SELECT status, request_signing_key FROM clients WHERE client_id = $1", client_id
            )
            return row is not None and all(row[name] == value for name, value in expected.items())

        await eventually(projected, timeout=PROJECTION_TIMEOUT, what="the client's change")

    async def status(self, request_id: str, client: str = "main") -> httpx.Response:
        return await self.http.get(
            f"{REQUESTS_PATH}/{request_id}", headers=bearer(self.tokens[client])
        )

    async def cap_used(self, rule: str) -> int:
        used = await self.runtime.pool.fetchval(
            "SELECT used FROM cap_usage WHERE rule_id = $1", self.rules[rule]
        )
        return int(used or 0)


class Console:
    """A business user creating rules through the rules service's API."""

    def __init__(self, http: httpx.AsyncClient, headers: dict[str, str]) -> None:
        self.http = http
        self.headers = headers

    async def rule(
        self, *, actions: tuple[str, ...] = ("activate",), **fields: Any
    ) -> dict[str, Any]:
        now = datetime.now(UTC)
        body = {
            "name": "Gateway test rule",
            "type": "earn",
            "environment": "staging",
            "apiTrigger": True,
            "startsAt": iso(now - timedelta(days=2)),
            "endsAt": iso(now + timedelta(days=30)),
            **fields,
        }
        response = await self.http.post("/v1/rules", json=body, headers=self.headers)
        assert response.status_code == 201, response.text
        rule: dict[str, Any] = response.json()
        for action in actions:
            response = await self.http.post(
                f"/v1/rules/{rule['id']}/{action}", headers=self.headers
            )
            assert response.status_code == 200, response.text
            rule = response.json()
        return rule

    async def patch(self, rule: dict[str, Any], **changes: Any) -> dict[str, Any]:
        response = await self.http.patch(
            f"/v1/rules/{rule['id']}",
            json={"version": rule["version"], **changes},
            headers=self.headers,
        )
        assert response.status_code == 200, response.text
        patched: dict[str, Any] = response.json()
        return patched


async def seed_rules(gateway: Gateway, console: Console, foreign: Console) -> None:
    """The rules the tests trigger, each in the state its name says."""
    main, prod = gateway.clients["main"].client_id, gateway.clients["prod"].client_id
    now = datetime.now(UTC)
    staging: dict[str, Any] = {"authorizedClientIds": [main]}
    rules = {
        "open": await console.rule(**staging),
        "replayed": await console.rule(**staging),
        "production": await console.rule(environment="production", authorizedClientIds=[prod]),
        "not_api": await console.rule(apiTrigger=False, **staging),
        "paused": await console.rule(actions=("activate", "pause"), **staging),
        "not_started": await console.rule(
            startsAt=iso(now + timedelta(days=1)), endsAt=iso(now + timedelta(days=30)), **staging
        ),
        "limited": await console.rule(maxAmountPerRequest=50, **staging),
        "capped": await console.rule(capMax=100, **staging),
        "member_capped": await console.rule(capPerMember=30, **staging),
        "crowded": await console.rule(capMax=1000, **staging),
        "member_crowded": await console.rule(capPerMember=1000, **staging),
        "released": await console.rule(capMax=10, **staging),
        "settled": await console.rule(capMax=10, **staging),
        "batched": await console.rule(capMax=20, **staging),
        "capped_later": await console.rule(**staging),
        "member_capped_later": await console.rule(**staging),
        "capped_after_request": await console.rule(**staging),
        "throttled": await console.rule(
            authorizedClientIds=[gateway.clients["throttled"].client_id]
        ),
        "foreign": await foreign.rule(authorizedClientIds=[gateway.clients["foreign"].client_id]),
    }
    rules["ended"] = await console.patch(
        await console.rule(**staging), endsAt=iso(now - timedelta(hours=1))
    )
    gateway.rules = {name: rule["id"] for name, rule in rules.items()}
    gateway.versions = {rule["id"]: rule["version"] for rule in rules.values()}


async def wait_for_projection(gateway: Gateway) -> None:
    async def projected() -> bool:
        rows = await gateway.runtime.pool.fetch("SELECT rule_id, version FROM rules")
        return {row["rule_id"]: row["version"] for row in rows} == gateway.versions

    await eventually(projected, timeout=PROJECTION_TIMEOUT, what="the gateway's rule projection")


def gateway_settings(database_url: str, bootstrap_servers: str) -> TriggerSettings:
    # Limits far above what these tests send: the rate-limit tests give their
    # clients small limits of their own.
    return TriggerSettings(
        mode="development",
        database_url=database_url,
        kafka_bootstrap_servers=bootstrap_servers,
        token_issuer_url=RULES_URL,
        startup_timeout_seconds=15,
        rate_limit_per_second=100_000,
        rate_limit_burst=100_000,
    )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway(postgres_server_dsn: str) -> AsyncIterator[Gateway]:
    """The stack, with a second gateway replica on the same database and broker."""
    with kafka_broker() as bootstrap_servers:
        async with fresh_database(postgres_server_dsn) as database_url:
            await create_topics(bootstrap_servers, ALL_TOPICS)
            settings = rules_settings(database_url, bootstrap_servers)
            rules_app, rules_runtime = create_rules_app(settings)
            trigger_app, trigger_runtime = create_trigger_app(
                gateway_settings(database_url, bootstrap_servers),
                verifier=JwksVerifier(RULES_URL, http=asgi_client(rules_app, RULES_URL)),
            )
            replica_app, replica_runtime = create_trigger_app(
                gateway_settings(database_url, bootstrap_servers),
                verifier=JwksVerifier(RULES_URL, http=asgi_client(rules_app, RULES_URL)),
            )
            await rules_runtime.start()
            try:
                await trigger_runtime.start()
                await replica_runtime.start()
                try:
                    async with (
                        asgi_client(rules_app, RULES_URL) as rules_http,
                        asgi_client(trigger_app, TRIGGER_URL) as http,
                        asgi_client(replica_app, TRIGGER_URL) as replica_http,
                    ):
                        seeded = await seeded_gateway(
                            http, trigger_runtime, rules_http, settings, bootstrap_servers
                        )
                        seeded.replica = replica_http
                        yield seeded
                finally:
                    await replica_runtime.stop()
                    await trigger_runtime.stop()
            finally:
                await rules_runtime.stop()


async def seeded_gateway(
    http: httpx.AsyncClient,
    runtime: ServiceRuntime,
    rules_http: httpx.AsyncClient,
    settings: RulesSettings,
    bootstrap_servers: str,
) -> Gateway:
    seeder = Seeder(settings.database_url, settings)
    acme = await seeder.organisation("Acme Coffee")
    other = await seeder.organisation("Other Org")
    console = bearer(await login(rules_http, acme.email))
    gateway = Gateway(http, runtime, seeder, bootstrap_servers, acme.id, rules_http, console)
    gateway.clients = {
        "main": await seeder.client(acme.id, "staging"),
        "outsider": await seeder.client(acme.id, "staging"),
        "prod": await seeder.client(acme.id, "production"),
        "foreign": await seeder.client(other.id, "staging"),
        "throttled": await seeder.client(acme.id, "staging"),
    }
    gateway.tokens = {
        name: await client_token(rules_http, client) for name, client in gateway.clients.items()
    }
    foreign = Console(rules_http, bearer(await login(rules_http, other.email)))
    await seed_rules(gateway, Console(rules_http, console), foreign)
    await wait_for_projection(gateway)
    for client in gateway.clients.values():
        await gateway.client_projected(client.client_id)
    return gateway


def assert_refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == code


async def published_request(
    bootstrap_servers: str, request_id: str, timeout: float = 20.0
) -> tuple[bytes, PointsRequestedEvent]:
    """The key and event of the ``points.requested.v1`` message for ``request_id``."""
    return (await published_requests(bootstrap_servers, request_id, 1, timeout))[0]


async def published_requests(
    bootstrap_servers: str, request_id: str, count: int, timeout: float = 20.0
) -> list[tuple[bytes, PointsRequestedEvent]]:
    """The first ``count`` ``points.requested.v1`` messages for ``request_id``: keys and
    events, in the order published."""
    partitions = next(topic.partitions for topic in ALL_TOPICS if topic.name == POINTS_REQUESTED)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    found: list[tuple[bytes, PointsRequestedEvent]] = []
    try:
        assigned = [TopicPartition(POINTS_REQUESTED, p) for p in range(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        async with asyncio.timeout(timeout):
            while True:
                batches = await consumer.getmany(timeout_ms=200)
                for records in batches.values():
                    for record in records:
                        event = PointsRequestedEvent.model_validate_json(record.value)
                        if event.data.request_id == request_id:
                            assert record.key is not None
                            found.append((record.key, event))
                            if len(found) == count:
                                return found
    finally:
        await consumer.stop()


async def publish_result(bootstrap_servers: str, event: PointsResultEvent) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers, acks="all", enable_idempotence=False
    )
    await producer.start()
    try:
        await producer.send_and_wait(
            POINTS_RESULTS, value=event.model_dump_json().encode(), key=event.key().encode()
        )
    finally:
        await producer.stop()


async def ledger_outcome(
    gateway: Gateway, rule: str, accepted: dict[str, Any], *, applied: bool
) -> PointsResultEvent:
    """What the ledger would publish about an accepted 10-point earn for member-1."""
    result = PointsResult(
        request_id=accepted["requestId"],
        transaction_id=uuid.UUID(accepted["transactionId"]),
        client_id=gateway.clients["main"].client_id,
        rule_id=gateway.rules[rule],
        user_id="member-1",
        type="earn",
        amount=10,
        status="applied" if applied else "rejected",
        reason=None if applied else "MEMBER_BLOCKED",
        balance=10 if applied else None,
        processed_at=datetime.now(UTC),
    )
    return PointsResultEvent.new_event(
        data=result, environment="staging", org_id=gateway.org_id, correlation_id="ledger-test"
    )


async def settled_status(gateway: Gateway, request_id: str) -> dict[str, Any]:
    async def settled() -> dict[str, Any] | None:
        view: dict[str, Any] = (await gateway.status(request_id)).json()
        return view if view["status"] != "pending" else None

    return await eventually(settled, timeout=PROJECTION_TIMEOUT, what="the ledger's result")


def outcomes(responses: list[httpx.Response]) -> dict[str, int]:
    """How many were accepted, and how many refused with each code."""
    codes = [
        "accepted" if response.status_code == 202 else response.json()["code"]
        for response in responses
    ]
    return {code: codes.count(code) for code in set(codes)}


def rate_limit_fields(response: httpx.Response) -> tuple[dict[str, int], dict[str, int]]:
    """The answer's quota policy and the state of its rate limit, as a Structured Fields
    parser reads ``RateLimit-Policy`` and ``RateLimit``; the deprecated headers of the
    early drafts must say the same."""
    [(policy, quota)] = http_sf.parse(response.headers["RateLimit-Policy"].encode(), tltype="list")
    [(name, state)] = http_sf.parse(response.headers["RateLimit"].encode(), tltype="list")
    assert policy == name == "burst"
    assert response.headers["RateLimit-Limit"] == str(quota["q"])
    assert response.headers["RateLimit-Remaining"] == str(state["r"])
    assert int(response.headers["RateLimit-Reset"]) >= state["t"]
    return quota, state


async def recorded_total(gateway: Gateway, rule: str) -> tuple[int, int]:
    """How many requests the gateway recorded on ``rule``, and their total amount."""
    row = await gateway.runtime.pool.fetchrow(
        "SELECT count(*), coalesce(sum(amount), 0) FROM requests WHERE rule_id = $1",
        gateway.rules[rule],
    )
    assert row is not None
    return int(row[0]), int(row[1])


class TestAcceptedTrigger:
    async def test_a_valid_trigger_is_accepted_and_published_keyed_by_member(
        self, gateway: Gateway
    ) -> None:
        response = await gateway.trigger("open", amount=25, user_id="member-42")

        assert response.status_code == 202, response.text
        accepted = response.json()
        assert accepted["status"] == "pending"
        uuid.UUID(accepted["transactionId"])
        key, event = await published_request(gateway.bootstrap_servers, accepted["requestId"])
        assert key.decode() == f"staging:{gateway.org_id}:member-42"
        assert str(event.data.transaction_id) == accepted["transactionId"]
        assert (event.data.rule_id, event.data.amount, event.data.type) == (
            gateway.rules["open"],
            25,
            "earn",
        )
        assert event.data.client_id == gateway.clients["main"].client_id

    async def test_the_status_of_an_accepted_request_is_pending(self, gateway: Gateway) -> None:
        accepted = (await gateway.trigger("open")).json()

        response = await gateway.status(accepted["requestId"])

        assert response.status_code == 200
        assert response.json() == {**accepted, "status": "pending"}

    async def test_the_same_request_again_gets_the_same_transaction_and_is_recorded_once(
        self, gateway: Gateway
    ) -> None:
        request_id = f"req-{uuid.uuid4().hex}"
        first = await gateway.trigger("replayed", request_id=request_id)

        second = await gateway.trigger("replayed", request_id=request_id)

        assert (first.status_code, second.status_code) == (202, 202)
        assert second.json()["transactionId"] == first.json()["transactionId"]
        published = await gateway.runtime.pool.fetchval(
            "SELECT count(*) FROM outbox WHERE convert_from(payload, 'UTF8')::jsonb"
            " -> 'data' ->> 'request_id' = $1",
            request_id,
        )
        assert published == 1

    async def test_a_request_id_reused_with_a_different_body_is_a_conflict(
        self, gateway: Gateway
    ) -> None:
        request_id = f"req-{uuid.uuid4().hex}"
        await gateway.trigger("open", request_id=request_id, amount=10)

        response = await gateway.trigger("open", request_id=request_id, amount=11)

        assert_refused(response, 409, "REQUEST_ID_REUSED")

    async def test_the_status_of_an_unknown_request_is_not_found(self, gateway: Gateway) -> None:
        response = await gateway.status("never-sent")

        assert_refused(response, 404, "REQUEST_NOT_FOUND")

    async def test_another_client_cannot_see_a_requests_status(self, gateway: Gateway) -> None:
        accepted = (await gateway.trigger("open")).json()

        response = await gateway.status(accepted["requestId"], client="outsider")

        assert response.status_code == 404


class TestRuleRefusals:
    async def test_an_unknown_rule_is_not_found(self, gateway: Gateway) -> None:
        response = await gateway.trigger("open", rule_id="rul_does_not_exist")

        assert_refused(response, 400, "RULE_NOT_FOUND")

    async def test_another_organisations_rule_is_not_found(self, gateway: Gateway) -> None:
        response = await gateway.trigger("foreign")

        assert_refused(response, 400, "RULE_NOT_FOUND")

    async def test_a_staging_client_cannot_trigger_a_production_rule(
        self, gateway: Gateway
    ) -> None:
        response = await gateway.trigger("production")

        assert_refused(response, 403, "ENVIRONMENT_MISMATCH")

    async def test_a_rule_without_the_api_trigger_option_is_refused(self, gateway: Gateway) -> None:
        response = await gateway.trigger("not_api")

        assert_refused(response, 400, "RULE_NOT_API_TRIGGERABLE")

    async def test_a_paused_rule_is_inactive(self, gateway: Gateway) -> None:
        response = await gateway.trigger("paused")

        assert_refused(response, 400, "RULE_INACTIVE")

    async def test_a_rule_before_its_start_date_is_refused(self, gateway: Gateway) -> None:
        response = await gateway.trigger("not_started")

        assert_refused(response, 400, "RULE_NOT_STARTED")

    async def test_a_rule_after_its_end_date_is_refused(self, gateway: Gateway) -> None:
        response = await gateway.trigger("ended")

        assert_refused(response, 400, "RULE_ENDED")

    async def test_a_client_the_rule_does_not_authorise_is_forbidden(
        self, gateway: Gateway
    ) -> None:
        response = await gateway.trigger("open", client="outsider")

        assert_refused(response, 403, "CLIENT_NOT_AUTHORIZED")

    async def test_rule_checks_come_before_member_and_amount_checks(self, gateway: Gateway) -> None:
        response = await gateway.trigger("paused", user_id="", amount=-5)

        assert_refused(response, 400, "RULE_INACTIVE")


class TestMemberAndAmountRefusals:
    @pytest.mark.parametrize("user_id", ["", "has space", "-leading-dash", 42, None, "x" * 129])
    async def test_an_invalid_user_id_is_refused(self, gateway: Gateway, user_id: Any) -> None:
        response = await gateway.trigger("open", user_id=user_id)

        assert_refused(response, 400, "INVALID_USER_ID")

    @pytest.mark.parametrize("amount", [0, -1, 1.5, "10", True, None, 2**53, 10**30])
    async def test_an_amount_that_is_not_a_positive_integer_is_refused(
        self, gateway: Gateway, amount: Any
    ) -> None:
        response = await gateway.trigger("open", amount=amount)

        assert_refused(response, 400, "INVALID_AMOUNT")

    async def test_an_amount_over_the_rules_maximum_is_refused_and_the_maximum_is_not(
        self, gateway: Gateway
    ) -> None:
        over = await gateway.trigger("limited", amount=51)
        at_maximum = await gateway.trigger("limited", amount=50)

        assert_refused(over, 400, "AMOUNT_OVER_MAXIMUM")
        assert at_maximum.status_code == 202


class TestMalformedBodies:
    """The trigger route's body errors: one code, and the field each error is about."""

    async def refused_body(self, gateway: Gateway, content: bytes) -> dict[str, Any]:
        response = await gateway.http.post(
            REQUESTS_PATH,
            content=content,
            headers={**bearer(gateway.tokens["main"]), "Content-Type": "application/json"},
        )
        assert_refused(response, 400, "INVALID_REQUEST")
        body: dict[str, Any] = response.json()
        return body

    async def test_a_body_that_is_not_json_is_refused_as_such(self, gateway: Gateway) -> None:
        body = await self.refused_body(gateway, b'{"userId": "member-1",')

        assert body["errors"] == [{"field": "", "message": "not valid JSON"}]

    async def test_a_missing_field_and_an_unknown_one_are_each_named(
        self, gateway: Gateway
    ) -> None:
        content = json.dumps(
            {"userId": "member-1", "ruleId": gateway.rules["open"], "amount": 1, "points": 1}
        ).encode()

        body = await self.refused_body(gateway, content)

        assert {error["field"] for error in body["errors"]} == {"requestId", "points"}
        assert "requestId" in body["detail"]

    async def test_the_token_is_checked_before_the_body(self, gateway: Gateway) -> None:
        response = await gateway.http.post(REQUESTS_PATH, content=b"not json")

        assert_refused(response, 401, "UNAUTHORIZED")

    async def test_nothing_is_recorded_for_a_malformed_body(self, gateway: Gateway) -> None:
        before = await gateway.runtime.pool.fetchval("SELECT count(*) FROM requests")
        content = json.dumps(
            {"userId": "member-1", "ruleId": gateway.rules["open"], "amount": 1, "requestId": 7}
        ).encode()

        body = await self.refused_body(gateway, content)

        assert [error["field"] for error in body["errors"]] == ["requestId"]
        assert await gateway.runtime.pool.fetchval("SELECT count(*) FROM requests") == before


class TestCaps:
    async def test_a_trigger_that_would_exceed_the_cap_is_refused_and_reserves_nothing(
        self, gateway: Gateway
    ) -> None:
        first = await gateway.trigger("capped", amount=60)
        over = await gateway.trigger("capped", amount=60)
        rest = await gateway.trigger("capped", amount=40)

        assert first.status_code == 202
        assert_refused(over, 400, "CAP_EXCEEDED")
        assert rest.status_code == 202
        assert await gateway.cap_used("capped") == 100

    async def test_a_member_over_the_per_member_cap_is_refused_while_others_still_earn(
        self, gateway: Gateway
    ) -> None:
        first = await gateway.trigger("member_capped", amount=20, user_id="member-1")
        over = await gateway.trigger("member_capped", amount=20, user_id="member-1")
        other = await gateway.trigger("member_capped", amount=20, user_id="member-2")

        assert first.status_code == 202
        assert_refused(over, 400, "MEMBER_CAP_EXCEEDED")
        assert other.status_code == 202

    async def test_the_cap_is_never_exceeded_by_concurrent_triggers_on_two_replicas(
        self, gateway: Gateway
    ) -> None:
        responses = await asyncio.gather(
            *(
                gateway.trigger(
                    "crowded", amount=10, user_id=f"member-{i % 25}", on_replica=i % 2 == 1
                )
                for i in range(500)
            )
        )

        assert outcomes(responses) == {"accepted": 100, "CAP_EXCEEDED": 400}
        assert await gateway.cap_used("crowded") == 1000
        assert await recorded_total(gateway, "crowded") == (100, 1000)

    async def test_the_per_member_cap_is_never_exceeded_by_concurrent_triggers_on_two_replicas(
        self, gateway: Gateway
    ) -> None:
        responses = await asyncio.gather(
            *(
                gateway.trigger("member_crowded", amount=10, on_replica=i % 2 == 1)
                for i in range(500)
            )
        )

        assert outcomes(responses) == {"accepted": 100, "MEMBER_CAP_EXCEEDED": 400}
        assert await recorded_total(gateway, "member_crowded") == (100, 1000)

    async def test_a_rejection_by_the_ledger_releases_the_reservation(
        self, gateway: Gateway
    ) -> None:
        accepted = (await gateway.trigger("released", amount=10)).json()
        assert_refused(await gateway.trigger("released", amount=10), 400, "CAP_EXCEEDED")
        rejection = await ledger_outcome(gateway, "released", accepted, applied=False)

        await publish_result(gateway.bootstrap_servers, rejection)

        status = await settled_status(gateway, accepted["requestId"])
        assert status == {**accepted, "status": "failed", "reason": "MEMBER_BLOCKED"}
        assert (await gateway.trigger("released", amount=10)).status_code == 202
        # The same event delivered again frees nothing more.
        async with gateway.runtime.pool.acquire() as connection, connection.transaction():
            await settlement.settle_results(connection, [rejection])
        assert await gateway.cap_used("released") == 10
        assert_refused(await gateway.trigger("released", amount=10), 400, "CAP_EXCEEDED")

    async def test_an_applied_result_keeps_the_reservation(self, gateway: Gateway) -> None:
        accepted = (await gateway.trigger("settled", amount=10)).json()

        await publish_result(
            gateway.bootstrap_servers,
            await ledger_outcome(gateway, "settled", accepted, applied=True),
        )

        status = await settled_status(gateway, accepted["requestId"])
        assert status == {**accepted, "status": "succeeded"}
        assert_refused(await gateway.trigger("settled", amount=10), 400, "CAP_EXCEEDED")
        assert await gateway.cap_used("settled") == 10

    async def test_one_batch_settles_each_request_once_and_a_reversal_after_its_outcome(
        self, gateway: Gateway
    ) -> None:
        applied = (await gateway.trigger("batched", amount=10)).json()
        rejected = (await gateway.trigger("batched", amount=10)).json()
        assert_refused(await gateway.trigger("batched", amount=10), 400, "CAP_EXCEEDED")
        award = await ledger_outcome(gateway, "batched", applied, applied=True)
        # A second outcome of the same request (republished under another event id).
        contradiction = await ledger_outcome(gateway, "batched", applied, applied=False)
        reversal = award.model_copy(
            update={
                "event_id": uuid.uuid4(),
                "type": "points.reversed",
                "data": award.data.model_copy(
                    update={
                        "status": "reversed",
                        "reversal_id": uuid.uuid4(),
                        "reversed_amount": 10,
                        "uncovered_amount": 0,
                    }
                ),
            }
        )
        batch = [
            award,
            contradiction,
            await ledger_outcome(gateway, "batched", rejected, applied=False),
            reversal,
        ]

        async with gateway.runtime.pool.acquire() as connection, connection.transaction():
            await settlement.settle_results(connection, batch)

        assert (await gateway.status(applied["requestId"])).json()["status"] == "succeeded"
        assert (await gateway.status(applied["requestId"])).json()["reversal"][
            "reversedAmount"
        ] == 10
        assert (await gateway.status(rejected["requestId"])).json()["status"] == "failed"
        # Both reservations are free again: the rejection's and the reversed award's.
        assert await gateway.cap_used("batched") == 0
        assert (await gateway.trigger("batched", amount=20)).status_code == 202


class TestCapsSetAfterUse:
    """A cap bounds everything its rule (or member) has moved, whenever it is set."""

    async def cap(self, gateway: Gateway, rule: str, **caps: int) -> None:
        rule_id = gateway.rules[rule]
        console = Console(gateway.rules_http, gateway.console)
        patched = await console.patch({"id": rule_id, "version": gateway.versions[rule_id]}, **caps)
        gateway.versions[rule_id] = patched["version"]
        await wait_for_projection(gateway)

    async def test_a_cap_set_later_counts_the_points_moved_before_it(
        self, gateway: Gateway
    ) -> None:
        assert (await gateway.trigger("capped_later", amount=1000)).status_code == 202

        await self.cap(gateway, "capped_later", capMax=1200)

        assert_refused(await gateway.trigger("capped_later", amount=1000), 400, "CAP_EXCEEDED")
        assert (await gateway.trigger("capped_later", amount=200)).status_code == 202
        assert_refused(await gateway.trigger("capped_later", amount=1), 400, "CAP_EXCEEDED")
        assert await recorded_total(gateway, "capped_later") == (2, 1200)

    async def test_a_per_member_cap_set_later_counts_what_the_member_earned_before_it(
        self, gateway: Gateway
    ) -> None:
        assert (await gateway.trigger("member_capped_later", amount=50)).status_code == 202

        await self.cap(gateway, "member_capped_later", capPerMember=60)

        over = await gateway.trigger("member_capped_later", amount=20)
        assert_refused(over, 400, "MEMBER_CAP_EXCEEDED")
        other = await gateway.trigger("member_capped_later", amount=20, user_id="member-2")
        assert other.status_code == 202
        assert (await gateway.trigger("member_capped_later", amount=10)).status_code == 202

    async def test_a_rejection_of_a_request_from_before_the_cap_frees_its_points(
        self, gateway: Gateway
    ) -> None:
        uncapped = (await gateway.trigger("capped_after_request", amount=10)).json()
        await self.cap(gateway, "capped_after_request", capMax=10)
        assert_refused(
            await gateway.trigger("capped_after_request", amount=10), 400, "CAP_EXCEEDED"
        )

        await publish_result(
            gateway.bootstrap_servers,
            await ledger_outcome(gateway, "capped_after_request", uncapped, applied=False),
        )
        await settled_status(gateway, uncapped["requestId"])

        assert await gateway.cap_used("capped_after_request") == 0
        assert (await gateway.trigger("capped_after_request", amount=10)).status_code == 202
        assert_refused(
            await gateway.trigger("capped_after_request", amount=10), 400, "CAP_EXCEEDED"
        )


class TestPendingRequestsReconciled:
    """No request stays pending without bound: the gateway publishes it again."""

    def reconciler(self, gateway: Gateway) -> PendingReconciler:
        return PendingReconciler(
            lambda: gateway.runtime.pool,
            redrive_after=300,
            report_after=3600,
            interval=60,
            registry=CollectorRegistry(),
        )

    async def redrives(self, gateway: Gateway, accepted: dict[str, Any]) -> int:
        """How many times the gateway published the request again."""
        return int(
            await gateway.runtime.pool.fetchval(
                "SELECT redrives FROM requests WHERE request_id = $1", accepted["requestId"]
            )
        )

    async def accepted_long_ago(self, gateway: Gateway, seconds: int) -> dict[str, Any]:
        accepted: dict[str, Any] = (
            await gateway.trigger("open", amount=7, callback_url="http://127.0.0.1:9/cb")
        ).json()
        await gateway.runtime.pool.execute(
            "UPDATE requests SET created_at = now() - make_interval(secs => $2)"
            " WHERE request_id = $1",
            accepted["requestId"],
            seconds,
        )
        return accepted

    async def test_a_request_pending_too_long_is_published_again_as_the_same_transaction(
        self, gateway: Gateway
    ) -> None:
        accepted = await self.accepted_long_ago(gateway, 301)

        await self.reconciler(gateway).once()

        (_, first), (key, again) = await published_requests(
            gateway.bootstrap_servers, accepted["requestId"], 2
        )
        assert again.event_id != first.event_id
        # The same transaction, member, amount and callback; requested_at is when
        # the gateway recorded it (moved back by this test).
        assert again.data.model_dump(exclude={"requested_at"}) == first.data.model_dump(
            exclude={"requested_at"}
        )
        assert again.data.callback_url == "http://127.0.0.1:9/cb"
        assert again.correlation_id == first.correlation_id
        assert key.decode() == first.key()

    async def test_a_request_published_again_waits_longer_before_the_next_time(
        self, gateway: Gateway
    ) -> None:
        accepted = await self.accepted_long_ago(gateway, 301)
        reconciler = self.reconciler(gateway)
        await reconciler.once()

        await reconciler.once()

        assert await self.redrives(gateway, accepted) == 1

    async def test_a_request_pending_for_less_than_the_threshold_is_left_alone(
        self, gateway: Gateway
    ) -> None:
        accepted = await self.accepted_long_ago(gateway, 200)

        await self.reconciler(gateway).once()

        assert await self.redrives(gateway, accepted) == 0

    async def test_a_request_pending_past_the_report_threshold_is_counted_as_overdue(
        self, gateway: Gateway
    ) -> None:
        reconciler = self.reconciler(gateway)
        before = (await reconciler.read_overdue()).count
        await self.accepted_long_ago(gateway, 7200)

        overdue = await reconciler.read_overdue()

        assert overdue.count == before + 1
        assert overdue.oldest is not None
        assert datetime.now(UTC) - overdue.oldest >= timedelta(seconds=7200)


def tampered(token: str, **claims: Any) -> str:
    """The token with its claims changed and its original signature kept."""
    header, payload, signature = token.split(".")
    decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged = base64.urlsafe_b64encode(json.dumps({**decoded, **claims}).encode()).rstrip(b"=")
    return f"{header}.{forged.decode()}.{signature}"


def self_signed(gateway: Gateway) -> str:
    """A well-formed token signed by a key the issuer never published."""
    now = int(datetime.now(UTC).timestamp())
    claims = {
        "iss": RULES_URL + REALM_PATH,
        "aud": API_AUDIENCE,
        "typ": "client",
        "sub": gateway.clients["main"].client_id,
        "org_id": gateway.org_id,
        "environment": "staging",
        "scope": "points:trigger points:read",
        "iat": now,
        "exp": now + 300,
    }
    key = ec.generate_private_key(ec.SECP256R1())
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": "forged-key"})


class TestAuthentication:
    async def test_a_trigger_without_a_token_is_unauthorised(self, gateway: Gateway) -> None:
        body = {"userId": "member-1", "ruleId": gateway.rules["open"], "amount": 1}

        response = await gateway.http.post(REQUESTS_PATH, json={**body, "requestId": "r-1"})

        assert_refused(response, 401, "UNAUTHORIZED")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")

    async def test_a_tampered_token_is_unauthorised(self, gateway: Gateway) -> None:
        token = tampered(gateway.tokens["foreign"], org_id=gateway.org_id)

        response = await gateway.http.get(f"{REQUESTS_PATH}/anything", headers=bearer(token))

        assert_refused(response, 401, "UNAUTHORIZED")

    async def test_a_token_signed_by_an_unknown_key_is_unauthorised(self, gateway: Gateway) -> None:
        response = await gateway.http.get(
            f"{REQUESTS_PATH}/anything", headers=bearer(self_signed(gateway))
        )

        assert_refused(response, 401, "UNAUTHORIZED")

    async def test_a_revoked_clients_token_is_unauthorised_once_the_revocation_arrives(
        self, gateway: Gateway
    ) -> None:
        client = await gateway.seeder.client(gateway.org_id, "staging")
        token = await client_token(gateway.rules_http, client)
        await gateway.client_projected(client.client_id)
        before = await gateway.http.get(f"{REQUESTS_PATH}/anything", headers=bearer(token))
        assert before.status_code == 404

        await gateway.seeder.revoke(client.client_id)

        await gateway.client_projected(client.client_id, status="revoked")
        after = await gateway.http.get(f"{REQUESTS_PATH}/anything", headers=bearer(token))
        assert_refused(after, 401, "UNAUTHORIZED")

    async def test_a_client_the_gateway_has_not_seen_yet_is_asked_to_retry_not_taken_as_unsigned(
        self, gateway: Gateway
    ) -> None:
        # A token the issuer signed for a client whose registration has not reached the
        # gateway: whether it must sign its requests is not known yet.
        issuer = TokenIssuer.for_settings(gateway.seeder.settings)
        unseen = {"id": "cli_not_projected_yet", "org_id": gateway.org_id, "environment": "staging"}
        async with rules_transaction(gateway.seeder.database_url) as connection:
            gateway.tokens["unseen"] = await issuer.client_token(connection, unseen, 60)

        response = await gateway.trigger("open", client="unseen")
        status = await gateway.status("anything", client="unseen")

        assert_refused(response, 503, "CLIENT_NOT_READY")
        assert response.headers["Retry-After"] == "1"
        assert_refused(status, 503, "CLIENT_NOT_READY")


class TestChangesAfterAcceptance:
    """A replica has accepted triggers for the client and the rule before; what changed
    since must still count, at once."""

    async def trigger(self, gateway: Gateway, rule_id: str, token: str) -> httpx.Response:
        return await gateway.http.post(
            REQUESTS_PATH,
            json={
                "userId": "member-1",
                "ruleId": rule_id,
                "amount": 1,
                "requestId": f"req-{uuid.uuid4().hex}",
            },
            headers=bearer(token),
        )

    async def accepted_twice(self, gateway: Gateway, rule_id: str, token: str) -> None:
        # Triggers the replica accepted for the client and the rule before they change.
        for _ in range(2):
            response = await self.trigger(gateway, rule_id, token)
            assert response.status_code == 202, response.text

    async def new_client(self, gateway: Gateway) -> tuple[Client, str, str]:
        """A client, its token, and a rule that authorises only it."""
        client = await gateway.seeder.client(gateway.org_id, "staging")
        console = Console(gateway.rules_http, gateway.console)
        rule = await console.rule(authorizedClientIds=[client.client_id])
        gateway.versions[rule["id"]] = rule["version"]
        await wait_for_projection(gateway)
        # Until the client itself is projected, the gateway answers 503 CLIENT_NOT_READY.
        await gateway.client_projected(client.client_id)
        return client, await client_token(gateway.rules_http, client), rule["id"]

    async def client_projected(self, gateway: Gateway, client_id: str, **expected: Any) -> None:
        await gateway.client_projected(client_id, **expected)

    async def test_a_rule_paused_since_is_inactive(self, gateway: Gateway) -> None:
        _, token, rule_id = await self.new_client(gateway)
        await self.accepted_twice(gateway, rule_id, token)

        paused = await gateway.rules_http.post(
            f"/v1/rules/{rule_id}/pause", headers=gateway.console
        )
        gateway.versions[rule_id] = paused.json()["version"]
        await wait_for_projection(gateway)
        response = await self.trigger(gateway, rule_id, token)

        assert_refused(response, 400, "RULE_INACTIVE")

    async def test_a_client_revoked_since_is_unauthorised(self, gateway: Gateway) -> None:
        client, token, rule_id = await self.new_client(gateway)
        await self.accepted_twice(gateway, rule_id, token)

        await gateway.seeder.revoke(client.client_id)
        await self.client_projected(gateway, client.client_id, status="revoked")
        response = await self.trigger(gateway, rule_id, token)

        assert_refused(response, 401, "UNAUTHORIZED")

    async def test_a_client_that_registered_a_key_since_must_sign(self, gateway: Gateway) -> None:
        client, token, rule_id = await self.new_client(gateway)
        await self.accepted_twice(gateway, rule_id, token)

        key = public_pem(ec.generate_private_key(ec.SECP256R1()).public_key())
        await gateway.seeder.set_public_key(client.client_id, key)
        await self.client_projected(gateway, client.client_id, request_signing_key=key)
        response = await self.trigger(gateway, rule_id, token)

        assert_refused(response, 401, "SIGNATURE_REQUIRED")


class TestRateLimits:
    async def test_a_client_over_its_limit_is_refused_on_any_replica_until_it_slows_down(
        self, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        throttled = gateway.clients["throttled"].client_id
        # As an operator sets it: the command returns once the gateway has it.
        monkeypatch.setenv("DATABASE_URL", gateway.seeder.database_url)
        monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", gateway.bootstrap_servers)
        monkeypatch.setenv("POINTS_MODE", "development")
        limit = ["client", "set-rate-limit", throttled, "--per-second", "5", "--burst", "5"]
        assert await points(*limit) == 0

        burst = [
            await gateway.trigger("throttled", client="throttled", on_replica=i % 2 == 1)
            for i in range(5)
        ]
        refused = await gateway.trigger("throttled", client="throttled", on_replica=True)
        other_client = await gateway.trigger("open")

        assert [response.status_code for response in burst] == [202] * 5
        # Five a second in bursts of five: five requests per second's window.
        assert [rate_limit_fields(response) for response in burst] == [
            ({"q": 5, "w": 1}, {"r": left, "t": 1}) for left in (4, 3, 2, 1, 0)
        ]
        assert_refused(refused, 429, "RATE_LIMITED")
        retry_after = int(refused.headers["Retry-After"])
        assert retry_after >= 1
        assert rate_limit_fields(refused) == ({"q": 5, "w": 1}, {"r": 0, "t": retry_after})
        assert other_client.status_code == 202
        assert await recorded_total(gateway, "throttled") == (5, 50)

        await asyncio.sleep(retry_after)

        assert (await gateway.trigger("throttled", client="throttled")).status_code == 202

    async def test_concurrent_triggers_over_the_burst_take_each_token_once(
        self, gateway: Gateway
    ) -> None:
        throttled = gateway.clients["throttled"].client_id
        async with gateway.runtime.pool.acquire() as connection:
            await rate_limits.set_client_rate_limit(
                connection, throttled, per_second=0.01, burst=10
            )
            # A full bucket, whatever earlier tests took from it.
            await connection.execute(
                "DELETE FROM rate_limit_buckets WHERE client_id = $1", throttled
            )
        recorded_before, _ = await recorded_total(gateway, "throttled")

        responses = await asyncio.gather(
            *(
                gateway.trigger("throttled", client="throttled", on_replica=i % 2 == 1)
                for i in range(40)
            )
        )

        assert outcomes(responses) == {"accepted": 10, "RATE_LIMITED": 30}
        accepted = [response for response in responses if response.status_code == 202]
        # Each accepted trigger took its own token: every count of what is left shows once.
        assert sorted(int(response.headers["RateLimit-Remaining"]) for response in accepted) == (
            list(range(10))
        )
        recorded_after, _ = await recorded_total(gateway, "throttled")
        assert recorded_after - recorded_before == 10
        async with gateway.runtime.pool.acquire() as connection:
            await rate_limits.set_client_rate_limit(
                connection, throttled, per_second=1000, burst=1000
            )

    async def test_a_limit_for_a_client_that_does_not_exist_is_refused(
        self, gateway: Gateway, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.setenv("DATABASE_URL", gateway.seeder.database_url)
        monkeypatch.setenv("POINTS_MODE", "development")
        limit = ["client", "set-rate-limit", "cli_missing", "--per-second", "5", "--burst", "5"]

        assert await points(*limit) == 1
        assert "client cli_missing does not exist" in capsys.readouterr().err

    async def test_the_rate_limit_comes_before_the_rule_checks(self, gateway: Gateway) -> None:
        throttled = gateway.clients["throttled"].client_id
        async with gateway.runtime.pool.acquire() as connection:
            await rate_limits.set_client_rate_limit(connection, throttled, per_second=0.01, burst=1)
        await gateway.trigger("throttled", client="throttled", rule_id="rul_does_not_exist")

        response = await gateway.trigger("paused", client="throttled")

        assert_refused(response, 429, "RATE_LIMITED")
        async with gateway.runtime.pool.acquire() as connection:
            await rate_limits.set_client_rate_limit(
                connection, throttled, per_second=1000, burst=1000
            )

    async def test_a_trigger_refused_after_it_took_its_token_says_what_is_left(
        self, gateway: Gateway
    ) -> None:
        throttled = gateway.clients["throttled"].client_id
        async with gateway.runtime.pool.acquire() as connection:
            await rate_limits.set_client_rate_limit(connection, throttled, per_second=0.01, burst=3)
            await connection.execute(
                "DELETE FROM rate_limit_buckets WHERE client_id = $1", throttled
            )

        unknown_rule = await gateway.trigger(
            "throttled", client="throttled", rule_id="rul_does_not_exist"
        )
        paused_rule = await gateway.trigger("paused", client="throttled")
        accepted = await gateway.trigger("throttled", client="throttled")

        assert_refused(unknown_rule, 400, "RULE_NOT_FOUND")
        assert_refused(paused_rule, 400, "RULE_INACTIVE")
        assert accepted.status_code == 202, accepted.text
        # Three in 300 s: the 0.01 a second it refills. Each answer took a token, and the
        # next whole one is 100 s away (a little less after the first).
        fields = [rate_limit_fields(answer) for answer in (unknown_rule, paused_rule, accepted)]
        assert [quota for quota, _ in fields] == [{"q": 3, "w": 300}] * 3
        assert [state["r"] for _, state in fields] == [2, 1, 0]
        assert all(99 <= state["t"] <= 100 for _, state in fields)
        async with gateway.runtime.pool.acquire() as connection:
            await rate_limits.set_client_rate_limit(
                connection, throttled, per_second=1000, burst=1000
            )


class TestCallbackUrls:
    @pytest.mark.parametrize(
        "callback_url", ["http://localhost:8080/points", "http://127.0.0.1/cb", "https://[::1]/cb"]
    )
    async def test_a_loopback_callback_is_accepted_in_development(
        self, gateway: Gateway, callback_url: str
    ) -> None:
        response = await gateway.trigger("open", callback_url=callback_url)

        assert response.status_code == 202, response.text

    @pytest.mark.parametrize(
        ("callback_url", "reason"),
        [
            ("https://10.1.2.3/cb", "a private address"),
            ("http://169.254.169.254/latest/meta-data", "a link-local address"),
            ("https://0.0.0.0/cb", "an unspecified address"),
            ("https://[ff02::1]/cb", "a multicast address"),
        ],
    )
    async def test_a_callback_to_a_non_public_address_is_refused_with_the_reason(
        self, gateway: Gateway, callback_url: str, reason: str
    ) -> None:
        response = await gateway.trigger("open", callback_url=callback_url)

        assert_refused(response, 400, "INVALID_CALLBACK_URL")
        assert reason in response.json()["detail"]

    async def test_a_replay_gets_its_original_answer_even_if_its_host_has_since_moved(
        self, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        first = await gateway.trigger(
            "open", callback_url="http://127.0.0.1/cb", request_id="moved"
        )
        assert first.status_code == 202, first.text

        async def host_now_private(url: str, **_: object) -> None:
            # Stands in for DNS: the name now resolves to a private address.
            raise Refused(f"{url} resolves to a private address", code="INVALID_CALLBACK_URL")

        monkeypatch.setattr(admission, "check_callback_url", host_now_private)
        replay = await gateway.trigger(
            "open", callback_url="http://127.0.0.1/cb", request_id="moved"
        )

        assert replay.status_code == 202, replay.text
        assert replay.json()["transactionId"] == first.json()["transactionId"]


class TestIdempotencyRetention:
    async def test_settled_requests_past_the_retention_are_purged_and_recent_ones_kept(
        self, gateway: Gateway
    ) -> None:
        old = (await gateway.trigger("open")).json()["requestId"]
        recent = (await gateway.trigger("open")).json()["requestId"]
        old_pending = (await gateway.trigger("open")).json()["requestId"]
        pool = gateway.runtime.pool
        await pool.execute(
            "UPDATE requests SET status = 'succeeded' WHERE request_id = ANY($1::text[])",
            [old, recent],
        )
        await pool.execute(
            "UPDATE requests SET created_at = now() - interval '8 days'"
            " WHERE request_id = ANY($1::text[])",
            [old, old_pending],
        )

        await housekeeping.purge_expired_requests(pool, retention_days=7, batch_size=1)

        assert_refused(await gateway.status(old), 404, "REQUEST_NOT_FOUND")
        assert (await gateway.status(recent)).status_code == 200
        # A pending request keeps the reservation a rejection would still free.
        assert (await gateway.status(old_pending)).status_code == 200

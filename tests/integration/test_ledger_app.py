"""The running ledger: its subscriber through a real broker, and its HTTP reads."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID, uuid4

import httpx
import jwt
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition
from cryptography.hazmat.primitives.asymmetric import ec

from contracts import (
    CLIENTS_LIFECYCLE,
    MEMBERS_LIFECYCLE,
    POINTS_REQUESTED,
    POINTS_RESULTS,
    TOPICS_TO_CREATE,
    PointsRequested,
    PointsRequestedEvent,
    PointsResultEvent,
)
from contracts.clients_lifecycle import ClientLifecycleEvent, ClientSnapshot
from contracts.members_lifecycle import MemberLifecycleEvent, MemberStanding
from infra import quarantine
from infra.kafka_admin import create_topics
from infra.tokens import API_AUDIENCE, JWKS_PATH, REALM_PATH, JwksVerifier
from services.ledger.app import create_app
from services.ledger.applying import PROCESSING_FAILED, apply_batch
from services.ledger.settings import LedgerSettings
from services.ledger.verification import verify_ledger
from tests.helpers import Service, eventually, produce

ISSUER_URL = "http://issuer.test"
#: A key under which a test's requests share a partition, so they share a batch too.
SHARED_PARTITION = b"staging:org-1:shared-partition"


class TestIssuer:
    """Signs tokens the way the rules service does and serves its JWKS in memory."""

    __test__ = False

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.kid = "test-key-1"

    def jwks(self) -> dict[str, Any]:
        public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**public, "kid": self.kid, "use": "sig", "alg": "ES256"}]}

    def verifier(self) -> JwksVerifier:
        def serve(request: httpx.Request) -> httpx.Response:
            assert request.url.path == JWKS_PATH
            return httpx.Response(200, json=self.jwks())

        return JwksVerifier(
            ISSUER_URL, http=httpx.AsyncClient(transport=httpx.MockTransport(serve))
        )

    def token(
        self,
        *,
        typ: Literal["client", "user"] = "client",
        org_id: str = "org-1",
        environment: str | None = "staging",
        expires_in: int = 300,
        role: str | None = None,
        subject: str | None = None,
    ) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER_URL + REALM_PATH,
            "aud": API_AUDIENCE,
            "typ": typ,
            "sub": subject or ("client-1" if typ == "client" else "user-1"),
            "org_id": org_id,
            "iat": now,
            "exp": now + expires_in,
        }
        if environment is not None:
            claims["environment"] = environment
        if role is not None:
            claims["role"] = role
        return jwt.encode(claims, self.key, algorithm="ES256", headers={"kid": self.kid})


def points_requested(
    amount: int,
    *,
    type: Literal["earn", "redeem"] = "earn",
    environment: str = "staging",
    user_id: str = "member-1",
    rule_id: str = "rule-1",
    expires_at: datetime | None = None,
) -> PointsRequestedEvent:
    return PointsRequestedEvent.new_event(
        data=PointsRequested(
            request_id=f"request-{uuid4().hex[:8]}",
            transaction_id=uuid4(),
            client_id="client-1",
            rule_id=rule_id,
            rule_version=1,
            user_id=user_id,
            type=type,
            amount=amount,
            callback_url=None,
            requested_at=datetime.now(UTC),
            expires_at=expires_at,
        ),
        environment=environment,  # type: ignore[arg-type]
        org_id="org-1",
        correlation_id=f"correlation-{uuid4().hex[:8]}",
    )


@pytest.fixture
def issuer() -> TestIssuer:
    return TestIssuer()


@pytest.fixture
async def ledger(
    database_url: str, kafka_bootstrap_servers: str, issuer: TestIssuer
) -> AsyncIterator[Service]:
    await create_topics(
        kafka_bootstrap_servers,
        [
            topic
            for topic in TOPICS_TO_CREATE
            if topic.name.startswith(
                (POINTS_REQUESTED, POINTS_RESULTS, CLIENTS_LIFECYCLE, MEMBERS_LIFECYCLE)
            )
        ],
    )
    settings = LedgerSettings(
        database_url=database_url,
        kafka_bootstrap_servers=kafka_bootstrap_servers,
        startup_timeout_seconds=15,
    )
    ledger = Service(*create_app(settings, verifier=issuer.verifier()))
    await ledger.runtime.start()
    try:
        yield ledger
    finally:
        await ledger.runtime.stop()


@pytest.fixture
async def reader(database_url: str, issuer: TestIssuer) -> AsyncIterator[Service]:
    """A ledger that serves reads only: PostgreSQL, no broker."""
    settings = LedgerSettings(database_url=database_url, startup_timeout_seconds=15)
    ledger = Service(*create_app(settings, verifier=issuer.verifier(), consume=False))
    await ledger.runtime.start()
    try:
        yield ledger
    finally:
        await ledger.runtime.stop()


def http_client(ledger: Service) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=ledger.app)
    return httpx.AsyncClient(transport=transport, base_url="http://ledger.test")


@pytest.fixture
async def http(reader: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(reader) as client:
        yield client


async def seed(ledger: Service, *events: PointsRequestedEvent) -> None:
    async with ledger.runtime.pool.acquire() as connection, connection.transaction():
        await apply_batch(connection, events)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def first_result(bootstrap_servers: str, timeout: float) -> PointsResultEvent:
    consumer = AIOKafkaConsumer(
        POINTS_RESULTS,
        bootstrap_servers=bootstrap_servers,
        group_id=f"test-{uuid4().hex[:8]}",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        async with asyncio.timeout(timeout):
            while True:
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    for record in records:
                        return PointsResultEvent.model_validate_json(record.value)
    finally:
        await consumer.stop()


async def wait_until_committed(
    bootstrap_servers: str, partition: TopicPartition, offset: int, *, timeout: float
) -> None:
    """Wait until the ledger's staging consumer group has committed ``offset`` on ``partition``."""
    # Never subscribes, so it reads the group's offsets without joining the group.
    observer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, group_id="ledger.staging", enable_auto_commit=False
    )
    await observer.start()
    try:
        async with asyncio.timeout(timeout):
            while True:
                if await observer.committed(partition) == offset:
                    return
                await asyncio.sleep(0.2)
    finally:
        await observer.stop()


class TestThroughTheBroker:
    async def test_a_requested_earn_is_applied_published_and_readable(
        self, ledger: Service, issuer: TestIssuer
    ) -> None:
        servers = ledger.runtime.settings.kafka_bootstrap_servers
        event = points_requested(120)
        producer = AIOKafkaProducer(bootstrap_servers=servers, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(
                POINTS_REQUESTED, event.model_dump_json().encode(), key=event.key().encode()
            )
            # A malformed message on the same partition is quarantined, not retried forever.
            malformed = await producer.send_and_wait(
                POINTS_REQUESTED, b"not json", key=event.key().encode()
            )
        finally:
            await producer.stop()

        result = await first_result(servers, timeout=30)
        partition = TopicPartition(POINTS_REQUESTED, malformed.partition)
        await wait_until_committed(servers, partition, malformed.offset + 1, timeout=30)

        assert result.type == "points.applied"
        assert result.data.transaction_id == event.data.transaction_id
        assert result.correlation_id == event.correlation_id
        assert result.data.balance == 120
        async with http_client(ledger) as http:
            response = await http.get(
                "/v1/members/member-1/balance",
                params={"environment": "staging"},
                headers=bearer(issuer.token()),
            )
        assert response.json() == {
            "userId": "member-1",
            "environment": "staging",
            "balance": 120,
            "expiring": [],
        }


class TestABlockedMember:
    async def test_requests_applied_once_the_block_arrives_are_rejected(
        self, ledger: Service
    ) -> None:
        servers = ledger.runtime.settings.kafka_bootstrap_servers
        block = MemberLifecycleEvent.new_event(
            data=MemberStanding(
                org_id="org-1",
                environment="staging",
                user_id="member-1",
                blocked=True,
                reason="abuse",
                changed_by="user-1",
                changed_at=datetime.now(UTC),
            ),
            environment="staging",
            org_id="org-1",
            correlation_id="corr-block",
        )
        await produce(servers, MEMBERS_LIFECYCLE, [block])

        async def blocked() -> bool:
            return bool(
                await ledger.runtime.pool.fetchval(
                    "SELECT blocked FROM accounts WHERE kind = 'member' AND owner_id = 'member-1'"
                )
            )

        await eventually(blocked, timeout=30, what="the block reaching the ledger")
        await produce(servers, POINTS_REQUESTED, [points_requested(10)])
        result = await first_result(servers, timeout=30)

        assert (result.data.status, result.data.reason) == ("rejected", "MEMBER_BLOCKED")


class TestARevokedClient:
    async def test_reads_nothing_once_its_revocation_arrives_while_others_still_read(
        self, ledger: Service, issuer: TestIssuer
    ) -> None:
        await seed(ledger, points_requested(30))
        revoked, other = issuer.token(subject="client-1"), issuer.token(subject="client-2")

        async def balance(token: str) -> httpx.Response:
            async with http_client(ledger) as http:
                return await http.get(
                    "/v1/members/member-1/balance",
                    params={"environment": "staging"},
                    headers=bearer(token),
                )

        before = await balance(revoked)
        revocation = ClientLifecycleEvent.new_event(
            data=ClientSnapshot(
                client_id="client-1",
                org_id="org-1",
                environment="staging",
                name="Partner app",
                status="revoked",
                signing_key_salt="salt-1",
            ),
            environment="staging",
            org_id="org-1",
            correlation_id="corr-revoke",
            type="client.revoked",
        )
        await produce(
            ledger.runtime.settings.kafka_bootstrap_servers, CLIENTS_LIFECYCLE, [revocation]
        )

        async def refused() -> bool:
            return (await balance(revoked)).status_code == 401

        await eventually(refused, timeout=30, what="the revocation reaching the ledger")
        assert before.status_code == 200
        assert (await balance(other)).json()["balance"] == 30


class TestARequestTheLedgerCannotApply:
    async def test_is_quarantined_and_settled_as_failed_while_the_next_one_applies(
        self, ledger: Service
    ) -> None:
        servers = ledger.runtime.settings.kafka_bootstrap_servers
        # Meets its contract, but no B-tree index can hold a member id this long.
        unstorable = points_requested(10, user_id=base64.b64encode(os.urandom(6_000)).decode())
        after = points_requested(30, user_id="member-after")
        await produce(servers, POINTS_REQUESTED, [unstorable, after], key=SHARED_PARTITION)

        results = await results_by_transaction(servers, 2, timeout=30)

        failed = results[unstorable.data.transaction_id]
        assert (failed.type, failed.data.status, failed.data.reason) == (
            "points.rejected",
            "rejected",
            PROCESSING_FAILED,
        )
        assert results[after.data.transaction_id].data.status == "applied"
        async with ledger.runtime.pool.acquire() as connection:
            [kept] = await quarantine.list_quarantined(connection, include_resolved=True)
            assert await verify_ledger(connection) == []
        assert (kept.topic, kept.resolution, kept.event_id) == (
            POINTS_REQUESTED,
            "failed",
            unstorable.event_id,
        )


async def results_by_transaction(
    bootstrap_servers: str, count: int, timeout: float
) -> dict[UUID, PointsResultEvent]:
    consumer = AIOKafkaConsumer(
        POINTS_RESULTS,
        bootstrap_servers=bootstrap_servers,
        group_id=f"test-{uuid4().hex[:8]}",
        auto_offset_reset="earliest",
    )
    results: dict[UUID, PointsResultEvent] = {}
    await consumer.start()
    try:
        async with asyncio.timeout(timeout):
            while len(results) < count:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        result = PointsResultEvent.model_validate_json(record.value)
                        results[result.data.transaction_id] = result
    finally:
        await consumer.stop()
    return results


class TestBalanceReads:
    async def test_a_client_reads_a_members_balance_in_its_environment(
        self, reader: Service, http: httpx.AsyncClient, issuer: TestIssuer
    ) -> None:
        await seed(reader, points_requested(50), points_requested(20, type="redeem"))

        response = await http.get(
            "/v1/members/member-1/balance",
            params={"environment": "staging"},
            headers=bearer(issuer.token()),
        )

        assert response.status_code == 200
        assert response.json() == {
            "userId": "member-1",
            "environment": "staging",
            "balance": 30,
            "expiring": [],
        }

    async def test_the_balance_lists_the_points_that_expire_soonest_first(
        self, reader: Service, http: httpx.AsyncClient, issuer: TestIssuer
    ) -> None:
        sooner, later = datetime(2031, 1, 1, tzinfo=UTC), datetime(2031, 6, 1, tzinfo=UTC)
        await seed(
            reader,
            points_requested(40, expires_at=later),
            points_requested(25, expires_at=sooner),
            points_requested(10),
            points_requested(30, type="redeem"),
        )

        response = await http.get(
            "/v1/members/member-1/balance",
            params={"environment": "staging"},
            headers=bearer(issuer.token()),
        )

        assert response.json() == {
            "userId": "member-1",
            "environment": "staging",
            "balance": 45,
            "expiring": [{"amount": 35, "expiresAt": "2031-06-01T00:00:00Z"}],
        }

    async def test_an_unknown_member_has_a_zero_balance(
        self, http: httpx.AsyncClient, issuer: TestIssuer
    ) -> None:
        response = await http.get(
            "/v1/members/nobody/balance",
            params={"environment": "staging"},
            headers=bearer(issuer.token()),
        )

        assert response.json()["balance"] == 0

    async def test_another_organisation_sees_none_of_the_members_points(
        self, reader: Service, http: httpx.AsyncClient, issuer: TestIssuer
    ) -> None:
        await seed(reader, points_requested(50))
        token = issuer.token(org_id="org-2")

        balance = await http.get(
            "/v1/members/member-1/balance", params={"environment": "staging"}, headers=bearer(token)
        )
        history = await http.get(
            "/v1/members/member-1/transactions",
            params={"environment": "staging"},
            headers=bearer(token),
        )

        assert balance.json()["balance"] == 0
        assert history.json() == {"items": [], "nextCursor": None}

    async def test_a_client_may_not_read_another_environment(
        self, http: httpx.AsyncClient, issuer: TestIssuer
    ) -> None:
        response = await http.get(
            "/v1/members/member-1/balance",
            params={"environment": "production"},
            headers=bearer(issuer.token(environment="staging")),
        )

        assert response.status_code == 403
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "ENVIRONMENT_FORBIDDEN"

    async def test_a_business_user_reads_either_environment(
        self, reader: Service, http: httpx.AsyncClient, issuer: TestIssuer
    ) -> None:
        await seed(reader, points_requested(7, environment="production"))
        token = issuer.token(typ="user", environment=None)

        balances = [
            (
                await http.get(
                    "/v1/members/member-1/balance",
                    params={"environment": environment},
                    headers=bearer(token),
                )
            ).json()["balance"]
            for environment in ("staging", "production")
        ]

        assert balances == [0, 7]

    @pytest.mark.parametrize(
        "headers",
        [{}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic abc"}],
        ids=["missing", "malformed", "not-bearer"],
    )
    async def test_a_missing_or_invalid_token_is_unauthorized(
        self, http: httpx.AsyncClient, headers: dict[str, str]
    ) -> None:
        response = await http.get(
            "/v1/members/member-1/balance", params={"environment": "staging"}, headers=headers
        )

        assert response.status_code == 401
        assert response.json()["code"] == "UNAUTHORIZED"

    async def test_an_expired_token_is_unauthorized(
        self, http: httpx.AsyncClient, issuer: TestIssuer
    ) -> None:
        response = await http.get(
            "/v1/members/member-1/balance",
            params={"environment": "staging"},
            headers=bearer(issuer.token(expires_in=-60)),
        )

        assert response.status_code == 401

    async def test_an_unknown_environment_is_a_bad_request(
        self, http: httpx.AsyncClient, issuer: TestIssuer
    ) -> None:
        response = await http.get(
            "/v1/members/member-1/balance",
            params={"environment": "moon"},
            headers=bearer(issuer.token(typ="user", environment=None)),
        )

        assert response.status_code == 400
        assert response.json()["code"] == "UNKNOWN_ENVIRONMENT"


class TestHealth:
    async def test_a_read_only_ledger_is_ready_without_a_broker(
        self, http: httpx.AsyncClient
    ) -> None:
        response = await http.get("/readyz")

        assert response.status_code == 200
        assert response.json()["checks"] == {"database": True}


class TestHistoryReads:
    async def test_pages_through_transactions_newest_first_in_camel_case(
        self, reader: Service, http: httpx.AsyncClient, issuer: TestIssuer
    ) -> None:
        events = [points_requested(n) for n in (1, 2, 3)]
        for event in events:
            await seed(reader, event)
        path, headers = "/v1/members/member-1/transactions", bearer(issuer.token())

        first = (
            await http.get(path, params={"environment": "staging", "limit": 2}, headers=headers)
        ).json()
        second = (
            await http.get(
                path,
                params={"environment": "staging", "limit": 2, "cursor": first["nextCursor"]},
                headers=headers,
            )
        ).json()

        assert [item["amount"] for item in first["items"]] == [3, 2]
        assert set(first["items"][0]) == {
            "transactionId",
            "userId",
            "requestId",
            "ruleId",
            "type",
            "amount",
            "status",
            "reason",
            "createdAt",
        }
        assert [item["transactionId"] for item in second["items"]] == [
            str(events[0].data.transaction_id)
        ]
        assert second["nextCursor"] is None

    async def test_a_cursor_it_did_not_issue_is_a_bad_request(
        self, http: httpx.AsyncClient, issuer: TestIssuer
    ) -> None:
        response = await http.get(
            "/v1/members/member-1/transactions",
            params={"environment": "staging", "cursor": "bogus!"},
            headers=bearer(issuer.token()),
        )

        assert response.status_code == 400
        assert response.json()["code"] == "INVALID_CURSOR"

    @pytest.mark.parametrize("seq", [2**63, 10**30])
    async def test_a_cursor_past_what_postgresql_stores_is_a_bad_request(
        self, http: httpx.AsyncClient, issuer: TestIssuer, seq: int
    ) -> None:
        cursor = base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode()

        response = await http.get(
            "/v1/members/member-1/transactions",
            params={"environment": "staging", "cursor": cursor},
            headers=bearer(issuer.token()),
        )

        assert response.status_code == 400
        assert response.json()["code"] == "INVALID_CURSOR"


def business_user(
    issuer: TestIssuer, role: str = "editor", org_id: str = "org-1"
) -> dict[str, str]:
    return bearer(issuer.token(typ="user", environment=None, role=role, org_id=org_id))


class TestReversalEndpoint:
    async def test_an_editor_reverses_an_earn_and_gets_the_outcome_in_camel_case(
        self, reader: Service, http: httpx.AsyncClient, issuer: TestIssuer
    ) -> None:
        earn = points_requested(80)
        await seed(reader, earn, points_requested(30, type="redeem"))
        reversal_id = str(uuid4())

        response = await http.post(
            f"/v1/transactions/{earn.data.transaction_id}/reversal",
            json={"reversalId": reversal_id, "reason": "mistaken award"},
            headers=business_user(issuer),
        )

        assert response.status_code == 201
        body = response.json()
        assert {key: body[key] for key in ("reversalId", "reversed", "uncovered", "balance")} == {
            "reversalId": reversal_id,
            "reversed": 50,
            "uncovered": 30,
            "balance": 0,
        }
        assert (body["transactionId"], body["actor"]) == (str(earn.data.transaction_id), "user-1")

    async def test_a_repeated_reversal_answers_200_with_the_first_outcome(
        self, reader: Service, http: httpx.AsyncClient, issuer: TestIssuer
    ) -> None:
        earn = points_requested(80)
        await seed(reader, earn)
        path = f"/v1/transactions/{earn.data.transaction_id}/reversal"

        first = await http.post(
            path, json={"reversalId": str(uuid4()), "reason": "x"}, headers=business_user(issuer)
        )
        again = await http.post(
            path, json={"reversalId": str(uuid4()), "reason": "y"}, headers=business_user(issuer)
        )

        assert (first.status_code, again.status_code) == (201, 200)
        assert again.json() == first.json()

    @pytest.mark.parametrize(
        ("typ", "role", "code"),
        [("user", "viewer", "READ_ONLY_ROLE"), ("client", None, "FORBIDDEN")],
        ids=["viewer", "client"],
    )
    async def test_viewers_and_clients_may_not_reverse(
        self,
        reader: Service,
        http: httpx.AsyncClient,
        issuer: TestIssuer,
        typ: Literal["client", "user"],
        role: str | None,
        code: str,
    ) -> None:
        earn = points_requested(80)
        await seed(reader, earn)

        response = await http.post(
            f"/v1/transactions/{earn.data.transaction_id}/reversal",
            json={"reversalId": str(uuid4()), "reason": "x"},
            headers=bearer(issuer.token(typ=typ, role=role)),
        )

        assert response.status_code == 403
        assert response.json()["code"] == code

    async def test_another_organisations_transaction_is_not_found(
        self, reader: Service, http: httpx.AsyncClient, issuer: TestIssuer
    ) -> None:
        earn = points_requested(80)
        await seed(reader, earn)

        response = await http.post(
            f"/v1/transactions/{earn.data.transaction_id}/reversal",
            json={"reversalId": str(uuid4()), "reason": "x"},
            headers=business_user(issuer, role="admin", org_id="org-2"),
        )

        assert response.status_code == 404
        assert response.json()["code"] == "TRANSACTION_NOT_FOUND"

    async def test_a_rejected_transaction_is_a_conflict(
        self, reader: Service, http: httpx.AsyncClient, issuer: TestIssuer
    ) -> None:
        redeem = points_requested(5, type="redeem")
        await seed(reader, redeem)

        response = await http.post(
            f"/v1/transactions/{redeem.data.transaction_id}/reversal",
            json={"reversalId": str(uuid4()), "reason": "x"},
            headers=business_user(issuer),
        )

        assert response.status_code == 409
        assert response.json()["code"] == "REJECTED_NOT_REVERSIBLE"

    async def test_a_missing_reason_is_a_bad_request(
        self, reader: Service, http: httpx.AsyncClient, issuer: TestIssuer
    ) -> None:
        response = await http.post(
            f"/v1/transactions/{uuid4()}/reversal",
            json={"reversalId": str(uuid4()), "reason": ""},
            headers=business_user(issuer),
        )

        assert response.status_code == 400
        assert response.json()["code"] == "INVALID_REQUEST"


class TestRuleTotalsEndpoint:
    async def test_a_business_user_reads_a_rules_totals_in_camel_case(
        self, reader: Service, http: httpx.AsyncClient, issuer: TestIssuer
    ) -> None:
        await seed(reader, points_requested(50), points_requested(20, type="redeem"))

        response = await http.get(
            "/v1/rules/rule-1/totals",
            params={"environment": "staging"},
            headers=business_user(issuer, role="viewer"),
        )

        assert response.status_code == 200
        assert response.json() == {
            "ruleId": "rule-1",
            "environment": "staging",
            "earned": 50,
            "redeemed": 20,
            "reversed": 0,
            "reversedEarned": 0,
            "reversedRedeemed": 0,
            "uncovered": 0,
            "expired": 0,
            "net": 30,
            "transactions": 2,
            "rejected": 0,
        }

    async def test_another_organisation_sees_zeros(
        self, reader: Service, http: httpx.AsyncClient, issuer: TestIssuer
    ) -> None:
        await seed(reader, points_requested(50))

        response = await http.get(
            "/v1/rules/rule-1/totals",
            params={"environment": "staging"},
            headers=business_user(issuer, org_id="org-2"),
        )

        assert (response.json()["earned"], response.json()["transactions"]) == (0, 0)

    async def test_a_client_may_not_read_rule_totals(
        self, http: httpx.AsyncClient, issuer: TestIssuer
    ) -> None:
        response = await http.get(
            "/v1/rules/rule-1/totals",
            params={"environment": "staging"},
            headers=bearer(issuer.token()),
        )

        assert response.status_code == 403


class TestRuleTransactionsEndpoint:
    async def test_lists_every_members_transactions_of_the_rule_newest_first(
        self, reader: Service, http: httpx.AsyncClient, issuer: TestIssuer
    ) -> None:
        await seed(
            reader,
            points_requested(5, user_id="member-1"),
            points_requested(7, user_id="member-2"),
            points_requested(9, user_id="member-1", rule_id="rule-2"),
        )
        await seed(reader, points_requested(3, user_id="member-2", type="redeem"))

        first = await http.get(
            "/v1/rules/rule-1/transactions",
            params={"environment": "staging", "limit": 2},
            headers=business_user(issuer, role="viewer"),
        )
        second = await http.get(
            "/v1/rules/rule-1/transactions",
            params={"environment": "staging", "cursor": first.json()["nextCursor"]},
            headers=business_user(issuer, role="viewer"),
        )

        assert first.status_code == 200
        assert [
            (item["userId"], item["type"], item["amount"]) for item in first.json()["items"]
        ] == [
            ("member-2", "redeem", 3),
            ("member-2", "earn", 7),
        ]
        assert [item["amount"] for item in second.json()["items"]] == [5]
        assert second.json()["nextCursor"] is None

    async def test_another_organisation_sees_none_of_them(
        self, reader: Service, http: httpx.AsyncClient, issuer: TestIssuer
    ) -> None:
        await seed(reader, points_requested(50))

        response = await http.get(
            "/v1/rules/rule-1/transactions",
            params={"environment": "staging"},
            headers=business_user(issuer, org_id="org-2"),
        )

        assert response.json() == {"items": [], "nextCursor": None}

    async def test_a_client_may_not_list_a_rules_transactions(
        self, http: httpx.AsyncClient, issuer: TestIssuer
    ) -> None:
        response = await http.get(
            "/v1/rules/rule-1/transactions",
            params={"environment": "staging"},
            headers=bearer(issuer.token()),
        )

        assert response.status_code == 403

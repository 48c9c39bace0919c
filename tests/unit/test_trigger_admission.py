"""The gateway's admission against fake statements: which batches run, in what order,
and what a trigger's sender gets back (rules as plain dicts: records read the same)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from infra.problems import Problem, is_unavailable
from services.trigger import admission
from services.trigger.admission import (
    Admission,
    Arrival,
    ClientAccess,
    Gateway,
    Receipt,
)
from services.trigger.checks import Caller, CheckedTrigger, Lookup, Refused, Trigger
from services.trigger.rate_limits import RateLimit
from services.trigger.settings import TriggerSettings
from services.trigger.signatures import SignedRequest
from tests.unit.test_trigger_checks import rule as checks_rule

CALLER = Caller(client_id="cli_1", org_id="org_1", environment="staging")
UNSIGNED = SignedRequest("POST", "/v1/points/requests", b"{}", None, None)
GRANTED = RateLimit(granted=True, tokens=99, per_second=100, burst=100)
EXHAUSTED = RateLimit(granted=False, tokens=0.25, per_second=0.5, burst=10)


def rule(**overrides: Any) -> dict[str, Any]:
    """The checks' active rule, in its period today (the gateway checks against the clock)."""
    now = datetime.now(UTC)
    period = {"starts_at": now - timedelta(days=1), "ends_at": now + timedelta(days=1)}
    return checks_rule(**{**period, **overrides})


def trigger(request_id: str | None = None, callback_url: str | None = None) -> Trigger:
    return Trigger("member-1", "rul_1", 10, request_id or uuid.uuid4().hex, callback_url)


class FakeStatements:
    """The gateway's two statements, answering from what the test sets and keeping
    every batch they were given."""

    def __init__(self) -> None:
        self.rule: dict[str, Any] | None = rule()
        self.access = ClientAccess(revoked=False, request_signing_key=None)
        self.rate_limit = GRANTED
        self.earlier: dict[str, tuple[uuid.UUID, str]] = {}  # requestId: transaction, body hash
        self.member_blocked = False
        self.admitted: list[list[Arrival]] = []
        self.recorded: list[list[CheckedTrigger]] = []
        self.failure: BaseException | None = None  # raised by a batch admitting "bad"
        self.first_admission_held = asyncio.Event()
        self.first_admission_held.set()

    async def admit(self, batch: list[Arrival]) -> list[Admission]:
        self.admitted.append(batch)
        if len(self.admitted) == 1:
            await self.first_admission_held.wait()
        if self.failure is not None and any(a.trigger.request_id == "bad" for a in batch):
            raise self.failure
        return [self.admission(arrival.trigger) for arrival in batch]

    def admission(self, trigger: Trigger) -> Admission:
        transaction_id, body_hash = self.earlier.get(trigger.request_id, (None, None))
        lookup = Lookup(self.rule, transaction_id, body_hash, self.member_blocked)
        return Admission(self.access, self.rate_limit, lookup)

    async def record(self, batch: list[CheckedTrigger]) -> list[dict[str, Any]]:
        self.recorded.append(batch)
        return [answer(checked) for checked in batch]

    def gateway(self, **settings: Any) -> Gateway:
        return Gateway(
            TriggerSettings(**settings),
            admit=self.admit,
            record=self.record,
        )


def answer(checked: CheckedTrigger) -> dict[str, Any]:
    return {
        "requestId": checked.trigger.request_id,
        "transactionId": str(checked.event.data.transaction_id),
        "status": "pending",
    }


async def accept(gateway: Gateway, sent: Trigger | None = None) -> Receipt:
    return await gateway.accept(CALLER, sent or trigger(), UNSIGNED, "correlation-1")


async def refusal(gateway: Gateway, sent: Trigger | None = None) -> Problem:
    with pytest.raises(Problem) as refused:
        await accept(gateway, sent)
    return refused.value


async def behind_a_running_batch(
    statements: FakeStatements, request_ids: list[str]
) -> list[Receipt | BaseException]:
    """The outcomes of triggers sent while another's admission runs (one batch in flight
    at a time), so that they are admitted together in the next batch."""
    gateway = statements.gateway(db_batches_in_flight=1)
    statements.first_admission_held.clear()
    first = asyncio.create_task(accept(gateway))
    await asyncio.sleep(0)
    batch = [asyncio.create_task(accept(gateway, trigger(i))) for i in request_ids]
    await asyncio.sleep(0)
    statements.first_admission_held.set()
    await first
    return list(await asyncio.gather(*batch, return_exceptions=True))


@pytest.fixture
def statements() -> FakeStatements:
    return FakeStatements()


class TestAcceptingATrigger:
    async def test_a_valid_trigger_is_admitted_then_recorded_and_answered_pending(
        self, statements: FakeStatements
    ) -> None:
        sent = trigger("req-1")

        receipt = await accept(statements.gateway(), sent)

        assert (receipt.answer["requestId"], receipt.answer["status"]) == ("req-1", "pending")
        assert receipt.rate_limit == GRANTED
        assert [len(batch) for batch in statements.admitted] == [1]
        assert [checked.trigger for checked in statements.recorded[0]] == [sent]

    async def test_a_trigger_its_rule_refuses_gets_the_rules_code_and_nothing_is_recorded(
        self, statements: FakeStatements
    ) -> None:
        statements.rule = rule(status="paused")

        refused = await refusal(statements.gateway())

        assert (refused.status, refused.code) == (400, "RULE_INACTIVE")
        assert statements.recorded == []

    async def test_a_rate_limited_trigger_is_told_when_to_retry_and_nothing_is_recorded(
        self, statements: FakeStatements
    ) -> None:
        statements.rate_limit = EXHAUSTED

        refused = await refusal(statements.gateway())

        assert (refused.status, refused.code) == (429, "RATE_LIMITED")
        assert refused.headers["Retry-After"] == "2"
        assert refused.headers["RateLimit"] == '"burst";r=0;t=2'
        assert refused.headers["RateLimit-Policy"] == '"burst";q=10;w=20'
        assert refused.headers["RateLimit-Limit"] == "10"
        assert statements.recorded == []

    @pytest.mark.parametrize(
        ("earlier_body_hash", "rule_", "code"),
        [(None, None, "RULE_NOT_FOUND"), ("another body", rule(), "REQUEST_ID_REUSED")],
    )
    async def test_a_trigger_refused_after_it_took_its_token_is_told_what_is_left(
        self,
        statements: FakeStatements,
        earlier_body_hash: str | None,
        rule_: dict[str, Any] | None,
        code: str,
    ) -> None:
        statements.rule = rule_
        if earlier_body_hash is not None:
            statements.earlier["req-1"] = (uuid.uuid4(), earlier_body_hash)

        refused = await refusal(statements.gateway(), trigger("req-1"))

        assert refused.code == code
        assert refused.headers["RateLimit"] == '"burst";r=99;t=1'
        assert refused.headers["RateLimit-Policy"] == '"burst";q=100;w=1'

    async def test_a_repeated_request_id_gets_the_original_answer_and_is_not_recorded_again(
        self, statements: FakeStatements
    ) -> None:
        original, sent = uuid.uuid4(), trigger("req-1")
        statements.earlier["req-1"] = (original, sent.body_hash())

        receipt = await accept(statements.gateway(), sent)

        assert receipt.answer["transactionId"] == str(original)
        assert statements.recorded == []

    async def test_a_revoked_client_is_unauthorised(self, statements: FakeStatements) -> None:
        statements.access = ClientAccess(revoked=True, request_signing_key=None)

        refused = await refusal(statements.gateway())

        assert (refused.status, refused.code) == (401, "UNAUTHORIZED")
        assert refused.headers["WWW-Authenticate"] == 'Bearer realm="partner"'
        assert refused.headers["RateLimit"] == '"burst";r=99;t=1'

    async def test_a_client_the_gateway_has_not_seen_yet_is_asked_to_retry_in_a_second(
        self, statements: FakeStatements
    ) -> None:
        statements.access = ClientAccess(revoked=False, request_signing_key=None, known=False)

        refused = await refusal(statements.gateway())

        assert (refused.status, refused.code) == (503, "CLIENT_NOT_READY")
        assert refused.headers["Retry-After"] == "1"
        assert refused.headers["RateLimit"] == '"burst";r=99;t=1'

    async def test_a_member_the_business_blocked_is_refused_and_nothing_is_recorded(
        self, statements: FakeStatements
    ) -> None:
        statements.member_blocked = True

        refused = await refusal(statements.gateway())

        assert (refused.status, refused.code) == (400, "MEMBER_BLOCKED")
        assert "member-1" in refused.detail
        assert statements.recorded == []

    async def test_a_blocked_member_on_an_unknown_rule_hears_that_the_rule_is_not_found(
        self, statements: FakeStatements
    ) -> None:
        statements.rule, statements.member_blocked = None, True

        refused = await refusal(statements.gateway())

        assert refused.code == "RULE_NOT_FOUND"

    async def test_an_earn_on_a_rule_whose_points_expire_carries_when_they_expire(
        self, statements: FakeStatements
    ) -> None:
        statements.rule = rule(points_expire_after_days=7)

        await accept(statements.gateway())

        requested = statements.recorded[0][0].event.data
        assert requested.expires_at == requested.requested_at + timedelta(days=7)


class TestBatches:
    async def test_triggers_arriving_while_a_batch_runs_are_admitted_together_in_the_next(
        self, statements: FakeStatements
    ) -> None:
        outcomes = await behind_a_running_batch(statements, ["req-1", "req-2", "req-3", "req-4"])

        assert [len(batch) for batch in statements.admitted] == [1, 4]
        assert all(isinstance(outcome, Receipt) for outcome in outcomes)

    async def test_a_failing_batch_is_run_again_one_by_one_and_fails_only_its_culprit(
        self, statements: FakeStatements
    ) -> None:
        statements.failure = asyncpg.DataError("invalid byte sequence")

        outcomes = await behind_a_running_batch(statements, ["good-1", "bad", "good-2"])

        assert [len(batch) for batch in statements.admitted] == [1, 3, 1, 1, 1]
        assert isinstance(outcomes[1], asyncpg.DataError)
        assert all(isinstance(outcome, Receipt) for outcome in (outcomes[0], outcomes[2]))

    async def test_an_unavailable_database_fails_every_trigger_of_the_batch_at_once_as_a_503(
        self, statements: FakeStatements
    ) -> None:
        statements.failure = ConnectionRefusedError("the database is away")

        outcomes = await behind_a_running_batch(statements, ["good-1", "bad", "good-2"])

        assert [len(batch) for batch in statements.admitted] == [1, 3]
        failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        assert len(failures) == 3
        assert all(is_unavailable(failure) for failure in failures)  # each answered 503


class TestEveryTriggerOnCurrentData:
    async def test_a_rule_paused_since_the_last_trigger_refuses_the_next_one(
        self, statements: FakeStatements
    ) -> None:
        gateway = statements.gateway()
        await accept(gateway)
        statements.rule = rule(status="paused")

        refused = await refusal(gateway)

        assert (refused.status, refused.code) == (400, "RULE_INACTIVE")
        assert (len(statements.admitted), len(statements.recorded)) == (2, 1)

    async def test_a_client_revoked_since_the_last_trigger_is_refused_at_once(
        self, statements: FakeStatements
    ) -> None:
        gateway = statements.gateway()
        await accept(gateway)
        statements.access = ClientAccess(revoked=True, request_signing_key=None)

        refused = await refusal(gateway)

        assert (refused.status, refused.code) == (401, "UNAUTHORIZED")
        assert len(statements.recorded) == 1

    async def test_a_callback_url_that_is_refused_records_nothing(
        self, statements: FakeStatements, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        async def unresolvable(url: str, **_: object) -> None:
            raise Refused(f"{url} did not resolve in time", code="INVALID_CALLBACK_URL")

        monkeypatch.setattr(admission, "check_callback_url", unresolvable)
        refused = await refusal(
            statements.gateway(), trigger(callback_url="https://slow.example/cb")
        )

        assert refused.code == "INVALID_CALLBACK_URL"
        assert statements.recorded == []

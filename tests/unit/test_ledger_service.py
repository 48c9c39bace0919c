"""The ledger's pure logic: deciding requests, their results' bytes, read scopes and
history cursors."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, cast
from uuid import UUID, uuid4

import pytest

from contracts import PointsRequested, PointsRequestedEvent, PointsResult, PointsResultEvent
from infra.tokens import Principal
from services.ledger.access import EnvironmentForbidden, UnknownEnvironment, read_scope
from services.ledger.applying import (
    INSUFFICIENT_BALANCE,
    LEAST_PART,
    MEMBER_BLOCKED,
    Outcome,
    decide,
    member_account,
    members_apart,
    pool_account,
    result_row,
)
from services.ledger.expiry import expired_row
from services.ledger.lots import Lot, MemberLots
from services.ledger.reads import InvalidCursor, decode_cursor, encode_cursor


def request(
    type: Literal["earn", "redeem"],
    amount: int,
    *,
    environment: Literal["staging", "production"] = "staging",
    callback_url: str | None = None,
    user_id: str = "member-1",
) -> PointsRequestedEvent:
    return PointsRequestedEvent.new_event(
        data=PointsRequested(
            request_id=uuid4().hex,
            transaction_id=uuid4(),
            client_id="client-1",
            rule_id="rule-1",
            rule_version=1,
            user_id=user_id,
            type=type,
            amount=amount,
            callback_url=callback_url,
            requested_at=datetime.now(UTC),
        ),
        environment=environment,
        org_id="org-1",
        correlation_id="correlation-1",
    )


def principal(kind: Literal["client", "user"], environment: str | None) -> Principal:
    return Principal(
        kind=kind,
        subject="someone",
        org_id="org-1",
        environment=environment,
        role=None,
        scopes=frozenset(),
        claims={},
    )


class TestMembersApart:
    def test_parts_share_no_member_and_keep_the_batch_and_its_order(self) -> None:
        batch = [
            request("earn", n % 90 + 1, user_id=f"member-{n % 7}", environment=environment)
            for n in range(3 * LEAST_PART)
            for environment in ("staging", "production")
        ]

        parts = members_apart(batch, 4)

        assert 1 < len(parts) <= 4 and all(parts)
        assert sorted(id(event) for part in parts for event in part) == sorted(map(id, batch))
        for part in parts:
            taken = set(map(id, part))
            assert part == [event for event in batch if id(event) in taken]  # batch order
        members = [{member_account(event) for event in part} for part in parts]
        assert all(a.isdisjoint(b) for i, a in enumerate(members) for b in members[i + 1 :])

    @pytest.mark.parametrize(
        ("size", "asked", "applied_as"),
        [(LEAST_PART * 2 - 1, 4, 1), (LEAST_PART * 2, 4, 2), (LEAST_PART * 8, 1, 1)],
    )
    def test_small_batches_are_not_cut_into_parts_of_fewer_than_the_least(
        self, size: int, asked: int, applied_as: int
    ) -> None:
        batch = [request("earn", 1, user_id=f"member-{n}") for n in range(size)]

        parts = members_apart(batch, asked)

        assert len(parts) == applied_as
        assert sum(map(len, parts)) == size


class TestDecide:
    def test_an_earn_moves_points_from_the_pool_to_the_member(self) -> None:
        earn = request("earn", 30)
        balances = {member_account(earn): 0, pool_account(earn): 0}

        [outcome] = decide([earn], balances)

        assert outcome.status == "applied"
        assert dict(outcome.entries) == {pool_account(earn): -30, member_account(earn): 30}
        assert balances == {member_account(earn): 30, pool_account(earn): -30}

    def test_a_redeem_beyond_the_balance_is_rejected_without_entries(self) -> None:
        redeem = request("redeem", 31)
        balances = {member_account(redeem): 30, pool_account(redeem): -30}

        [outcome] = decide([redeem], balances)

        assert (outcome.status, outcome.reason, outcome.entries) == (
            "rejected",
            INSUFFICIENT_BALANCE,
            (),
        )
        assert outcome.member_balance == 30

    def test_requests_are_decided_in_order(self) -> None:
        events = [request("redeem", 5), request("earn", 5), request("redeem", 5)]
        balances = {member_account(events[0]): 0, pool_account(events[0]): 0}

        statuses = [outcome.status for outcome in decide(events, balances)]

        assert statuses == ["rejected", "applied", "applied"]

    def test_every_request_of_a_blocked_member_is_rejected_and_moves_nothing(self) -> None:
        events = [request("earn", 5), request("redeem", 5)]
        balances = {member_account(events[0]): 10, pool_account(events[0]): -10}

        outcomes = decide(events, balances, blocked=frozenset({member_account(events[0])}))

        assert [(o.status, o.reason, o.entries) for o in outcomes] == [
            ("rejected", MEMBER_BLOCKED, ()),
            ("rejected", MEMBER_BLOCKED, ()),
        ]
        assert balances == {member_account(events[0]): 10, pool_account(events[0]): -10}

    def test_a_redeem_takes_the_soonest_expiring_lot_first_then_points_without_expiry(
        self,
    ) -> None:
        now = datetime.now(UTC)
        sooner, later = (Lot(uuid4(), now + timedelta(days=d), 10, 10) for d in (1, 2))
        redeem = request("redeem", 15)
        member = member_account(redeem)
        held = {member: MemberLots([sooner, later])}
        balances = {member: 40, pool_account(redeem): 0}

        [outcome] = decide([redeem], balances, held=held, now=now)

        assert outcome.lot_uses == ((sooner.id, 10), (later.id, 5))
        assert (sooner.remaining, later.remaining) == (0, 5)

    def test_points_whose_expiry_passed_cannot_be_redeemed(self) -> None:
        now = datetime.now(UTC)
        due = Lot(uuid4(), now - timedelta(seconds=1), 10, 10)
        redeem = request("redeem", 11)
        member = member_account(redeem)
        balances = {member: 20, pool_account(redeem): 0}

        [outcome] = decide([redeem], balances, held={member: MemberLots([due])}, now=now)

        assert (outcome.status, outcome.reason) == ("rejected", INSUFFICIENT_BALANCE)


def validated_result(outcome: Outcome, event_id: UUID, processed_at: datetime) -> PointsResultEvent:
    """The result event of ``outcome`` built through the contract's models, validated."""
    event, data = outcome.event, outcome.event.data
    return PointsResultEvent(
        event_id=event_id,
        type=f"points.{outcome.status}",
        version=PointsResultEvent.VERSION,
        occurred_at=processed_at,
        environment=event.environment,
        org_id=event.org_id,
        correlation_id=event.correlation_id,
        data=PointsResult(
            request_id=data.request_id,
            transaction_id=data.transaction_id,
            client_id=data.client_id,
            rule_id=data.rule_id,
            user_id=data.user_id,
            type=data.type,
            amount=data.amount,
            status=outcome.status,
            reason=outcome.reason,
            balance=outcome.member_balance,
            callback_url=data.callback_url,
            processed_at=processed_at,
        ),
    )


class TestResultRow:
    @pytest.mark.parametrize(
        "events",
        [
            [request("earn", 30)],
            [request("redeem", 31, callback_url="https://partner.example/points?id=1&é=\u2603")],
            [request("earn", 5, environment="production"), request("redeem", 5)],
        ],
    )
    @pytest.mark.parametrize(
        "processed_at",
        [datetime.now(UTC), datetime(2026, 11, 26, 12, 0, tzinfo=UTC)],
    )
    def test_writes_the_bytes_the_validated_contract_model_writes(
        self, events: list[PointsRequestedEvent], processed_at: datetime
    ) -> None:
        balances = {
            key: 0 for event in events for key in (member_account(event), pool_account(event))
        }
        for outcome in decide(events, balances):
            topic, key, payload, headers = result_row(outcome, processed_at)

            sent = PointsResultEvent.model_validate_json(payload)
            expected = validated_result(outcome, sent.event_id, processed_at)
            assert payload == expected.model_dump_json().encode()
            assert (topic, key) == (PointsResultEvent.TOPIC, expected.key())
            assert json.loads(headers) == {
                "type": expected.type,
                "correlation_id": expected.correlation_id,
            }

    def test_gives_a_result_published_twice_the_same_event_id(self) -> None:
        [outcome] = decide([request("earn", 1)], defaultdict(int))

        payloads = [result_row(outcome, datetime.now(UTC))[2] for _ in range(2)]

        event_ids = {
            PointsResultEvent.model_validate_json(payload).event_id for payload in payloads
        }
        assert len(event_ids) == 1

    def test_gives_every_transactions_result_its_own_event_id(self) -> None:
        outcomes = decide([request("earn", 1), request("earn", 1)], defaultdict(int))

        payloads = [result_row(outcome, datetime.now(UTC))[2] for outcome in outcomes]

        event_ids = {
            PointsResultEvent.model_validate_json(payload).event_id for payload in payloads
        }
        assert len(event_ids) == 2


class TestTakingBackAnEarnFromLots:
    def test_takes_its_own_lot_then_the_others_soonest_first(self) -> None:
        now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
        sooner, later, own = (Lot(uuid4(), now + timedelta(days=d), 10, 10) for d in (1, 3, 2))
        held = MemberLots([sooner, later, own])

        taken = held.take(25, now=now, first=own.id)

        assert taken == [(own.id, 10), (sooner.id, 10), (later.id, 5)]
        assert later.remaining == 5

    def test_takes_nothing_from_lots_due_its_own_or_others(self) -> None:
        now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
        own = Lot(uuid4(), now - timedelta(seconds=1), 10, 10)
        other = Lot(uuid4(), now - timedelta(seconds=2), 10, 10)
        open_one = Lot(uuid4(), now + timedelta(days=1), 10, 10)

        taken = MemberLots([own, other, open_one]).take(25, now=now, first=own.id)

        assert taken == [(open_one.id, 10)]
        assert (own.remaining, other.remaining) == (10, 10)

    def test_a_lot_is_due_from_the_instant_given_not_the_clock(self) -> None:
        expires_at = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
        before, at = Lot(uuid4(), expires_at, 10, 10), Lot(uuid4(), expires_at, 10, 10)

        early = MemberLots([before]).take(4, now=expires_at - timedelta(microseconds=1))
        due = MemberLots([at]).take(4, now=expires_at)

        assert (early, due) == ([(before.id, 4)], [])


class TestExpiredRow:
    def test_writes_a_points_expired_result_the_contract_accepts(self) -> None:
        lot_id, expiry_id, now = uuid4(), uuid4(), datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
        lot: dict[str, Any] = {
            "id": lot_id,
            "environment": "staging",
            "org_id": "org-1",
            "user_id": "member-1",
            "request_id": "request-1",
            "client_id": "client-1",
            "rule_id": "rule-1",
            "earn_amount": 30,
            "remaining": 12,
            "expires_at": now - timedelta(days=1),
        }

        topic, key, payload, _ = expired_row(cast("Any", lot), expiry_id, 8, now)

        sent = PointsResultEvent.model_validate_json(payload)
        assert (topic, key) == (PointsResultEvent.TOPIC, "staging:org-1:member-1")
        assert (sent.type, sent.data.transaction_id, sent.data.expiry_id) == (
            "points.expired",
            lot_id,
            expiry_id,
        )
        assert (sent.data.amount, sent.data.expired_amount, sent.data.balance) == (30, 12, 8)
        assert payload == sent.model_dump_json().encode()


class TestReadScope:
    def test_a_client_reads_its_own_environment(self) -> None:
        scope = read_scope(principal("client", "staging"), "staging")
        assert (scope.org_id, scope.environment) == ("org-1", "staging")

    def test_a_client_may_not_read_another_environment(self) -> None:
        with pytest.raises(EnvironmentForbidden):
            read_scope(principal("client", "staging"), "production")

    def test_a_business_user_reads_either_environment(self) -> None:
        assert read_scope(principal("user", None), "production").environment == "production"

    def test_an_unknown_environment_is_refused(self) -> None:
        with pytest.raises(UnknownEnvironment):
            read_scope(principal("user", None), "dev")


class TestCursor:
    def test_round_trips(self) -> None:
        assert decode_cursor(encode_cursor(42)) == 42

    @pytest.mark.parametrize("cursor", ["", "!!", "bm90LWEtY3Vyc29y", encode_cursor(1)[:-2]])
    def test_a_cursor_the_api_did_not_issue_is_refused(self, cursor: str) -> None:
        with pytest.raises(InvalidCursor):
            decode_cursor(cursor)

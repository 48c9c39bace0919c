"""The gateway's ordered trigger checks, with rules as plain dicts (records read the same)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from contracts import RuleSnapshot
from services.trigger.checks import (
    MAX_AMOUNT,
    Caller,
    NotAuthorised,
    Refused,
    Trigger,
    check_member_and_amount,
    check_rule,
    expiry_of,
)

NOW = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)
CALLER = Caller(client_id="cli_1", org_id="org_1", environment="staging")


def rule(**overrides: Any) -> dict[str, Any]:
    """An active, API-triggerable staging rule of org_1 that authorises cli_1, in its period."""
    return {
        "rule_id": "rul_1",
        "org_id": "org_1",
        "environment": "staging",
        "type": "earn",
        "status": "active",
        "api_trigger": True,
        "authorized_client_ids": ["cli_1"],
        "cap_max": None,
        "cap_per_member": None,
        "max_amount_per_request": None,
        "starts_at": NOW - timedelta(days=1),
        "ends_at": NOW + timedelta(days=1),
        "version": 1,
        "points_expire_after_days": None,
        "points_expire_at": None,
        **overrides,
    }


def trigger(user_id: Any = "member-1", amount: Any = 10) -> Trigger:
    return Trigger(
        user_id=user_id, rule_id="rul_1", amount=amount, request_id="req-1", callback_url=None
    )


def refusal_of_rule(candidate: dict[str, Any] | None) -> tuple[int, str] | None:
    try:
        check_rule(candidate, CALLER, "rul_1", NOW)
    except Refused as refused:
        return refused.status, refused.code
    return None


class TestCheckRule:
    def test_an_active_rule_in_its_period_that_authorises_the_client_passes(self) -> None:
        assert refusal_of_rule(rule()) is None

    def test_a_rule_without_dates_passes(self) -> None:
        assert refusal_of_rule(rule(starts_at=None, ends_at=None)) is None

    def test_a_missing_rule_is_not_found(self) -> None:
        assert refusal_of_rule(None) == (400, "RULE_NOT_FOUND")

    def test_another_organisations_rule_is_not_found_even_when_it_fails_everything_else(
        self,
    ) -> None:
        foreign = rule(org_id="org_2", environment="production", status="paused")

        assert refusal_of_rule(foreign) == (400, "RULE_NOT_FOUND")

    def test_an_environment_mismatch_is_forbidden_before_any_other_rule_check(self) -> None:
        production = rule(environment="production", api_trigger=False, authorized_client_ids=[])

        assert refusal_of_rule(production) == (403, "ENVIRONMENT_MISMATCH")

    def test_a_rule_without_the_api_trigger_option_is_refused_before_its_status(self) -> None:
        assert refusal_of_rule(rule(api_trigger=False, status="draft")) == (
            400,
            "RULE_NOT_API_TRIGGERABLE",
        )

    @pytest.mark.parametrize("status", ["draft", "paused", "archived"])
    def test_a_rule_that_is_not_active_is_inactive(self, status: str) -> None:
        assert refusal_of_rule(rule(status=status)) == (400, "RULE_INACTIVE")

    def test_an_inactive_rule_is_refused_before_its_dates_are_looked_at(self) -> None:
        assert refusal_of_rule(rule(status="paused", starts_at=NOW + timedelta(days=1))) == (
            400,
            "RULE_INACTIVE",
        )

    def test_a_rule_that_starts_later_is_not_started(self) -> None:
        assert refusal_of_rule(rule(starts_at=NOW + timedelta(seconds=1))) == (
            400,
            "RULE_NOT_STARTED",
        )

    def test_a_rule_is_open_from_the_moment_it_starts(self) -> None:
        assert refusal_of_rule(rule(starts_at=NOW)) is None

    def test_a_rule_has_ended_at_the_moment_it_ends(self) -> None:
        assert refusal_of_rule(rule(ends_at=NOW)) == (400, "RULE_ENDED")

    def test_a_rule_has_ended_when_the_points_it_awards_expire(self) -> None:
        # Points awarded from then on would be expired as they are awarded.
        assert refusal_of_rule(rule(points_expire_at=NOW)) == (400, "RULE_ENDED")
        assert refusal_of_rule(rule(points_expire_at=NOW + timedelta(seconds=1))) is None

    def test_dates_are_checked_before_the_client_is(self) -> None:
        ended = rule(ends_at=NOW - timedelta(hours=1), authorized_client_ids=["cli_2"])

        assert refusal_of_rule(ended) == (400, "RULE_ENDED")

    def test_a_client_the_rule_does_not_authorise_is_forbidden(self) -> None:
        refusal = refusal_of_rule(rule(authorized_client_ids=["cli_2"]))

        assert refusal == (403, "CLIENT_NOT_AUTHORIZED")

    def test_authorisation_refusals_are_forbidden_problems(self) -> None:
        with pytest.raises(NotAuthorised):
            check_rule(rule(authorized_client_ids=[]), CALLER, "rul_1", NOW)


def refusal_of_trigger(candidate: Trigger, **rule_fields: Any) -> str | None:
    try:
        check_member_and_amount(rule(**rule_fields), candidate)
    except Refused as refused:
        assert refused.status == 400
        return refused.code
    return None


class TestCheckMemberAndAmount:
    def test_a_valid_member_and_amount_are_returned(self) -> None:
        checked = check_member_and_amount(rule(), trigger("member.42@shop:eu+1", 7))

        assert checked == ("member.42@shop:eu+1", 7)

    @pytest.mark.parametrize(
        "user_id", ["", " member", "-member", "member 1", "x" * 129, 42, None, ["member"]]
    )
    def test_an_invalid_user_id_is_refused(self, user_id: Any) -> None:
        assert refusal_of_trigger(trigger(user_id=user_id)) == "INVALID_USER_ID"

    def test_a_user_id_of_128_characters_is_accepted(self) -> None:
        assert refusal_of_trigger(trigger(user_id="x" * 128)) is None

    @pytest.mark.parametrize("amount", [0, -1, 1.5, 10.0, "10", True, False, None])
    def test_an_amount_that_is_not_a_positive_integer_is_refused(self, amount: Any) -> None:
        assert refusal_of_trigger(trigger(amount=amount)) == "INVALID_AMOUNT"

    def test_an_amount_beyond_what_can_be_counted_exactly_is_refused(self) -> None:
        assert refusal_of_trigger(trigger(amount=MAX_AMOUNT + 1)) == "INVALID_AMOUNT"

    def test_the_largest_countable_amount_is_accepted_when_the_rule_sets_no_maximum(
        self,
    ) -> None:
        assert refusal_of_trigger(trigger(amount=MAX_AMOUNT)) is None

    def test_the_user_id_is_checked_before_the_amount(self) -> None:
        assert refusal_of_trigger(trigger(user_id="", amount=-1)) == "INVALID_USER_ID"

    def test_an_amount_over_the_per_request_maximum_is_refused(self) -> None:
        refusal = refusal_of_trigger(trigger(amount=51), max_amount_per_request=50)

        assert refusal == "AMOUNT_OVER_MAXIMUM"

    def test_an_amount_at_the_per_request_maximum_is_accepted(self) -> None:
        assert refusal_of_trigger(trigger(amount=50), max_amount_per_request=50) is None

    def test_a_blocked_member_is_refused_after_the_user_id_and_before_the_amount(self) -> None:
        def refusal(sent: Trigger) -> str:
            with pytest.raises(Refused) as refused:
                check_member_and_amount(rule(), sent, member_blocked=True)
            return refused.value.code

        assert refusal(trigger(user_id="bad id")) == "INVALID_USER_ID"
        assert refusal(trigger(amount=0)) == "MEMBER_BLOCKED"

    def test_an_invalid_amount_is_refused_before_the_maximum_is_compared(self) -> None:
        refusal = refusal_of_trigger(trigger(amount=0), max_amount_per_request=50)

        assert refusal == "INVALID_AMOUNT"


class TestExpiryOfAnEarn:
    """When an accepted earn's points expire: what the rule's contract says
    (:meth:`contracts.RuleSnapshot.expiry_of_points_awarded_at`) of the projected rule."""

    @pytest.mark.parametrize(
        "policy",
        [
            {},
            {"points_expire_after_days": 30},
            {"points_expire_at": datetime(2027, 12, 31, 23, 59, tzinfo=UTC)},
        ],
    )
    def test_an_earn_expires_when_the_rules_contract_says(self, policy: dict[str, Any]) -> None:
        projected = rule(**policy)
        snapshot = RuleSnapshot(
            name="Rule", updated_at=NOW, **{**projected, "authorized_client_ids": ("cli_1",)}
        )

        assert expiry_of(projected, NOW) == snapshot.expiry_of_points_awarded_at(NOW)

    def test_points_expire_the_given_number_of_days_after_the_earn(self) -> None:
        assert expiry_of(rule(points_expire_after_days=30), NOW) == NOW + timedelta(days=30)

    def test_a_redeem_expires_nothing(self) -> None:
        assert expiry_of(rule(type="redeem", points_expire_after_days=30), NOW) is None

"""The checks a trigger passes before it is recorded, in the documented order, each
refusal with its own code; and the 202 answer, the same for a request and its replays.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from contracts import PointsRequested, PointsRequestedEvent
from contracts.limits import MAX_POINTS
from infra.problems import Problem

USER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}")
#: The largest amount accepted (see :mod:`contracts.limits`).
MAX_AMOUNT = MAX_POINTS


class Refused(Problem):
    """A trigger the gateway will not accept (400 unless the subclass says otherwise)."""


class NotAuthorised(Refused):
    status = 403


class Replayed(Problem):
    status = 409
    code = "REQUEST_ID_REUSED"


@dataclass(frozen=True)
class Trigger:
    """A developer's trigger request as received (values not yet validated)."""

    user_id: Any
    rule_id: str
    amount: Any
    request_id: str
    callback_url: str | None

    def body_hash(self) -> str:
        canonical = json.dumps(
            {
                "userId": self.user_id,
                "ruleId": self.rule_id,
                "amount": self.amount,
                "callbackUrl": self.callback_url,
            },
            sort_keys=True,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Caller:
    client_id: str
    org_id: str
    environment: str


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Lookup:
    """What accepting a trigger reads first: the rule it names, any earlier request of
    the caller's with the same requestId, and whether the business that owns the
    rule blocked the member."""

    rule: asyncpg.Record | None
    earlier_transaction_id: uuid.UUID | None
    earlier_body_hash: str | None
    member_blocked: bool = False


def replay_answer(trigger: Trigger, transaction_id: uuid.UUID, body_hash: str) -> dict[str, Any]:
    """The original answer for a repeated requestId; 409 when the body differs."""
    if body_hash != trigger.body_hash():
        raise Replayed(f"requestId {trigger.request_id} was already used with a different body")
    return accepted_answer(trigger, transaction_id)


def accepted_answer(trigger: Trigger, transaction_id: uuid.UUID) -> dict[str, Any]:
    """The 202 body: the same for the first request and for every replay of it."""
    return {
        "requestId": trigger.request_id,
        "transactionId": str(transaction_id),
        "status": "pending",
    }


def replay_of(lookup: Lookup, trigger: Trigger) -> dict[str, Any] | None:
    """The original answer when the requestId was used before, else None."""
    if lookup.earlier_transaction_id is None or lookup.earlier_body_hash is None:
        return None
    return replay_answer(trigger, lookup.earlier_transaction_id, lookup.earlier_body_hash)


def check_rule(rule: asyncpg.Record | None, caller: Caller, rule_id: str, at: datetime) -> None:
    """The rule checks, in the documented order, each with its own code."""
    if rule is None or rule["org_id"] != caller.org_id:
        raise Refused(f"rule {rule_id} does not exist", code="RULE_NOT_FOUND")
    if rule["environment"] != caller.environment:
        raise NotAuthorised(
            f"rule {rule_id} belongs to {rule['environment']}; "
            f"this client is a {caller.environment} client",
            code="ENVIRONMENT_MISMATCH",
        )
    if not rule["api_trigger"]:
        raise Refused(f"rule {rule_id} cannot be triggered by API", code="RULE_NOT_API_TRIGGERABLE")
    if rule["status"] != "active":
        raise Refused(f"rule {rule_id} is {rule['status']}, not active", code="RULE_INACTIVE")
    if rule["starts_at"] and at < rule["starts_at"]:
        raise Refused(
            f"rule {rule_id} starts at {rule['starts_at'].isoformat()}", code="RULE_NOT_STARTED"
        )
    if rule["ends_at"] and at >= rule["ends_at"]:
        raise Refused(f"rule {rule_id} ended at {rule['ends_at'].isoformat()}", code="RULE_ENDED")
    if rule["points_expire_at"] and at >= rule["points_expire_at"]:
        # Points it awarded now would be expired as they are awarded.
        raise Refused(
            f"rule {rule_id} ended at {rule['points_expire_at'].isoformat()}, when its points"
            " expire",
            code="RULE_ENDED",
        )
    if caller.client_id not in rule["authorized_client_ids"]:
        raise NotAuthorised(
            f"this client is not authorised to trigger rule {rule_id}",
            code="CLIENT_NOT_AUTHORIZED",
        )


def check_member_and_amount(
    rule: asyncpg.Record, trigger: Trigger, *, member_blocked: bool = False
) -> tuple[str, int]:
    """The member (a valid userId the business has not blocked), then the amount."""
    user_id, amount = valid_user_id(trigger.user_id), trigger.amount
    if user_id is None:
        raise Refused(
            "userId must be 1-128 characters: letters, digits and . _ : @ + -",
            code="INVALID_USER_ID",
        )
    if member_blocked:
        raise Refused(f"the business has blocked member {user_id}", code="MEMBER_BLOCKED")
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount <= MAX_AMOUNT:
        raise Refused(
            f"amount must be a positive integer of at most {MAX_AMOUNT}", code="INVALID_AMOUNT"
        )
    limit = rule["max_amount_per_request"]
    if limit is not None and amount > limit:
        raise Refused(
            f"amount {amount} is over this rule's per-request maximum of {limit}",
            code="AMOUNT_OVER_MAXIMUM",
        )
    return user_id, amount


def valid_user_id(user_id: Any) -> str | None:
    """``user_id`` when it is a valid member id (so it may be looked up), else None."""
    return user_id if isinstance(user_id, str) and USER_ID.fullmatch(user_id) else None


def expiry_of(rule: asyncpg.Record, requested_at: datetime) -> datetime | None:
    """When the points an earn under this rule version, accepted at ``requested_at``,
    expire, as :meth:`contracts.RuleSnapshot.expiry_of_points_awarded_at` says for the
    projected rule; None when they never do, and always for a redeem."""
    if rule["type"] != "earn":
        return None
    if rule["points_expire_after_days"] is not None:
        return requested_at + timedelta(days=rule["points_expire_after_days"])
    expires_at: datetime | None = rule["points_expire_at"]
    return expires_at


@dataclass(frozen=True)
class CheckedTrigger:
    """A trigger that passed every check, ready to be recorded with its event."""

    trigger: Trigger
    rule: asyncpg.Record
    event: PointsRequestedEvent


def check_trigger(
    caller: Caller, trigger: Trigger, lookup: Lookup, correlation_id: str
) -> CheckedTrigger:
    """Check a trigger against its rule, in the documented order; what to record."""
    rule, requested_at = lookup.rule, now()
    check_rule(rule, caller, trigger.rule_id, requested_at)
    assert rule is not None
    user_id, amount = check_member_and_amount(rule, trigger, member_blocked=lookup.member_blocked)
    event = PointsRequestedEvent.new_event(
        data=PointsRequested(
            request_id=trigger.request_id,
            transaction_id=uuid.uuid4(),
            client_id=caller.client_id,
            rule_id=rule["rule_id"],
            rule_version=rule["version"],
            user_id=user_id,
            type=rule["type"],
            amount=amount,
            callback_url=trigger.callback_url,
            requested_at=requested_at,
            expires_at=expiry_of(rule, requested_at),
        ),
        environment=caller.environment,  # type: ignore[arg-type]
        org_id=caller.org_id,
        correlation_id=correlation_id,
    )
    return CheckedTrigger(trigger, rule, event)

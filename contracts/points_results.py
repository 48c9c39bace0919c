"""Topic `points.results.v1`: what the ledger did with each points request.

`points.applied` and `points.rejected` settle a request; `points.reversed`
(added later, additive) says that an operator reversed an applied request,
and `points.expired` (additive too) that what was left of an earn's points
reached the expiry its rule gave them. Both travel on the member's key, so they
always follow the `points.applied` they concern. Every consumer must handle or
explicitly ignore each type.
"""

from typing import ClassVar, Literal, Self, get_args
from uuid import UUID

from pydantic import AwareDatetime, Field, model_validator

from contracts.envelope import ContractModel, EventEnvelope
from contracts.limits import MAX_POINTS
from contracts.points_requested import member_key
from contracts.rules_lifecycle import RuleType
from contracts.text import Text
from contracts.topics import POINTS_RESULTS

PointsResultStatus = Literal["applied", "rejected", "reversed", "expired"]
PointsResultType = Literal["points.applied", "points.rejected", "points.reversed", "points.expired"]
#: The fields only a `reversed` result carries, and those only an `expired` one does.
_REVERSAL_FIELDS = ("reversal_id", "reversed_amount", "uncovered_amount")
_EXPIRY_FIELDS = ("expiry_id", "expired_amount", "expires_at")


class PointsResult(ContractModel):
    """The outcome of one points request, as the ledger decided it, or its later reversal.

    A `reversed` result names the original request (its request and
    transaction ids, rule, type and amount) and adds what the reversal did:
    `reversal_id`, `reversed_amount` (points moved back) and `uncovered_amount`
    (points not moved back: spent or expired).
    """

    request_id: Text = Field(
        min_length=1, description="The developer's idempotency key, as in the request."
    )
    transaction_id: UUID = Field(description="Id of the transaction, as in the request.")
    client_id: Text = Field(min_length=1, description="API client that made the request.")
    rule_id: Text = Field(min_length=1, description="Rule that was triggered.")
    user_id: Text = Field(min_length=1, description="Member whose points moved (or would have).")
    type: RuleType = Field(description="Whether points were to be earned or redeemed.")
    amount: int = Field(
        gt=0, le=MAX_POINTS, description="Number of points requested; always positive."
    )
    status: PointsResultStatus = Field(
        description="`applied` when the points moved; `rejected` when nothing changed; "
        "`reversed` when an operator later reversed the applied request; `expired` when "
        "what the member had left of an earn's points reached their expiry."
    )
    reason: Text | None = Field(
        default=None,
        description="Machine code of why a request was rejected: `INSUFFICIENT_BALANCE`, "
        "`BALANCE_LIMIT_EXCEEDED` (it would take an account past a documented limit), "
        "`REQUEST_ID_REUSED` (the client used the request id before, for another "
        "transaction), `MEMBER_BLOCKED` (the business blocked the member), "
        "`PROCESSING_FAILED`; readers accept codes they do not know.",
    )
    balance: int | None = Field(
        default=None, ge=0, description="The member's balance after the request; null if unknown."
    )
    callback_url: Text | None = Field(
        default=None, description="Where the notifier posts the outcome; null for no callback."
    )
    processed_at: AwareDatetime = Field(
        description="When the ledger decided the outcome (for `reversed`: recorded the reversal)."
    )
    reversal_id: UUID | None = Field(
        default=None,
        description="Id of the ledger transaction that reversed the request; only on `reversed`.",
    )
    reversed_amount: int | None = Field(
        default=None,
        ge=0,
        description="Points the reversal moved back; only on `reversed`. All of `amount`, or "
        "for an earn what the member's balance could cover.",
    )
    uncovered_amount: int | None = Field(
        default=None,
        ge=0,
        description="Points the reversal could not move back (`amount - reversed_amount`): "
        "of an earn, those the member had already spent or that expired (or were due to); "
        "of a redeem, those whose expiry passed meanwhile. Only on `reversed`.",
    )
    expiry_id: UUID | None = Field(
        default=None,
        description="Id of the ledger transaction that took the expired points; only on `expired`.",
    )
    expired_amount: int | None = Field(
        default=None,
        gt=0,
        le=MAX_POINTS,
        description="Points that expired: what the member had left of the earn's `amount`; "
        "only on `expired`.",
    )
    expires_at: AwareDatetime | None = Field(
        default=None,
        description="When the earn's points were due to expire; only on `expired`.",
    )

    @model_validator(mode="after")
    def _outcome_is_explained(self) -> Self:
        if self.status == "rejected" and self.reason is None:
            raise ValueError("a rejected result carries a reason")
        if self.status != "rejected" and self.balance is None:
            raise ValueError(f"{self.status} result: it carries the balance after it")
        for status, fields in (("reversed", _REVERSAL_FIELDS), ("expired", _EXPIRY_FIELDS)):
            present = [getattr(self, name) is not None for name in fields]
            if self.status == status and not all(present):
                raise ValueError(f"{status} result: it carries {', '.join(fields)}")
            if self.status != status and any(present):
                raise ValueError(f"{self.status} result: it carries no {', '.join(fields)}")
        if self.status == "expired":
            if self.reason is not None:
                raise ValueError("expired result: it carries no reason")
            if self.type != "earn":
                raise ValueError("expired result: only an earn's points expire")
            if self.expired_amount is not None and self.expired_amount > self.amount:
                raise ValueError("expired result: expired_amount is at most amount")
            return self
        reversed_amount, uncovered_amount = self.reversed_amount, self.uncovered_amount
        if self.status != "reversed":
            return self
        if reversed_amount is None or uncovered_amount is None:
            raise ValueError(
                "reversed result: it carries reversal_id, reversed_amount and uncovered_amount"
            )
        if self.reason is not None:
            raise ValueError("reversed result: it carries no reason")
        if reversed_amount + uncovered_amount != self.amount:
            raise ValueError("reversed result: reversed_amount + uncovered_amount must be amount")
        return self


class PointsResultEvent(EventEnvelope[PointsResult]):
    """Sent when the ledger has applied or rejected a points request, reversed an applied
    one, or expired what was left of an earn's points."""

    TOPIC: ClassVar[str] = POINTS_RESULTS
    VERSION: ClassVar[int] = 1
    TYPES: ClassVar[tuple[str, ...]] = get_args(PointsResultType)

    type: PointsResultType = Field(
        description="`points.applied`, `points.rejected`, `points.reversed` or "
        "`points.expired`, matching `data.status`."
    )

    @classmethod
    def default_type(cls, data: PointsResult) -> str:
        """The event name follows the result's status."""
        return f"points.{data.status}"

    def key(self) -> str:
        """`environment:org_id:user_id`, the same key as the member's requests."""
        return member_key(self.environment, self.org_id, self.data.user_id)

    @model_validator(mode="after")
    def _type_matches_status(self) -> Self:
        if self.type != self.default_type(self.data):
            raise ValueError(f"a {self.type} event cannot carry a {self.data.status} result")
        return self

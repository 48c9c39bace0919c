"""Topic `points.results.v1`: what the ledger did with each points request.

`points.applied` and `points.rejected` settle a request; `points.reversed`
(added later, additive) says that an operator reversed an applied request.
It travels on the member's key, so it always follows the `points.applied` it
undoes. Every consumer must handle or explicitly ignore each type.
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

PointsResultStatus = Literal["applied", "rejected", "reversed"]
PointsResultType = Literal["points.applied", "points.rejected", "points.reversed"]


class PointsResult(ContractModel):
    """The outcome of one points request, as the ledger decided it, or its later reversal.

    A `reversed` result names the original request (its request and
    transaction ids, rule, type and amount) and adds what the reversal did:
    `reversal_id`, `reversed_amount` (points moved back) and `uncovered_amount`
    (points of an earn the member had already spent, so kept).
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
        "`reversed` when an operator later reversed the applied request."
    )
    reason: Text | None = Field(
        default=None,
        description="Machine code of why a request was rejected: `INSUFFICIENT_BALANCE`, "
        "`BALANCE_LIMIT_EXCEEDED` (it would take an account past a documented limit), "
        "`REQUEST_ID_REUSED` (the client used the request id before, for another "
        "transaction), `PROCESSING_FAILED`; readers accept codes they do not know.",
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
        description="Points of a reversed earn the member had already spent, so kept "
        "(`amount - reversed_amount`); only on `reversed`.",
    )

    @model_validator(mode="after")
    def _outcome_is_explained(self) -> Self:
        if self.status == "rejected" and self.reason is None:
            raise ValueError("a rejected result carries a reason")
        if self.status != "rejected" and self.balance is None:
            raise ValueError(f"{self.status} result: it carries the balance after it")
        reversed_amount, uncovered_amount = self.reversed_amount, self.uncovered_amount
        if self.status != "reversed":
            if (self.reversal_id, reversed_amount, uncovered_amount) != (None, None, None):
                raise ValueError(f"{self.status} result: it carries no reversal fields")
            return self
        if self.reversal_id is None or reversed_amount is None or uncovered_amount is None:
            raise ValueError(
                "reversed result: it carries reversal_id, reversed_amount and uncovered_amount"
            )
        if self.reason is not None:
            raise ValueError("reversed result: it carries no reason")
        if reversed_amount + uncovered_amount != self.amount:
            raise ValueError("reversed result: reversed_amount + uncovered_amount must be amount")
        return self


class PointsResultEvent(EventEnvelope[PointsResult]):
    """Sent when the ledger has applied or rejected a points request, or reversed an applied one."""

    TOPIC: ClassVar[str] = POINTS_RESULTS
    VERSION: ClassVar[int] = 1
    TYPES: ClassVar[tuple[str, ...]] = get_args(PointsResultType)

    type: PointsResultType = Field(
        description="`points.applied`, `points.rejected` or `points.reversed`, "
        "matching `data.status`."
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

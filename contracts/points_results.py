"""Topic `points.results.v1`: what the ledger did with each points request."""

from typing import ClassVar, Literal, Self, get_args
from uuid import UUID

from pydantic import AwareDatetime, Field, model_validator

from contracts.envelope import ContractModel, EventEnvelope
from contracts.points_requested import member_key
from contracts.rules_lifecycle import RuleType
from contracts.topics import POINTS_RESULTS

PointsResultStatus = Literal["applied", "rejected"]
PointsResultType = Literal["points.applied", "points.rejected"]


class PointsResult(ContractModel):
    """The outcome of one points request, as the ledger decided it."""

    request_id: str = Field(
        min_length=1, description="The developer's idempotency key, as in the request."
    )
    transaction_id: UUID = Field(description="Id of the transaction, as in the request.")
    client_id: str = Field(min_length=1, description="API client that made the request.")
    rule_id: str = Field(min_length=1, description="Rule that was triggered.")
    user_id: str = Field(min_length=1, description="Member whose points moved (or would have).")
    type: RuleType = Field(description="Whether points were to be earned or redeemed.")
    amount: int = Field(gt=0, description="Number of points requested; always positive.")
    status: PointsResultStatus = Field(
        description="`applied` when the points moved; `rejected` when nothing changed."
    )
    reason: str | None = Field(
        default=None,
        description="Machine code of why a request was rejected, such as `INSUFFICIENT_BALANCE`.",
    )
    balance: int | None = Field(
        default=None, ge=0, description="The member's balance after the request; null if unknown."
    )
    callback_url: str | None = Field(
        default=None, description="Where the notifier posts the outcome; null for no callback."
    )
    processed_at: AwareDatetime = Field(description="When the ledger decided the outcome.")

    @model_validator(mode="after")
    def _outcome_is_explained(self) -> Self:
        if self.status == "rejected" and self.reason is None:
            raise ValueError("a rejected result carries a reason")
        if self.status == "applied" and self.balance is None:
            raise ValueError("an applied result carries the balance after it")
        return self


class PointsResultEvent(EventEnvelope[PointsResult]):
    """Sent when the ledger has applied or rejected a points request."""

    TOPIC: ClassVar[str] = POINTS_RESULTS
    VERSION: ClassVar[int] = 1
    TYPES: ClassVar[tuple[str, ...]] = get_args(PointsResultType)

    type: PointsResultType = Field(
        description="`points.applied` or `points.rejected`, matching `data.status`."
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

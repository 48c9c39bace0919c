"""Topic `points.requested.v1`: earn and redeem requests accepted by the gateway."""

from typing import ClassVar, Literal, Self, get_args
from uuid import UUID

from pydantic import AwareDatetime, Field, model_validator

from contracts.envelope import ContractModel, EventEnvelope
from contracts.limits import MAX_POINTS
from contracts.rules_lifecycle import RuleType
from contracts.text import Text
from contracts.topics import POINTS_REQUESTED

PointsRequestedType = Literal["points.requested"]


class PointsRequested(ContractModel):
    """A verified request to move a member's points, for the ledger to apply."""

    request_id: Text = Field(
        min_length=1, description="The developer's idempotency key, unique per client."
    )
    transaction_id: UUID = Field(
        description="Id the gateway gave the transaction; the ledger records it as is."
    )
    client_id: Text = Field(min_length=1, description="API client that made the request.")
    rule_id: Text = Field(min_length=1, description="Rule that was triggered.")
    rule_version: int = Field(
        ge=1, description="Version of the rule the request was checked against."
    )
    user_id: Text = Field(min_length=1, description="Member whose points move.")
    type: RuleType = Field(description="Earn adds points to the member; redeem takes them away.")
    amount: int = Field(
        gt=0,
        le=MAX_POINTS,
        description="Number of points to move; always positive, at most 2**53 - 1.",
    )
    callback_url: Text | None = Field(
        default=None, description="Where the outcome is posted; null for no callback."
    )
    requested_at: AwareDatetime = Field(description="When the gateway accepted the request.")
    expires_at: AwareDatetime | None = Field(
        default=None,
        description="When the points of this earn expire, from the expiry policy of the rule"
        " version it was checked against; null when they never do. Always null on a redeem.",
    )

    @model_validator(mode="after")
    def _only_earned_points_expire(self) -> Self:
        if self.type != "earn" and self.expires_at is not None:
            raise ValueError("only an earn's points can expire: expires_at must be null")
        return self


class PointsRequestedEvent(EventEnvelope[PointsRequested]):
    """Sent when the trigger gateway accepts an earn or redeem request (it answered 202)."""

    TOPIC: ClassVar[str] = POINTS_REQUESTED
    VERSION: ClassVar[int] = 1
    TYPES: ClassVar[tuple[str, ...]] = get_args(PointsRequestedType)

    type: PointsRequestedType = Field(description="Always `points.requested`.")

    def key(self) -> str:
        """`environment:org_id:user_id`, so one member's requests stay in order."""
        return member_key(self.environment, self.org_id, self.data.user_id)


def member_key(environment: str, org_id: str, user_id: str) -> str:
    """The Kafka key of a member's points messages: `environment:org_id:user_id`."""
    return f"{environment}:{org_id}:{user_id}"

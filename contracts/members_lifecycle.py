"""Topic `members.lifecycle.v1`: a business blocked or unblocked a member.

A member is any `userId` a partner sends; nothing registers one. A business
user may block a member of one environment, for instance an account that is
being abused: the trigger gateway then refuses the member's triggers
(`MEMBER_BLOCKED`), and the ledger settles the member's requests it had not yet
applied as rejected with the same code. The topic is compacted on the member's
key, so the latest event per member is its standing.
"""

from typing import ClassVar, Literal, Self, get_args

from pydantic import AwareDatetime, Field, model_validator

from contracts.envelope import ContractModel, Environment, EventEnvelope
from contracts.points_requested import member_key
from contracts.text import Text
from contracts.topics import MEMBERS_LIFECYCLE

MemberLifecycleType = Literal["member.blocked", "member.unblocked"]


class MemberStanding(ContractModel):
    """Whether one member of one organisation and environment is blocked."""

    org_id: Text = Field(min_length=1, description="Organisation the member belongs to.")
    environment: Environment = Field(description="Environment the block applies to.")
    user_id: Text = Field(min_length=1, description="The member, as partners send `userId`.")
    blocked: bool = Field(description="Whether triggers for the member are refused.")
    reason: Text | None = Field(
        default=None, max_length=500, description="Why the business blocked the member."
    )
    changed_by: Text = Field(
        min_length=1, description="Business user who blocked or unblocked the member."
    )
    changed_at: AwareDatetime = Field(
        description="When the standing changed; consumers keep the latest, so a replay is safe."
    )


class MemberLifecycleEvent(EventEnvelope[MemberStanding]):
    """Sent when a business user blocks or unblocks a member."""

    TOPIC: ClassVar[str] = MEMBERS_LIFECYCLE
    VERSION: ClassVar[int] = 1
    TYPES: ClassVar[tuple[str, ...]] = get_args(MemberLifecycleType)

    type: MemberLifecycleType = Field(description="`member.blocked` or `member.unblocked`.")

    @classmethod
    def default_type(cls, data: MemberStanding) -> str:
        """The event name follows the standing."""
        return "member.blocked" if data.blocked else "member.unblocked"

    def key(self) -> str:
        """`environment:org_id:user_id`, so one member's changes stay in order and compact."""
        return member_key(self.environment, self.org_id, self.data.user_id)

    @model_validator(mode="after")
    def _data_matches_envelope_and_type(self) -> Self:
        self._check_data_belongs_to_envelope(
            environment=self.data.environment, org_id=self.data.org_id
        )
        if self.type != self.default_type(self.data):
            raise ValueError(f"a {self.type} event carries blocked={self.data.blocked}")
        return self

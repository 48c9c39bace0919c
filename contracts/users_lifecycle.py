"""Topic `users.lifecycle.v1`: a business user joined, changed role or was removed.

Business users sign in to the console and get bearer tokens the rules service
signs; the ledger (and any service that accepts those tokens) must stop
honouring a removed user's token at once, and judge a demoted user by the new
role, not the one the token names. The topic is compacted on the user id, so
the latest event per user is that user's standing.

Business users belong to an organisation, not to an environment; the envelope's
`environment` is always `production` for them (the envelope requires one), and
readers ignore it.
"""

from typing import ClassVar, Literal, Self, get_args

from pydantic import AwareDatetime, Field, model_validator

from contracts.envelope import ContractModel, Environment, EventEnvelope
from contracts.text import Text
from contracts.topics import USERS_LIFECYCLE

UserLifecycleType = Literal["user.activated", "user.role_changed", "user.removed"]
UserRole = Literal["admin", "editor", "viewer"]
#: The envelope's environment on every event of this topic (see the module's doc).
USERS_ENVIRONMENT: Environment = "production"


class UserStanding(ContractModel):
    """One business user of one organisation: the role it holds, or that it is gone."""

    org_id: Text = Field(min_length=1, description="Organisation the user belongs to.")
    user_id: Text = Field(min_length=1, description="The business user's id (`usr_…`).")
    role: UserRole = Field(description="The user's role now (the last one, once removed).")
    removed: bool = Field(description="Whether the user was removed: its tokens are refused.")
    changed_by: Text | None = Field(
        default=None,
        description="Admin who changed the role or removed the user; null when the user "
        "joined by accepting an invitation.",
    )
    changed_at: AwareDatetime = Field(
        description="When it changed; consumers keep the latest, so a replay is safe."
    )


class UserLifecycleEvent(EventEnvelope[UserStanding]):
    """Sent when a business user accepts an invitation, has its role changed, or is
    removed from its organisation."""

    TOPIC: ClassVar[str] = USERS_LIFECYCLE
    VERSION: ClassVar[int] = 1
    TYPES: ClassVar[tuple[str, ...]] = get_args(UserLifecycleType)

    type: UserLifecycleType = Field(
        description="`user.activated`, `user.role_changed` or `user.removed`."
    )

    def key(self) -> str:
        """The user id, so one user's changes stay in order and compact."""
        return self.data.user_id

    @model_validator(mode="after")
    def _data_matches_envelope_and_type(self) -> Self:
        self._check_data_belongs_to_envelope(org_id=self.data.org_id)
        if (self.type == "user.removed") != self.data.removed:
            raise ValueError(f"a {self.type} event carries removed={self.data.removed}")
        return self

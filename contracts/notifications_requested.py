"""Topic `notifications.requested.v1`: messages the notifier is asked to send."""

from typing import Annotated, ClassVar, Literal, Self, get_args
from uuid import UUID

from pydantic import Field, StringConstraints, model_validator

from contracts.envelope import ContractModel, Environment, EventEnvelope
from contracts.rules_lifecycle import RuleType
from contracts.text import Text
from contracts.topics import NOTIFICATIONS_REQUESTED

ShareEmailRequestedType = Literal["notification.share_email.requested"]

# Deliberately loose: one @, no spaces, a dot in the domain. Deliverability is
# the mail server's call, not the contract's.
EmailAddress = Annotated[
    Text, StringConstraints(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=254)
]


class ShareEmailRequested(ContractModel):
    """A rule's integration details to email to third-party developers.

    It carries exactly what the email shows; never a client secret.
    """

    notification_id: UUID = Field(description="Id of this email request.")
    rule_id: Text = Field(min_length=1, description="Id of the rule being shared.")
    rule_name: Text = Field(min_length=1, description="Name of the rule being shared.")
    rule_type: RuleType = Field(description="Whether the rule earns or redeems points.")
    environment: Environment = Field(description="Environment the rule lives in.")
    url_endpoint: Text = Field(
        min_length=1, description="Trigger gateway endpoint of the rule's environment."
    )
    integration_guide_url: Text = Field(
        min_length=1, description="Link to the API Integration Guide."
    )
    recipients: tuple[EmailAddress, ...] = Field(
        min_length=1, max_length=20, description="Email addresses to send to (1 to 20)."
    )
    requested_by: Text = Field(
        min_length=1, description="Business user who asked for the email to be sent."
    )


class ShareEmailRequestedEvent(EventEnvelope[ShareEmailRequested]):
    """Sent when a business user asks for a rule's details to be emailed to developers."""

    TOPIC: ClassVar[str] = NOTIFICATIONS_REQUESTED
    VERSION: ClassVar[int] = 1
    TYPES: ClassVar[tuple[str, ...]] = get_args(ShareEmailRequestedType)

    type: ShareEmailRequestedType = Field(
        description="Always `notification.share_email.requested`."
    )

    def key(self) -> str:
        """The rule id, so requests about one rule stay in order."""
        return self.data.rule_id

    @model_validator(mode="after")
    def _data_matches_envelope(self) -> Self:
        self._check_data_belongs_to_envelope(environment=self.data.environment)
        return self

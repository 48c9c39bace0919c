"""Topic `notifications.invitations.v1`: invitation e-mails the notifier is asked to send.

An admin invites someone to the organisation's console; the e-mail carries a
one-time link to set a password. The link's token is a secret: it travels
sealed (AES-256-GCM under the key the rules service and the notifier share,
`INVITATION_SEALING_KEY`, with the invitation id as associated data), so
neither the topic nor the notifier's database holds it in the clear. The
notifier opens it only to compose the message it hands to the SMTP server.
"""

from typing import ClassVar, Literal, get_args
from uuid import UUID

from pydantic import AwareDatetime, Field

from contracts.envelope import ContractModel, EventEnvelope
from contracts.notifications_requested import EmailAddress
from contracts.text import Text
from contracts.topics import INVITATIONS_REQUESTED
from contracts.users_lifecycle import UserRole

InvitationEmailRequestedType = Literal["notification.invitation_email.requested"]


class InvitationEmailRequested(ContractModel):
    """An invitation to the console, to e-mail to the invitee."""

    invitation_id: UUID = Field(
        description="Id of this invitation; a new invitation of the same person has a new one."
    )
    user_id: Text = Field(min_length=1, description="The invited business user's id.")
    organisation_name: Text = Field(
        min_length=1, max_length=200, description="Name of the organisation the invitee joins."
    )
    role: UserRole = Field(description="Role the invitee will hold.")
    recipient: EmailAddress = Field(description="The invitee's e-mail address.")
    invited_by: Text = Field(
        min_length=1, max_length=254, description="E-mail address of the admin who invited."
    )
    accept_url_prefix: Text = Field(
        min_length=1,
        max_length=2000,
        description="The console's invitation page; the link is this followed by the token.",
    )
    sealed_token: Text = Field(
        min_length=1,
        max_length=500,
        description="The link's token, sealed (`v1.` + base64url of nonce and ciphertext).",
    )
    expires_at: AwareDatetime = Field(description="When the link stops working.")


class InvitationEmailRequestedEvent(EventEnvelope[InvitationEmailRequested]):
    """Sent when an admin invites someone (or invites them again) to the console."""

    TOPIC: ClassVar[str] = INVITATIONS_REQUESTED
    VERSION: ClassVar[int] = 1
    TYPES: ClassVar[tuple[str, ...]] = get_args(InvitationEmailRequestedType)

    type: InvitationEmailRequestedType = Field(
        description="Always `notification.invitation_email.requested`."
    )

    def key(self) -> str:
        """The invited user's id, so one person's invitations stay in order."""
        return self.data.user_id

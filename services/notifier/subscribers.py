"""The notifier's Kafka handlers: each one transaction around a service call, then a
wake-up of the delivery workers when it queued something."""

from __future__ import annotations

from contracts import (
    CLIENTS_LIFECYCLE,
    INVITATIONS_REQUESTED,
    NOTIFICATIONS_REQUESTED,
    NOTIFIER_USERS_GROUP,
    POINTS_RESULTS,
    USERS_LIFECYCLE,
    ClientLifecycleEvent,
    InvitationEmailRequestedEvent,
    PointsResultEvent,
    ShareEmailRequestedEvent,
    UserLifecycleEvent,
)
from infra.consumers import environment_from_member_key
from infra.runtime import ServiceRuntime
from infra.user_standing import project_users
from services.notifier import queueing
from services.notifier.dispatch import DeliveryDispatcher
from services.notifier.settings import NotifierSettings

CLIENTS_GROUP = "notifier.clients"
CALLBACKS_GROUP = "notifier.callbacks"
EMAILS_GROUP = "notifier.emails"
INVITATIONS_GROUP = "notifier.invitations"


def register_subscribers(
    runtime: ServiceRuntime, dispatcher: DeliveryDispatcher, settings: NotifierSettings
) -> None:
    """Subscribe the notifier to client lifecycle events, points results and e-mail requests."""

    async def project_clients(events: list[ClientLifecycleEvent]) -> None:
        """Keep the newest state of each API client; older events change nothing."""
        if await runtime.in_transaction(queueing.project_clients, events):
            dispatcher.wake()

    runtime.consume(
        {CLIENTS_LIFECYCLE: ClientLifecycleEvent},
        group_id=CLIENTS_GROUP,
        handler=project_clients,
        by_environment=False,
        description="Projects each API client's signing salt, to sign its callbacks, and "
        "its expiry callback URL.",
    )

    async def queue_callbacks(events: list[PointsResultEvent]) -> None:
        """Queue each result's callback once, however often the event is delivered."""
        asking = queueing.asking_for_callbacks(events)
        if not asking:
            return  # nothing to queue, not even an inbox row
        if await runtime.in_transaction(queueing.queue_callbacks, asking):
            dispatcher.wake()

    runtime.consume(
        {POINTS_RESULTS: PointsResultEvent},
        group_id=CALLBACKS_GROUP,
        handler=queue_callbacks,
        environment_of=environment_from_member_key,
        description="Queues the signed callback each points result asks for, one transaction "
        "per batch. An expiry (`points.expired`) is called back to its client's expiry "
        "callback URL, when it registered one. A reversal (`points.reversed`) is ignored: "
        "callbacks report a request's outcome, `succeeded` or `failed`, and the request "
        "still succeeded.",
    )

    async def queue_share_emails(events: list[ShareEmailRequestedEvent]) -> None:
        """Queue each e-mail once per notification, however often the event is delivered."""
        if await runtime.in_transaction(queueing.queue_share_emails, events, settings):
            dispatcher.wake()

    runtime.consume(
        {NOTIFICATIONS_REQUESTED: ShareEmailRequestedEvent},
        group_id=EMAILS_GROUP,
        handler=queue_share_emails,
        description="Queues the share e-mails business users ask for.",
    )

    async def queue_invitation_emails(events: list[InvitationEmailRequestedEvent]) -> None:
        """Queue each invitation e-mail once, however often the event is delivered."""
        if await runtime.in_transaction(queueing.queue_invitation_emails, events, settings):
            dispatcher.wake()

    runtime.consume(
        {INVITATIONS_REQUESTED: InvitationEmailRequestedEvent},
        group_id=INVITATIONS_GROUP,
        handler=queue_invitation_emails,
        by_environment=False,
        description="Queues the invitation e-mails admins send; the link's token stays sealed "
        "until the message is handed to the SMTP server.",
    )

    runtime.consume(
        {USERS_LIFECYCLE: UserLifecycleEvent},
        group_id=NOTIFIER_USERS_GROUP,
        handler=runtime.transactional(project_users),
        by_environment=False,
        description="Keeps which business users were removed, and each one's role now, so the "
        "callback log refuses a removed user's token at once and judges a replay by the role "
        "the user has now.",
    )

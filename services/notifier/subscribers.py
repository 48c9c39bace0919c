"""The notifier's Kafka handlers: each one transaction around a service call."""

from __future__ import annotations

from faststream.kafka import KafkaBroker

from contracts import (
    CLIENTS_LIFECYCLE,
    NOTIFICATIONS_REQUESTED,
    POINTS_RESULTS,
    ClientLifecycleEvent,
    PointsResultEvent,
    ShareEmailRequestedEvent,
)
from infra.broker import subscribe_in_batches
from infra.runtime import ServiceRuntime
from services.notifier import service
from services.notifier.service import DeliveryDispatcher
from services.notifier.settings import NotifierSettings

CLIENTS_GROUP = "notifier.clients"
CALLBACKS_GROUP = "notifier.callbacks"
EMAILS_GROUP = "notifier.emails"


def register_subscribers(
    broker: KafkaBroker,
    runtime: ServiceRuntime,
    dispatcher: DeliveryDispatcher,
    settings: NotifierSettings,
) -> None:
    """Subscribe the notifier to client lifecycle events, points results and e-mail requests."""

    @broker.subscriber(
        CLIENTS_LIFECYCLE,
        group_id=CLIENTS_GROUP,
        auto_offset_reset="earliest",
        description="Projects each API client's signing salt, to sign its callbacks.",
    )
    async def on_client_lifecycle(event: ClientLifecycleEvent) -> None:
        """Keep the newest state of an API client; older events change nothing."""
        async with runtime.pool.acquire() as connection, connection.transaction():
            waiting_callbacks_due = await service.project_client(connection, event)
        if waiting_callbacks_due:
            dispatcher.wake()

    @subscribe_in_batches(
        broker,
        POINTS_RESULTS,
        PointsResultEvent,
        group_id=CALLBACKS_GROUP,
        description="Queues the signed callback each points result asks for, one transaction "
        "per batch. A reversal (`points.reversed`) is ignored: callbacks report a request's "
        "outcome, `succeeded` or `failed`, and the request still succeeded.",
    )
    async def queue_callbacks(events: list[PointsResultEvent]) -> None:
        """Queue each result's callback once, however often the event is delivered."""
        asking = service.asking_for_callbacks(events)
        if not asking:
            return
        async with runtime.pool.acquire() as connection, connection.transaction():
            queued = await service.queue_callbacks(connection, asking)
        if queued:
            dispatcher.wake()

    @broker.subscriber(
        NOTIFICATIONS_REQUESTED,
        group_id=EMAILS_GROUP,
        auto_offset_reset="earliest",
        description="Queues the share e-mail a business user asked for.",
    )
    async def on_share_email_requested(event: ShareEmailRequestedEvent) -> None:
        """Queue the e-mail once per notification, however often the event is delivered."""
        async with runtime.pool.acquire() as connection, connection.transaction():
            queued = await service.queue_share_email(connection, event, settings)
        if queued:
            dispatcher.wake()

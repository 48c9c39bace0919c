"""Queueing deliveries, in the transaction of the consumer that received the event.

A points result that names a callback URL, and a share-email request, each
become a ``deliveries`` row (``kind`` callback or email) in the same
transaction that records the event in the inbox, so a redelivered event
queues nothing twice. The workers of :mod:`services.notifier.dispatch` send
them. The projection of API clients, whose salts sign the callbacks, is kept
here too: a client's arrival makes the callbacks that waited for it due.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC
from urllib.parse import urlsplit

import asyncpg

from contracts import (
    NOTIFICATIONS_REQUESTED,
    POINTS_RESULTS,
    ClientLifecycleEvent,
    PointsResult,
    PointsResultEvent,
    ShareEmailRequestedEvent,
)
from infra import inbox
from infra.logging import get_logger
from services.notifier import emails, repository
from services.notifier.repository import NewDelivery, NewEmail
from services.notifier.settings import NotifierSettings

log = get_logger(__name__)


def callback_body(result: PointsResult) -> bytes:
    """The callback JSON of DESIGN §5, as the exact bytes that are signed and sent."""
    document = {
        "requestId": result.request_id,
        "transactionId": str(result.transaction_id),
        "ruleId": result.rule_id,
        "userId": result.user_id,
        "type": result.type,
        "amount": result.amount,
        "status": "succeeded" if result.status == "applied" else "failed",
        "reason": result.reason,
        "balance": result.balance,
        "processedAt": result.processed_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
    }
    return json.dumps(document, separators=(",", ":")).encode()


def callback_host(url: str) -> str:
    """The lower-cased host of ``url``; empty when it has none."""
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


async def queue_callback(connection: asyncpg.Connection, event: PointsResultEvent) -> bool:
    """Queue the callback ``event`` asks for, once however often it arrives.

    Returns True when a new delivery was queued.
    """
    return await queue_callbacks(connection, [event]) > 0


def asking_for_callbacks(events: Sequence[PointsResultEvent]) -> list[PointsResultEvent]:
    """The results that ask for a callback: those with a callback URL, reversals
    excepted (callbacks report a request's outcome, and the request still succeeded).
    The others need nothing of the notifier, not even an inbox row."""
    return [
        event
        for event in events
        if event.data.callback_url is not None and event.data.status != "reversed"
    ]


async def queue_callbacks(
    connection: asyncpg.Connection, events: Sequence[PointsResultEvent]
) -> int:
    """Queue the callbacks a batch of results asks for, each event once; how many were
    queued."""
    queued = 0
    asking = asking_for_callbacks(events)
    for event in await inbox.claim_new(connection, asking, POINTS_RESULTS):
        if await _queue_callback(connection, event):
            queued += 1
    return queued


async def _queue_callback(connection: asyncpg.Connection, event: PointsResultEvent) -> bool:
    result = event.data
    assert result.callback_url is not None
    queued = await repository.insert_delivery(
        connection,
        NewDelivery(
            event_id=event.event_id,
            client_id=result.client_id,
            org_id=event.org_id,
            environment=event.environment,
            request_id=result.request_id,
            transaction_id=result.transaction_id,
            url=result.callback_url,
            host=callback_host(result.callback_url),
            body=callback_body(result),
        ),
    )
    if queued:
        log.info(
            "callback.queued",
            event_id=str(event.event_id),
            request_id=result.request_id,
            client_id=result.client_id,
        )
    return queued


async def queue_share_emails(
    connection: asyncpg.Connection,
    events: Sequence[ShareEmailRequestedEvent],
    settings: NotifierSettings,
) -> bool:
    """Queue the share e-mails a batch of requests asks for; True when any was queued."""
    queued = False
    for event in events:
        queued |= await queue_share_email(connection, event, settings)
    return queued


async def queue_share_email(
    connection: asyncpg.Connection, event: ShareEmailRequestedEvent, settings: NotifierSettings
) -> bool:
    """Queue the share e-mail ``event`` asks for, once per notification.

    Returns True when a new e-mail was queued.
    """
    if not await inbox.claim(connection, event.event_id, NOTIFICATIONS_REQUESTED):
        return False
    share = event.data
    try:
        message = emails.render_share_email(
            share, mail_from=settings.mail_from, reply_to=settings.mail_reply_to
        )
    except emails.InvalidShareEmail as error:
        # Retrying cannot fix the request; refusing it here keeps it from
        # blocking the partition forever.
        log.warning("email.rejected", notification_id=str(share.notification_id), reason=str(error))
        return False
    queued = await repository.insert_email(
        connection,
        NewEmail(
            event_id=event.event_id,
            notification_id=share.notification_id,
            org_id=event.org_id,
            environment=event.environment,
            recipients=share.recipients,
            message=message,
        ),
    )
    if queued:
        log.info(
            "email.queued",
            notification_id=str(share.notification_id),
            rule_id=share.rule_id,
            recipients=len(share.recipients),
        )
    return queued


async def project_clients(
    connection: asyncpg.Connection, events: Sequence[ClientLifecycleEvent]
) -> bool:
    """Keep the newest known state of each event's client; older events change nothing.

    Returns True when callbacks that were waiting for one of these clients are due now.
    """
    due = False
    for event in events:
        due |= await project_client(connection, event)
    return due


async def project_client(connection: asyncpg.Connection, event: ClientLifecycleEvent) -> bool:
    """Keep the newest known state of the event's client.

    Returns True when callbacks that were waiting for this client are due now.
    """
    client = event.data
    stored = await repository.upsert_client(
        connection,
        client_id=client.client_id,
        org_id=client.org_id,
        environment=client.environment,
        status=client.status,
        signing_key_salt=client.signing_key_salt,
        previous_signing_key_salt=client.previous_signing_key_salt,
        previous_salt_valid_until=client.previous_salt_valid_until,
        occurred_at=event.occurred_at,
    )
    if not stored:
        return False
    return await repository.retry_awaiting_client(connection, client.client_id) > 0

"""Queueing deliveries, in the transaction of the consumer that received the event.

A points result that names a callback URL, an expiry of points earned by a
client that registered an expiry callback URL, and a share-email request, each
become a ``deliveries`` row (``kind`` callback or email) in the same
transaction that records the event in the inbox, so a redelivered event
queues nothing twice. The workers of :mod:`services.notifier.dispatch` send
them. The projection of API clients, whose salts sign the callbacks, is kept
here too: a client's arrival makes the callbacks that waited for it due.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from urllib.parse import urlsplit

import asyncpg

from contracts import (
    INVITATIONS_REQUESTED,
    NOTIFICATIONS_REQUESTED,
    POINTS_RESULTS,
    ClientLifecycleEvent,
    InvitationEmailRequestedEvent,
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

#: Namespace of the delivery ids of ``points.expired`` callbacks (see :func:`expiry_delivery_id`);
#: never to change, or a callback sent before the change could be sent again after it.
EXPIRY_DELIVERIES = uuid.UUID("5b0f3c2e-8f7d-4e5a-9c1b-2d6a7e8f9a10")


def callback_body(result: PointsResult) -> bytes:
    """The callback JSON of DESIGN §5, as the exact bytes that are signed and sent."""
    document = {
        **_request_fields(result),
        "status": "succeeded" if result.status == "applied" else "failed",
        "reason": result.reason,
        "balance": result.balance,
        "processedAt": _instant(result.processed_at),
    }
    return _json(document)


def expiry_callback_body(result: PointsResult) -> bytes:
    """The body of a ``points.expired`` callback: the earn it concerns, in the fields
    and style of the outcome callback, and what expired; signed and sent as is."""
    assert result.expires_at is not None  # the contract requires it on an expiry
    document = {
        "event": "points.expired",
        **_request_fields(result),
        "status": "expired",
        "expiredAmount": result.expired_amount,
        "expiresAt": _instant(result.expires_at),
        "expiryId": str(result.expiry_id),
        "balance": result.balance,
        "processedAt": _instant(result.processed_at),
    }
    return _json(document)


def expiry_delivery_id(result: PointsResult) -> uuid.UUID:
    """The delivery id (and ``X-Points-Event-Id``) of an expiry's callback, derived from
    the ledger's expiry id: a result published again under another event id is still
    one callback."""
    return uuid.uuid5(EXPIRY_DELIVERIES, str(result.expiry_id))


def _request_fields(result: PointsResult) -> dict[str, object]:
    """What every callback says of the request it concerns, in this order."""
    return {
        "requestId": result.request_id,
        "transactionId": str(result.transaction_id),
        "ruleId": result.rule_id,
        "userId": result.user_id,
        "type": result.type,
        "amount": result.amount,
    }


def _instant(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _json(document: dict[str, object]) -> bytes:
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
    """The results that may ask for a callback: an outcome (``applied`` or ``rejected``)
    with a callback URL, and every expiry (its client may have registered an expiry
    callback URL). A reversal asks for none: callbacks report a request's outcome,
    and the request still succeeded. The others need nothing of the notifier, not
    even an inbox row."""
    return [event for event in events if _may_ask_for_callback(event.data)]


def _may_ask_for_callback(result: PointsResult) -> bool:
    if result.status == "expired":
        return True
    if result.status == "reversed":
        return False
    return result.callback_url is not None


async def queue_callbacks(
    connection: asyncpg.Connection, events: Sequence[PointsResultEvent]
) -> int:
    """Queue the callbacks a batch of results asks for, each event once; how many were
    queued.

    An expiry of a client not projected yet (its event is late: the topics are consumed
    apart) is held until the client arrives, as an outcome callback waits for its
    client's salt (``RETRY_AWAITING_CLIENT``): only the client's event says whether,
    and where, it wants the callback (:func:`project_client` then queues it).
    """
    asking = await inbox.claim_new(connection, asking_for_callbacks(events), POINTS_RESULTS)
    expiry_urls = await _expiry_urls(connection, asking)
    deliveries: list[NewDelivery] = []
    for event in asking:
        if event.data.status == "expired" and event.data.client_id not in expiry_urls:
            await _hold_for_client(connection, event)
            continue
        delivery = _delivery(event, expiry_urls)
        if delivery is not None:
            deliveries.append(delivery)
    return len(await _queue(connection, deliveries))


async def _expiry_urls(
    connection: asyncpg.Connection, events: Sequence[PointsResultEvent]
) -> dict[str, str | None]:
    """The expiry callback URL of each client of these expiries that is projected."""
    expiring = {event.data.client_id for event in events if event.data.status == "expired"}
    if not expiring:
        return {}
    urls = await repository.expiry_callback_urls(connection, sorted(expiring))
    unknown = expiring - urls.keys()
    if unknown:
        # Their projection may commit meanwhile: under its lock, read them again.
        await repository.lock_clients(connection, unknown)
        urls |= await repository.expiry_callback_urls(connection, sorted(unknown))
    return urls


async def _hold_for_client(connection: asyncpg.Connection, event: PointsResultEvent) -> None:
    result = event.data
    # Its url and host are the client's, set when it arrives.
    delivery = _new_delivery(event, expiry_delivery_id(result), "", expiry_callback_body(result))
    if await repository.hold_for_client(connection, delivery):
        log.info(
            "callback.expiry_awaiting_client",
            client_id=result.client_id,
            event_id=str(event.event_id),
            request_id=result.request_id,
        )


def _delivery(event: PointsResultEvent, expiry_urls: dict[str, str | None]) -> NewDelivery | None:
    """The callback a result asks for; None for an expiry whose client registered no
    expiry callback URL (its client is projected: see :func:`queue_callbacks`)."""
    result = event.data
    if result.status != "expired":
        assert result.callback_url is not None  # asking_for_callbacks kept only those
        return _new_delivery(event, event.event_id, result.callback_url, callback_body(result))
    url = expiry_urls.get(result.client_id)
    ids = {"event_id": str(event.event_id), "request_id": result.request_id}
    if url is None:
        log.debug("callback.expiry_not_requested", client_id=result.client_id, **ids)
        return None
    return _new_delivery(event, expiry_delivery_id(result), url, expiry_callback_body(result))


def _new_delivery(
    event: PointsResultEvent, delivery_id: uuid.UUID, url: str, body: bytes
) -> NewDelivery:
    result = event.data
    return NewDelivery(
        event_id=delivery_id,
        client_id=result.client_id,
        org_id=event.org_id,
        environment=event.environment,
        request_id=result.request_id,
        transaction_id=result.transaction_id,
        url=url,
        host=callback_host(url),
        body=body,
    )


async def _queue(
    connection: asyncpg.Connection, deliveries: Sequence[NewDelivery]
) -> list[NewDelivery]:
    """Queue these callbacks in one statement; the ones that were new."""
    queued = await repository.insert_deliveries(connection, deliveries)
    for delivery in queued:
        log.info(
            "callback.queued",
            event_id=str(delivery.event_id),
            request_id=delivery.request_id,
            client_id=delivery.client_id,
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


async def queue_invitation_emails(
    connection: asyncpg.Connection,
    events: Sequence[InvitationEmailRequestedEvent],
    settings: NotifierSettings,
) -> bool:
    """Queue the invitation e-mails a batch asks for, each once; True when any was queued.

    The message is stored with a placeholder for the link's token, and the token stays
    sealed beside it: the sender opens it only to compose what it hands to the SMTP
    server (:func:`emails.with_invitation_token`)."""
    queued = False
    for event in await inbox.claim_new(connection, events, INVITATIONS_REQUESTED):
        invitation = event.data
        try:
            message = emails.render_invitation_email(
                invitation, mail_from=settings.mail_from, reply_to=settings.mail_reply_to
            )
        except emails.InvalidShareEmail as error:
            log.warning(
                "email.rejected", notification_id=str(invitation.invitation_id), reason=str(error)
            )
            continue
        new = await repository.insert_email(
            connection,
            NewEmail(
                event_id=event.event_id,
                notification_id=invitation.invitation_id,
                org_id=event.org_id,
                environment=event.environment,
                recipients=(invitation.recipient,),
                message=message,
                sealed_secret=invitation.sealed_token,
            ),
        )
        if new:
            log.info(
                "email.invitation_queued",
                notification_id=str(invitation.invitation_id),
                user_id=invitation.user_id,
            )
        queued |= new
    return queued


async def project_clients(
    connection: asyncpg.Connection, events: Sequence[ClientLifecycleEvent]
) -> bool:
    """Keep the newest known state of each event's client; older events change nothing.

    Returns True when callbacks that were waiting for one of these clients are due now.
    """
    await repository.lock_clients(connection, (event.data.client_id for event in events))
    due = False
    for event in events:
        due |= await project_client(connection, event)
    return due


async def project_client(connection: asyncpg.Connection, event: ClientLifecycleEvent) -> bool:
    """Keep the newest known state of the event's client.

    Returns True when callbacks that were waiting for this client are due now: outcome
    callbacks that could not be signed, and expiries held until it arrived (queued to
    its expiry callback URL, or dropped when it registered none).
    """
    client = event.data
    await repository.lock_clients(connection, [client.client_id])
    stored = await repository.upsert_client(
        connection,
        client_id=client.client_id,
        org_id=client.org_id,
        environment=client.environment,
        status=client.status,
        signing_key_salt=client.signing_key_salt,
        previous_signing_key_salt=client.previous_signing_key_salt,
        previous_salt_valid_until=client.previous_salt_valid_until,
        expiry_callback_url=client.expiry_callback_url,
        occurred_at=event.occurred_at,
    )
    if not stored:
        return False
    url = client.expiry_callback_url
    held = await repository.take_held_for_client(
        connection, client.client_id, url, callback_host(url or "")
    )
    queued = await _queue(connection, held)
    retried = await repository.retry_awaiting_client(connection, client.client_id)
    return bool(queued) or retried > 0

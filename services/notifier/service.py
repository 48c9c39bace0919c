"""Outbound deliveries: signed HTTP callbacks and share e-mails, sent with retries.

A points result that names a callback URL, and a share-email request, each
become a ``deliveries`` row (``kind`` callback or email) in the same
transaction that records the event in the inbox, so a redelivered event
queues nothing twice. Delivery workers, one pool per kind, lease due rows
fairly across organisations and send them outside any transaction: a
callback's host is resolved within ``dns_timeout_seconds`` and checked against
SSRF, the body signed with the client's derived secret and POSTed; an e-mail
goes to the SMTP server as stored. Success ends the delivery; a temporary failure
schedules the next attempt from ``retry_schedule_seconds`` until the schedule
runs out and the delivery is parked for an operator; a permanent refusal (an
SMTP 5xx) marks it failed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any
from urllib.parse import urlsplit

import aiosmtplib
import asyncpg
import httpx

from contracts import (
    NOTIFICATIONS_REQUESTED,
    POINTS_RESULTS,
    ClientLifecycleEvent,
    PointsResult,
    PointsResultEvent,
    ShareEmailRequestedEvent,
)
from infra import inbox
from infra.addresses import allowed_schemes, described, refusal_reason
from infra.logging import get_logger
from infra.signing import EVENT_ID_HEADER, SIGNATURE_HEADER, derive_signing_secret, sign
from services.notifier import emails, repository
from services.notifier.fairness import WorkerPool
from services.notifier.metrics import AttemptOutcomeLabel, DeliveryMetrics
from services.notifier.repository import (
    UNKNOWN_CLIENT_ERROR,
    ClaimedCallback,
    ClaimedDelivery,
    ClaimedEmail,
    NewDelivery,
    NewEmail,
)
from services.notifier.resolver import BoundedResolver, GetAddrInfo, IPAddress, UnreachableTarget
from services.notifier.settings import NotifierSettings

log = get_logger(__name__)

JITTER = 0.1
USER_AGENT = "points-notifier/1"

#: The log event (``callback.<name>``, ``email.<name>``) of each attempt outcome; the
#: names predate the metrics and operators' log queries rely on them.
LOG_EVENTS: dict[AttemptOutcomeLabel, str] = {
    "delivered": "delivered",
    "retry": "failed",
    "parked": "parked",
    "failed": "refused",
}


# --- queueing (runs in the consumer's transaction) -------------------------------------


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


# --- operators: what gave up, and sending it again ---------------------------------------


async def list_deliveries(
    executor: repository.Executor,
    *,
    status: str | None = None,
    kind: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Deliveries (never their bodies), most recently changed first."""
    return await repository.list_deliveries(executor, status=status, kind=kind, limit=limit)


async def replay_delivery(executor: repository.Executor, delivery_id: int) -> bool:
    """Queue a parked or failed delivery again with a fresh schedule; False if there is none."""
    replayed = await repository.replay(executor, delivery_id)
    if replayed:
        log.info("delivery.replayed", delivery_id=delivery_id)
    return replayed


async def replay_parked_deliveries(executor: repository.Executor) -> list[int]:
    """Queue every parked delivery again with a fresh schedule; their ids."""
    ids = await repository.replay_all_parked(executor)
    log.info("delivery.replayed_all", count=len(ids))
    return ids


# --- retry schedule ---------------------------------------------------------------------


def retry_delay(schedule: tuple[float, ...], attempts_made: int) -> float | None:
    """Seconds until the next attempt after ``attempts_made`` failed ones; None to park.

    Each delay is jittered by ±10% so that callbacks failing together (a
    receiver's outage) do not all come back in the same instant.
    """
    if attempts_made > len(schedule):
        return None
    delay = schedule[attempts_made - 1]
    return delay * random.uniform(1 - JITTER, 1 + JITTER)


# --- SSRF guard -----------------------------------------------------------------------


class RefusedTarget(Exception):
    """A callback URL the notifier will never call: the delivery is parked."""


@dataclass(frozen=True)
class CallbackTarget:
    """A vetted callback URL, pinned to the address that was checked.

    Connecting to the checked address (rather than resolving the name again)
    keeps a DNS answer that changes between check and connect from reaching an
    internal address. The original host still goes in ``Host`` and, for
    https, in the TLS server name, which the certificate is verified against.
    """

    url: httpx.URL
    host_header: str
    extensions: dict[str, Any] = field(default_factory=dict)


#: Resolves a host and port to addresses, or raises :class:`UnreachableTarget`.
Resolve = Callable[[str, int], Awaitable[list[IPAddress]]]


async def vet_callback_url(url: str, *, development: bool, resolve: Resolve) -> CallbackTarget:
    """Resolve ``url``'s host and refuse it unless every address is public.

    Raises :class:`RefusedTarget` for URLs that can never be called and
    :class:`UnreachableTarget` when the name does not resolve now (in time).
    """
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as error:
        raise RefusedTarget(f"malformed callback URL: {error}") from error
    if parsed.scheme not in allowed_schemes(development=development):
        raise RefusedTarget(f"scheme {parsed.scheme!r} is not allowed; callbacks use https")
    host = parsed.raw_host.decode("ascii")
    if not host:
        raise RefusedTarget("callback URL has no host")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    addresses = await resolve(host, port)
    for address in addresses:
        reason = refusal_reason(address, development=development)
        if reason is not None:
            raise RefusedTarget(f"{host} resolves to {address}, {described(reason)}")
    return CallbackTarget(
        url=parsed.copy_with(host=str(addresses[0])),
        host_header=parsed.netloc.decode("ascii"),
        extensions={"sni_hostname": host} if parsed.scheme == "https" else {},
    )


# --- delivery -------------------------------------------------------------------------


@dataclass(frozen=True)
class AttemptOutcome:
    """What one attempt came to: an HTTP status or SMTP reply code, and what went wrong.

    Both protocols say success with a 2xx code. ``permanent`` failures are
    never retried.
    """

    status_code: int | None
    error: str | None
    permanent: bool = False

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def smtp_outcome(error: Exception) -> AttemptOutcome:
    """Classify an SMTP failure: 5xx replies are permanent, the rest worth retrying."""
    if isinstance(error, aiosmtplib.SMTPRecipientsRefused):
        replies = [(refused.code, refused.message) for refused in error.recipients]
        # Retry while any recipient was only deferred; give up when all refused for good.
        code = min(code for code, _ in replies) if replies else None
        reason = "; ".join(f"{reply_code} {message}" for reply_code, message in replies)
        return AttemptOutcome(code, f"recipients refused: {reason}", _is_permanent(code))
    if isinstance(error, aiosmtplib.SMTPResponseException):
        return AttemptOutcome(
            error.code, f"{error.code} {error.message}", _is_permanent(error.code)
        )
    return AttemptOutcome(None, f"{type(error).__name__}: {error}".rstrip(": "))


def _is_permanent(code: int | None) -> bool:
    return code is not None and 500 <= code < 600


class DeliveryDispatcher:
    """Delivers queued callbacks (``settings.workers``) and e-mails (``settings.email_workers``).

    Workers lease one due delivery at a time with ``FOR UPDATE SKIP LOCKED``,
    so any number of notifier replicas can run them side by side. Each kind has
    its own workers, and within a kind an organisation has at most
    ``per_organisation_concurrency`` deliveries in flight, the organisation with
    the fewest going first (see :mod:`services.notifier.fairness`).
    """

    def __init__(
        self,
        settings: NotifierSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        metrics: DeliveryMetrics | None = None,
        getaddrinfo: GetAddrInfo = socket.getaddrinfo,
    ) -> None:
        self._settings = settings
        self._transport = transport
        self.metrics = metrics or DeliveryMetrics()
        self._callbacks = WorkerPool(
            "callback",
            settings.workers,
            settings.per_organisation_concurrency,
            per_host=settings.per_host_concurrency,
        )
        self._emails = WorkerPool(
            "email", settings.email_workers, settings.per_organisation_concurrency
        )
        # An abandoned lookup keeps a thread until the system resolver gives up; each
        # organisation holds at most its share of them (see resolver.py), so there are
        # threads to spare for the others.
        self._resolver = BoundedResolver(
            settings.dns_timeout_seconds, threads=4 * settings.workers, getaddrinfo=getaddrinfo
        )
        self._pool: asyncpg.Pool | None = None
        self._http: httpx.AsyncClient | None = None
        self._workers: list[asyncio.Task[None]] = []

    def _lease_seconds(self, pool: WorkerPool) -> float:
        # Longer than any attempt can take, so a live sender never loses its lease.
        settings = self._settings
        if pool.kind == "email":
            longest = settings.smtp_timeout
        else:
            longest = settings.dns_timeout_seconds + settings.total_timeout
        return longest + settings.lease_grace_seconds

    def wake(self) -> None:
        """Tell idle workers that a delivery may be due now."""
        self._callbacks.wake.set()
        self._emails.wake.set()

    async def start(self, pool: asyncpg.Pool) -> None:
        settings = self._settings
        self._pool = pool
        # httpx logs every request's full URL at INFO, and a callback URL's query
        # may carry the receiver's own token.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.total_timeout, connect=settings.connect_timeout),
            follow_redirects=False,
            # Proxies from the environment would connect to the name again
            # and bypass the address the SSRF check pinned.
            trust_env=False,
            transport=self._transport,
            headers={"User-Agent": USER_AGENT},
        )
        self._workers = [
            asyncio.create_task(self._work(pool), name=f"notifier-{pool.kind}-worker-{number}")
            for pool in (self._callbacks, self._emails)
            for number in range(pool.workers)
        ]
        log.info(
            "delivery.workers.started",
            workers=settings.workers,
            email_workers=settings.email_workers,
            per_organisation=self._callbacks.organisations.limit,
        )

    async def stop(self) -> None:
        """Stop the workers; a delivery cut off mid-send is retried when its lease ends."""
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        self._resolver.close()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _work(self, pool: WorkerPool) -> None:
        while True:
            try:
                delivery = await self._next_due(pool)
                if delivery is not None:
                    try:
                        await self._attempt(delivery)
                    finally:
                        pool.give_back(delivery.org_id, _host_of(delivery))
            except Exception as error:  # a worker outlives a database hiccup
                log.warning("delivery.worker.error", error=str(error) or type(error).__name__)
                await asyncio.sleep(self._settings.poll_interval_seconds)

    async def _next_due(self, pool: WorkerPool) -> ClaimedCallback | ClaimedEmail | None:
        """Lease the fairest due delivery and take its organisation's slot, or sleep until
        one may be due and return None."""
        database = self._require_pool()
        pool.wake.clear()
        # One claim at a time per process, so the slot counts the claim sees are exact.
        async with pool.claiming:
            delivery = await repository.claim_due(
                database,
                kind=pool.kind,
                lease_seconds=self._lease_seconds(pool),
                in_flight=pool.organisations.in_flight(),
                full_organisations=pool.organisations.full(),
                full_hosts=pool.full_hosts(),
            )
            if delivery is not None:
                pool.take(delivery.org_id, _host_of(delivery))
                return delivery
        seconds = await repository.seconds_until_due(database, pool.kind)
        poll = self._settings.poll_interval_seconds
        # Due but unclaimed means its organisation or host is full: a freed slot wakes us.
        timeout = poll if seconds is None or seconds <= 0 else min(poll, seconds)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(pool.wake.wait(), timeout)
        return None

    async def _attempt(self, delivery: ClaimedCallback | ClaimedEmail) -> None:
        if isinstance(delivery, ClaimedEmail):
            await self._record(delivery, await self._send_email(delivery))
        else:
            await self._attempt_callback(delivery)

    async def _send_email(self, delivery: ClaimedEmail) -> AttemptOutcome:
        started = time.perf_counter()
        try:
            refused = await emails.send_message(self._settings, delivery.body, delivery.recipients)
        except (aiosmtplib.SMTPException, OSError) as error:
            return smtp_outcome(error)
        finally:
            self.metrics.observe_send("email", time.perf_counter() - started)
        if refused:
            # The server took the message for the other recipients; sending
            # again would duplicate it for them, so it counts as delivered.
            log.warning(
                "email.recipients_refused",
                delivery_id=delivery.id,
                notification_id=str(delivery.notification_id),
                refused=len(refused),
            )
        return AttemptOutcome(250, None)

    def _resolve_for(self, org_id: str) -> Resolve:
        """Resolution on ``org_id``'s behalf: a lookup it abandons keeps one of its slots."""
        slots = self._callbacks.organisations

        def hold_a_slot() -> Callable[[], None]:
            slots.take(org_id)
            return lambda: slots.give_back(org_id)

        return functools.partial(self._resolver.resolve, on_orphaned=hold_a_slot)

    async def _attempt_callback(self, delivery: ClaimedCallback) -> None:
        pool = self._require_pool()
        try:
            target = await vet_callback_url(
                delivery.url,
                development=self._settings.is_development,
                resolve=self._resolve_for(delivery.org_id),
            )
        except RefusedTarget as refused:
            await repository.park(pool, delivery, status_code=None, error=str(refused))
            self._finished("parked", delivery, reason=str(refused))
            return
        except UnreachableTarget as unreachable:
            await self._record(delivery, AttemptOutcome(None, str(unreachable)))
            return
        salts = await repository.client_salts(pool, delivery.client_id)
        if salts is None:
            await self._record(delivery, AttemptOutcome(None, UNKNOWN_CLIENT_ERROR))
            return
        secrets = [
            derive_signing_secret(self._settings.callback_signing_key, delivery.client_id, salt)
            for salt in salts
        ]
        started = time.perf_counter()
        outcome = await self._post(target, delivery, sign(*secrets, body=delivery.body))
        self.metrics.observe_send("callback", time.perf_counter() - started)
        await self._record(delivery, outcome)

    async def _post(
        self, target: CallbackTarget, delivery: ClaimedCallback, signature: str
    ) -> AttemptOutcome:
        http = self._http
        assert http is not None, "the dispatcher has not started"
        headers = {
            "Host": target.host_header,
            "Content-Type": "application/json",
            EVENT_ID_HEADER: str(delivery.event_id),
            SIGNATURE_HEADER: signature,
        }
        total = self._settings.total_timeout
        try:
            async with (
                asyncio.timeout(total),
                # Streamed and never read: a receiver's answer is its status code,
                # and a huge response body should cost nothing.
                http.stream(
                    "POST",
                    target.url,
                    content=delivery.body,
                    headers=headers,
                    extensions=target.extensions,
                ) as response,
            ):
                code = response.status_code
        except TimeoutError:
            return AttemptOutcome(None, f"no answer within {total:g} s")
        except httpx.HTTPError as error:
            return AttemptOutcome(None, f"{type(error).__name__}: {error}".rstrip(": "))
        return AttemptOutcome(code, None if 200 <= code < 300 else f"HTTP {code}")

    async def _record(
        self, delivery: ClaimedCallback | ClaimedEmail, outcome: AttemptOutcome
    ) -> None:
        pool = self._require_pool()
        if outcome.delivered:
            assert outcome.status_code is not None
            await repository.mark_delivered(pool, delivery, outcome.status_code)
            self._finished("delivered", delivery, status_code=outcome.status_code)
            return
        error = outcome.error or "failed"
        if outcome.permanent:
            await repository.fail(pool, delivery, status_code=outcome.status_code, error=error)
            self._finished("failed", delivery, status_code=outcome.status_code, reason=error)
            return
        delay = retry_delay(self._settings.retry_schedule_seconds, delivery.attempt)
        if delay is None:
            await repository.park(pool, delivery, status_code=outcome.status_code, error=error)
            self._finished("parked", delivery, status_code=outcome.status_code, reason=error)
            return
        await repository.schedule_retry(
            pool, delivery, delay_seconds=delay, status_code=outcome.status_code, error=error
        )
        self._finished(
            "retry",
            delivery,
            status_code=outcome.status_code,
            error=error,
            retry_in_seconds=round(delay, 3),
        )

    def _finished(
        self,
        outcome: AttemptOutcomeLabel,
        delivery: ClaimedCallback | ClaimedEmail,
        **fields: Any,
    ) -> None:
        """Count the attempt's outcome and log it."""
        self.metrics.count_attempt(
            "email" if isinstance(delivery, ClaimedEmail) else "callback", outcome
        )
        _log_outcome(LOG_EVENTS[outcome], delivery, **fields)

    def _require_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the delivery dispatcher has not started")
        return self._pool


def _log_outcome(outcome: str, delivery: ClaimedCallback | ClaimedEmail, **fields: Any) -> None:
    """Log ``callback.<outcome>`` or ``email.<outcome>`` with the delivery's ids."""
    method = log.info if outcome == "delivered" else log.warning
    if isinstance(delivery, ClaimedEmail):
        # Addresses are personal data: the count says enough in a log line.
        method(
            f"email.{outcome}",
            **_ids(delivery),
            notification_id=str(delivery.notification_id),
            recipients=len(delivery.recipients),
            **fields,
        )
        return
    # The URL's path and query may carry the receiver's own tokens: log the host only.
    method(
        f"callback.{outcome}",
        **_ids(delivery),
        request_id=delivery.request_id,
        client_id=delivery.client_id,
        host=delivery.host,
        **fields,
    )


def _host_of(delivery: ClaimedCallback | ClaimedEmail) -> str | None:
    return delivery.host if isinstance(delivery, ClaimedCallback) else None


def _ids(delivery: ClaimedDelivery) -> dict[str, Any]:
    return {
        "delivery_id": delivery.id,
        "event_id": str(delivery.event_id),
        "attempt": delivery.attempt,
    }

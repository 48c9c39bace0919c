"""Delivery workers: lease due deliveries fairly and send them, with retries.

Delivery workers, one pool per kind, lease due rows fairly across
organisations and send them outside any transaction: a callback goes out as
:mod:`services.notifier.callbacks` says, an e-mail to the SMTP server as
stored (:mod:`services.notifier.emails`). Success ends the delivery; a
temporary failure schedules the next attempt from ``retry_schedule_seconds``
until the schedule runs out and the delivery is parked for an operator; a
permanent refusal (an SMTP 5xx) marks it failed at once.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import time
from collections.abc import Callable
from typing import Any

import aiosmtplib
import asyncpg
import httpx

from infra.logging import get_logger
from infra.sealing import CannotOpen, invitation_sealer
from infra.signing import derive_signing_secret, sign
from infra.waiting import wait_at_most
from services.notifier import emails, repository
from services.notifier.attempts import AttemptOutcome, retry_delay
from services.notifier.callbacks import (
    RefusedTarget,
    Resolve,
    open_http_client,
    post_callback,
    vet_callback_url,
)
from services.notifier.fairness import WorkerPool
from services.notifier.metrics import AttemptOutcomeLabel, DeliveryMetrics
from services.notifier.repository import (
    UNKNOWN_CLIENT_ERROR,
    ClaimedCallback,
    ClaimedDelivery,
    ClaimedEmail,
)
from services.notifier.resolver import BoundedResolver, GetAddrInfo, UnreachableTarget
from services.notifier.settings import NotifierSettings

log = get_logger(__name__)

#: The log event (``callback.<name>``, ``email.<name>``) of each attempt outcome; the
#: names predate the metrics and operators' log queries rely on them.
LOG_EVENTS: dict[AttemptOutcomeLabel, str] = {
    "delivered": "delivered",
    "retry": "failed",
    "parked": "parked",
    "failed": "refused",
}


class DeliveryDispatcher:
    """Delivers queued callbacks (``settings.workers``) and e-mails (``settings.email_workers``).

    Each kind's claimer leases as many due deliveries as its workers have room
    for, in one statement with ``FOR UPDATE SKIP LOCKED`` (so any number of
    notifier replicas claim side by side), and sends each in a task of its own.
    Within a kind an organisation has at most ``per_organisation_concurrency``
    deliveries in flight, the organisation with the fewest going first (see
    :mod:`services.notifier.fairness`).
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
        self._sealer = invitation_sealer(settings.invitation_sealing_key)
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
        self._claimers: list[asyncio.Task[None]] = []
        self._attempts: set[asyncio.Task[None]] = set()
        self._delivered: list[tuple[ClaimedCallback | ClaimedEmail, int]] = []
        self._delivered_waiting = asyncio.Event()
        self._marker: asyncio.Task[None] | None = None

    def _lease_seconds(self, pool: WorkerPool) -> float:
        # Longer than any attempt can take, so a live sender never loses its lease.
        settings = self._settings
        if pool.kind == "email":
            longest = settings.smtp_timeout
        else:
            longest = settings.dns_timeout_seconds + settings.total_timeout
        return longest + settings.lease_grace_seconds

    def wake(self) -> None:
        """Tell the claimers that a delivery may be due now."""
        self._callbacks.wake.set()
        self._emails.wake.set()

    async def start(self, pool: asyncpg.Pool) -> None:
        settings = self._settings
        self._pool = pool
        self._http = open_http_client(settings, self._transport)
        self._claimers = [
            asyncio.create_task(self._claim(pool), name=f"notifier-{pool.kind}-claimer")
            for pool in (self._callbacks, self._emails)
        ]
        self._marker = asyncio.create_task(self._mark_delivered(), name="notifier-marker")
        log.info(
            "delivery.workers.started",
            workers=settings.workers,
            email_workers=settings.email_workers,
            per_organisation=self._callbacks.organisations.limit,
        )

    async def stop(self) -> None:
        """Stop claiming and sending; a delivery cut off mid-send is retried when its
        lease ends."""
        tasks = [*self._claimers, *self._attempts]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._claimers = []
        if self._marker is not None:
            # What was delivered is marked so, rather than sent again when its lease ends.
            self._marker.cancel()
            await asyncio.gather(self._marker, return_exceptions=True)
            self._marker = None
            if self._delivered:
                try:
                    await self._mark_waiting_deliveries()
                except Exception as error:  # their leases run out, and they are sent again
                    log.warning("delivery.worker.error", error=str(error) or type(error).__name__)
        self._resolver.close()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _claim(self, pool: WorkerPool) -> None:
        """Lease what is due while the pool has room, and attempt each delivery in a task
        of its own; sleep when a claim found less than there was room for."""
        while True:
            try:
                pool.wake.clear()
                room = pool.room()
                claimed = await self._claim_due(pool, room) if room else []
                for delivery in claimed:
                    pool.take(delivery.org_id, _host_of(delivery))
                    attempt = asyncio.create_task(self._attempt_and_give_back(pool, delivery))
                    self._attempts.add(attempt)
                    attempt.add_done_callback(self._attempts.discard)
                if any(pool.has_room(d.org_id, _host_of(d)) for d in claimed) and room:
                    # Less than its share for an organisation that had some: rows may have
                    # been passed over (another replica leasing them), so look again.
                    continue
                if len(claimed) < room or not room:
                    # A claim that found nothing asks when the next retry falls due. One
                    # that found some found what the shares allow: a slot freed wakes it,
                    # and a retry falling due meanwhile waits at most the poll interval.
                    await self._sleep(pool, until_next_due=room > 0 and not claimed)
            except Exception as error:  # a claimer outlives a database hiccup
                log.warning("delivery.worker.error", error=str(error) or type(error).__name__)
                await asyncio.sleep(self._settings.poll_interval_seconds)

    async def _claim_due(self, pool: WorkerPool, room: int) -> list[ClaimedCallback | ClaimedEmail]:
        pool.claiming = True
        try:
            return await repository.claim_due(
                self._require_pool(),
                kind=pool.kind,
                lease_seconds=self._lease_seconds(pool),
                limit=room,
                in_flight=pool.organisations.in_flight(),
                organisation_limit=pool.organisations.limit,
                hosts_in_flight=pool.hosts_in_flight(),
                host_limit=pool.host_limit(),
            )
        finally:
            pool.claiming = False

    async def _sleep(self, pool: WorkerPool, *, until_next_due: bool) -> None:
        """Until woken (a delivery queued, or room freed), the next retry falls due (when
        asked), or the poll interval ends (a lease that ran out, another replica's queue)."""
        timeout = self._settings.poll_interval_seconds
        if until_next_due:
            seconds = await repository.seconds_until_next_due(self._require_pool(), pool.kind)
            if seconds is not None:
                timeout = min(timeout, max(seconds, 0.0))
        await wait_at_most(pool.wake, timeout)

    async def _mark_delivered(self) -> None:
        """Mark what was delivered, all that waits in one statement at a time."""
        while True:
            await self._delivered_waiting.wait()
            self._delivered_waiting.clear()
            try:
                await self._mark_waiting_deliveries()
            except Exception as error:  # kept, and tried again after the poll interval
                log.warning("delivery.worker.error", error=str(error) or type(error).__name__)
                await asyncio.sleep(self._settings.poll_interval_seconds)
                self._delivered_waiting.set()

    async def _mark_waiting_deliveries(self) -> None:
        marking, self._delivered = self._delivered, []
        try:
            await repository.mark_delivered(self._require_pool(), marking)
        except BaseException:
            self._delivered[:0] = marking
            raise
        for delivery, status_code in marking:
            self._finished("delivered", delivery, status_code=status_code)

    async def _attempt_and_give_back(
        self, pool: WorkerPool, delivery: ClaimedCallback | ClaimedEmail
    ) -> None:
        try:
            await self._attempt(delivery)
        except Exception as error:  # its lease runs out, and the attempt is made again
            log.warning(
                "delivery.worker.error",
                **_ids(delivery),
                error=str(error) or type(error).__name__,
            )
        finally:
            pool.give_back(delivery.org_id, _host_of(delivery))

    async def _attempt(self, delivery: ClaimedCallback | ClaimedEmail) -> None:
        if isinstance(delivery, ClaimedEmail):
            await self._record(delivery, await self._send_email(delivery))
        else:
            await self._attempt_callback(delivery)

    async def _send_email(self, delivery: ClaimedEmail) -> AttemptOutcome:
        try:
            message = self._composed(delivery)
        except CannotOpen:
            # Retrying cannot help: the rules service sealed it under another key.
            return AttemptOutcome(None, "the invitation token does not open", permanent=True)
        started = time.perf_counter()
        try:
            refused = await emails.send_message(self._settings, message, delivery.recipients)
        except (aiosmtplib.SMTPException, OSError) as error:
            return emails.smtp_outcome(error)
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

    def _composed(self, delivery: ClaimedEmail) -> bytes:
        """The bytes to send: as stored, with an invitation's token opened into its link."""
        if delivery.sealed_secret is None:
            return delivery.body
        return emails.with_invitation_token(
            delivery.body, delivery.sealed_secret, delivery.notification_id, self._sealer
        )

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
        if not delivery.salts:
            await self._record(delivery, AttemptOutcome(None, UNKNOWN_CLIENT_ERROR))
            return
        secrets = [
            derive_signing_secret(self._settings.callback_signing_key, delivery.client_id, salt)
            for salt in delivery.salts
        ]
        started = time.perf_counter()
        http = self._http
        assert http is not None, "the dispatcher has not started"
        outcome = await post_callback(
            http,
            target,
            delivery,
            sign(*secrets, body=delivery.body),
            total_timeout=self._settings.total_timeout,
        )
        self.metrics.observe_send("callback", time.perf_counter() - started)
        await self._record(delivery, outcome)

    async def _record(
        self, delivery: ClaimedCallback | ClaimedEmail, outcome: AttemptOutcome
    ) -> None:
        pool = self._require_pool()
        if outcome.delivered:
            assert outcome.status_code is not None
            # Marked with others in one statement, after the sender's slots are free:
            # the lease keeps the row from being claimed again meanwhile.
            self._delivered.append((delivery, outcome.status_code))
            self._delivered_waiting.set()
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

"""Fair delivery: one organisation's hanging receivers cannot hold up another's.

Everything crosses real sockets on 127.0.0.1: a tarpit accepts TCP
connections and never says a word, callbacks go to a real HTTP receiver, and
share e-mails to a real SMTP server (aiosmtpd) that stalls on the hanging
organisation's recipients. DNS is the exception: there is no DNS server here
whose answers a test could hold back, so a stand-in for ``getaddrinfo`` blocks
its thread, as the system resolver does, for the names of the hanging
organisation; every other name goes to the real resolver.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from contracts import PointsResultEvent, ShareEmailRequestedEvent
from tests.helpers import eventually
from tests.integration.test_notifier import (
    CallbackReceiver,
    RunningCallbacks,
    client_event,
    notifier_settings,
    result_event,
    running_callbacks,
    serving,
)
from tests.integration.test_notifier_emails import request_email, serving_smtp, share_event

#: How late the other organisation's callback or e-mail may arrive beside a hanging
#: tenant: docs/operations.md promises no wait beyond a claim; this allows for a slow CI.
OTHER_ORGANISATION_BOUND = 2.0
HANGING_ORG, OTHER_ORG = "org-tarpit", "org-other"
#: Longer than any test: an attempt to the tarpit hangs for the whole test.
FOREVER = 120.0


# --- what hangs -----------------------------------------------------------------------------


@dataclass
class Tarpit(CallbackReceiver):
    """Accepts connections on 127.0.0.1 and never answers (an HTTP or SMTP server alike)."""

    open_connections: int = 0
    most_open: int = 0
    _held: list[asyncio.StreamWriter] = field(default_factory=list)

    async def stop(self) -> None:
        for writer in self._held:
            writer.close()
        await super().stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._held.append(writer)
        self.open_connections += 1
        self.most_open = max(self.most_open, self.open_connections)
        try:
            while await reader.read(65536):  # read what comes; answer nothing
                pass
        finally:
            self.open_connections -= 1


@pytest.fixture
async def tarpit() -> AsyncIterator[Tarpit]:
    async with serving(Tarpit()) as server:
        yield server


@pytest.fixture
async def receiver() -> AsyncIterator[CallbackReceiver]:
    async with serving(CallbackReceiver()) as server:
        yield server


@dataclass
class HangingResolver:
    """``getaddrinfo`` that blocks for ``*.hang.test`` until released, and resolves the rest."""

    released: threading.Event = field(default_factory=threading.Event)
    blocked: int = 0
    most_blocked: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        if not host.endswith(".hang.test"):
            return socket.getaddrinfo(host, port, *args, **kwargs)
        with self._lock:
            self.blocked += 1
            self.most_blocked = max(self.most_blocked, self.blocked)
        self.released.wait()
        with self._lock:
            self.blocked -= 1
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")


@pytest.fixture
def hanging_resolver() -> Iterator[HangingResolver]:
    resolver = HangingResolver()
    yield resolver
    resolver.released.set()


@dataclass
class StallingSmtpHandler:
    """A real SMTP server that stalls on RCPT for ``@tarpit.example`` and accepts the rest,
    noting when each message arrived."""

    arrived: dict[str, float] = field(default_factory=dict)  # Message-ID -> monotonic time
    stalled: int = 0

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address.endswith("@tarpit.example"):
            self.stalled += 1
            await asyncio.sleep(FOREVER)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = (envelope.original_content or b"").decode("latin-1")
        message_id = next(
            line.split(":", 1)[1].strip()
            for line in content.splitlines()
            if line.lower().startswith("message-id:")
        )
        self.arrived[message_id] = time.monotonic()
        return "250 Message accepted for delivery"


@pytest.fixture
def stalling_smtp() -> Iterator[tuple[StallingSmtpHandler, str]]:
    handler = StallingSmtpHandler()
    with serving_smtp(handler) as url:
        yield handler, url


# --- the two organisations ----------------------------------------------------------------


def callback_for(org_id: str, url: str) -> PointsResultEvent:
    client_id = f"client-{org_id}"
    event = result_event(url, client_id=client_id)
    return event.model_copy(update={"org_id": org_id})


def share_for(org_id: str, recipient: str) -> ShareEmailRequestedEvent:
    event = share_event()
    data = event.data.model_copy(update={"recipients": (recipient,)})
    return event.model_copy(update={"org_id": org_id, "data": data})


async def both_organisations(notifier: RunningCallbacks) -> None:
    for org_id in (HANGING_ORG, OTHER_ORG):
        await notifier.receive_client(client_event(f"client-{org_id}", org_id=org_id))


async def until(condition: Callable[[], bool], what: str) -> None:
    async def holds() -> bool:
        return condition()

    await eventually(holds, timeout=10, what=what)


async def callback_latencies(
    notifier: RunningCallbacks, receiver: CallbackReceiver, url_count: int
) -> list[float]:
    """Queue ``url_count`` callbacks of the other organisation; seconds until each arrived."""
    queued_at = time.monotonic()
    for _ in range(url_count):
        await notifier.receive_result(callback_for(OTHER_ORG, receiver.url()))
    arrivals: list[float] = []
    async with asyncio.timeout(30):
        while len(arrivals) < url_count:
            arrivals += [time.monotonic()] * (len(receiver.received) - len(arrivals))
            await asyncio.sleep(0.005)
    return [arrival - queued_at for arrival in arrivals]


def report(what: str, latencies: list[float]) -> str:
    ordered = sorted(latencies)
    return (
        f"{what}: {len(ordered)} arrived, median {ordered[len(ordered) // 2] * 1000:.0f} ms, "
        f"max {ordered[-1] * 1000:.0f} ms"
    )


# --- behaviour ----------------------------------------------------------------------------


class TestATarpitCallbackReceiver:
    async def test_holds_only_its_organisations_share_while_the_others_callbacks_arrive(
        self, database_url: str, tarpit: Tarpit, receiver: CallbackReceiver
    ) -> None:
        settings = notifier_settings(
            database_url, workers=4, total_timeout=FOREVER, per_organisation_concurrency=2
        )
        async with running_callbacks(settings) as notifier:
            await both_organisations(notifier)
            for _ in range(40):
                await notifier.receive_result(callback_for(HANGING_ORG, tarpit.url()))
            await until(lambda: tarpit.open_connections == 2, "the tarpit to hold two attempts")

            latencies = await callback_latencies(notifier, receiver, 10)

        print(report("other organisation's callbacks beside a tarpit", latencies))
        assert max(latencies) <= OTHER_ORGANISATION_BOUND
        assert tarpit.most_open == 2  # its share of the four workers, never more


class TestAHostThatNeverResolves:
    async def test_times_out_holds_only_its_share_of_lookups_and_the_others_arrive(
        self, database_url: str, receiver: CallbackReceiver, hanging_resolver: HangingResolver
    ) -> None:
        settings = notifier_settings(
            database_url, workers=4, dns_timeout_seconds=0.3, per_organisation_concurrency=2
        )
        async with running_callbacks(settings, getaddrinfo=hanging_resolver) as notifier:
            await both_organisations(notifier)
            hanging = [
                callback_for(HANGING_ORG, f"http://hook-{n}.hang.test/points") for n in range(20)
            ]
            for event in hanging:
                await notifier.receive_result(event)
            await until(lambda: hanging_resolver.blocked == 2, "two lookups to hang")

            latencies = await callback_latencies(notifier, receiver, 10)

            async def first_attempt_failed() -> dict[str, Any] | None:
                delivery = await notifier.delivery(hanging[0])
                return delivery if delivery["last_error"] else None

            delivery = await eventually(first_attempt_failed, what="the lookup to time out")

        print(report("other organisation's callbacks beside a name that never resolves", latencies))
        assert max(latencies) <= OTHER_ORGANISATION_BOUND
        # Abandoned lookups still hold their threads, and their organisation's slots.
        assert hanging_resolver.most_blocked == 2
        assert delivery["status"] == "pending"
        assert delivery["last_error"] == "no DNS answer for hook-0.hang.test within 0.3 s"


class TestShareEmailsBesideAHangingTenant:
    async def test_arrive_while_its_callbacks_and_e_mails_hang(
        self,
        database_url: str,
        tarpit: Tarpit,
        stalling_smtp: tuple[StallingSmtpHandler, str],
    ) -> None:
        smtp, smtp_url = stalling_smtp
        settings = notifier_settings(
            database_url,
            smtp_url=smtp_url,
            # One callback worker, all the tarpit's: e-mails have workers of their own.
            workers=1,
            email_workers=2,
            total_timeout=FOREVER,
            smtp_timeout=FOREVER,
        )
        async with running_callbacks(settings) as notifier:
            await both_organisations(notifier)
            for _ in range(10):
                await notifier.receive_result(callback_for(HANGING_ORG, tarpit.url()))
            for _ in range(20):
                await request_email(notifier, share_for(HANGING_ORG, "dev@tarpit.example"))
            await until(
                lambda: tarpit.open_connections == 1 and smtp.stalled == 1,
                "a callback and an e-mail of the tenant to hang",
            )

            queued_at: dict[str, float] = {}
            for _ in range(5):
                event = share_for(OTHER_ORG, "dev@partner.example.com")
                queued_at[f"<{event.data.notification_id}@points.localhost>"] = time.monotonic()
                await request_email(notifier, event)
            await until(lambda: queued_at.keys() <= smtp.arrived.keys(), "the other's e-mails")

        latencies = [smtp.arrived[message_id] - at for message_id, at in queued_at.items()]
        print(report("other organisation's share e-mails beside a hanging tenant", latencies))
        assert max(latencies) <= OTHER_ORGANISATION_BOUND
        assert smtp.stalled == 1  # its share of the two e-mail workers


class TestAnSmtpServerThatNeverGreets:
    async def test_fails_the_attempt_within_the_connect_timeout_and_retries_it(
        self, database_url: str, tarpit: Tarpit
    ) -> None:
        settings = notifier_settings(
            database_url,
            smtp_url=f"smtp://127.0.0.1:{tarpit.port}",
            smtp_connect_timeout=0.5,
            retry_schedule_seconds=(60,),
        )
        async with running_callbacks(settings) as notifier:
            started = time.monotonic()
            await request_email(notifier, share_for(OTHER_ORG, "dev@partner.example.com"))

            async def retry_scheduled() -> dict[str, Any] | None:
                row = await notifier.runtime.pool.fetchrow(
                    "SELECT * FROM deliveries WHERE last_error IS NOT NULL"
                )
                return None if row is None else dict(row.items())

            delivery = await eventually(retry_scheduled, what="the attempt to fail")
            failed_after = time.monotonic() - started

        print(f"an SMTP server that never greets failed the attempt after {failed_after:.2f} s")
        assert failed_after < 0.5 + 1.0
        assert delivery["status"] == "pending" and delivery["attempts"] == 1

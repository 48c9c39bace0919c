"""The notifier's callbacks against real PostgreSQL, real HTTP receivers and Tansu.

Receivers are small HTTP/1.1 servers on 127.0.0.1 (``asyncio.start_server``),
so every callback crosses a real socket; nothing of the HTTP exchange is faked.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from contracts import (
    ALL_TOPICS,
    CLIENTS_LIFECYCLE,
    POINTS_RESULTS,
    ClientLifecycleEvent,
    ClientSnapshot,
    PointsResult,
    PointsResultEvent,
)
from infra.health import metrics_router
from infra.http import create_http_app
from infra.kafka_admin import create_topics
from infra.runtime import ServiceRuntime
from infra.signing import DEVELOPMENT_SIGNING_KEY, derive_signing_secret, verify
from infra.tokens import JwksVerifier
from services.notifier import queueing
from services.notifier.api import NotifierContext
from services.notifier.api import router as operator_router
from services.notifier.app import MIGRATIONS, create_app
from services.notifier.dispatch import DeliveryDispatcher
from services.notifier.metrics import DeliveryMetrics
from services.notifier.resolver import GetAddrInfo
from services.notifier.settings import NotifierSettings

PRODUCTION_KEY = "a-production-callback-signing-key-of-some-length"
PRODUCTION_SEALING_KEY = "a-production-key-that-seals-invitation-links"
FAST_SCHEDULE = (0.1, 0.1, 0.1, 0.1)
RESPONSE_HEAD = "Status\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


# --- a real HTTP receiver ---------------------------------------------------------------


@dataclass
class ReceivedCallback:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class CallbackReceiver:
    """Answers each POST with the next of ``statuses``, then with ``then``."""

    statuses: list[int] = field(default_factory=list)
    then: int = 200
    received: list[ReceivedCallback] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    def url(self, path: str = "/hooks/points?token=receiver-own") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedCallback]:
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: len(self.received) >= count)
        return self.received

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            request_line, *header_lines = head.rstrip("\r\n").split("\r\n")
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in header_lines)
            }
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            status = self.statuses.pop(0) if self.statuses else self.then
            writer.write(f"HTTP/1.1 {status} {RESPONSE_HEAD}".encode())
            await writer.drain()
            async with self._arrived:
                self.received.append(ReceivedCallback(request_line.split(" ")[1], headers, body))
                self._arrived.notify_all()
        finally:
            writer.close()


Server = TypeVar("Server", bound=CallbackReceiver)


@asynccontextmanager
async def serving(server: Server) -> AsyncIterator[Server]:
    """``server`` listening on 127.0.0.1 for as long as the block runs."""
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[CallbackReceiver]:
    async with serving(CallbackReceiver()) as server:
        yield server


# --- the notifier without Kafka: its database, workers and service calls ------------------


def notifier_settings(database_url: str, **overrides: Any) -> NotifierSettings:
    values: dict[str, Any] = {
        "mode": "development",
        "database_url": database_url,
        "retry_schedule_seconds": FAST_SCHEDULE,
        "poll_interval_seconds": 0.2,
        "log_json": True,
        **overrides,
    }
    return NotifierSettings(**values)


@dataclass
class RunningCallbacks:
    settings: NotifierSettings
    runtime: ServiceRuntime
    dispatcher: DeliveryDispatcher

    async def receive_client(self, event: ClientLifecycleEvent) -> None:
        async with self.runtime.pool.acquire() as connection, connection.transaction():
            due = await queueing.project_client(connection, event)
        if due:
            self.dispatcher.wake()

    async def receive_result(self, event: PointsResultEvent) -> bool:
        async with self.runtime.pool.acquire() as connection, connection.transaction():
            queued = await queueing.queue_callback(connection, event)
        if queued:
            self.dispatcher.wake()
        return queued

    async def delivery(self, event: PointsResultEvent) -> dict[str, Any]:
        row = await self.runtime.pool.fetchrow(
            "SELECT * FROM deliveries WHERE event_id = $1", event.event_id
        )
        assert row is not None
        return dict(row.items())

    async def wait_for_status(
        self, event: PointsResultEvent, status: str, timeout: float = 10.0
    ) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                delivery = await self.delivery(event)
                if delivery["status"] == status:
                    return delivery
                await asyncio.sleep(0.05)


@asynccontextmanager
async def running_callbacks(
    settings: NotifierSettings, *, getaddrinfo: GetAddrInfo = socket.getaddrinfo
) -> AsyncIterator[RunningCallbacks]:
    runtime = ServiceRuntime(settings, schema="notifier", migrations=MIGRATIONS, relay=False)
    metrics = DeliveryMetrics(runtime.metrics.registry)
    dispatcher = DeliveryDispatcher(settings, metrics=metrics, getaddrinfo=getaddrinfo)
    runtime.metrics.before_scrape(lambda: metrics.refresh(runtime.pool))
    await runtime.start()
    await dispatcher.start(runtime.pool)
    try:
        yield RunningCallbacks(settings, runtime, dispatcher)
    finally:
        await dispatcher.stop()
        await runtime.stop()


def client_event(
    client_id: str = "client-1",
    *,
    salt: str = "salt-1",
    occurred_at: datetime | None = None,
    org_id: str = "org-1",
    previous_salt: str | None = None,
    previous_until: datetime | None = None,
) -> ClientLifecycleEvent:
    event = ClientLifecycleEvent.new_event(
        data=ClientSnapshot(
            client_id=client_id,
            org_id=org_id,
            environment="staging",
            name="Partner app",
            status="active",
            signing_key_salt=salt,
            previous_signing_key_salt=previous_salt,
            previous_salt_valid_until=previous_until,
        ),
        environment="staging",
        org_id=org_id,
        correlation_id="corr-client",
        type="client.registered",
    )
    if occurred_at is not None:
        event = event.model_copy(update={"occurred_at": occurred_at})
    return event


def result_event(
    callback_url: str | None, *, client_id: str = "client-1", applied: bool = True
) -> PointsResultEvent:
    return PointsResultEvent.new_event(
        data=PointsResult(
            request_id=f"req-{uuid.uuid4().hex[:8]}",
            transaction_id=uuid.uuid4(),
            client_id=client_id,
            rule_id="rule-1",
            user_id="user-1",
            type="earn",
            amount=50,
            status="applied" if applied else "rejected",
            reason=None if applied else "CAP_EXCEEDED",
            balance=150 if applied else None,
            callback_url=callback_url,
            processed_at=datetime(2026, 11, 3, 12, 0, 5, tzinfo=UTC),
        ),
        environment="staging",
        org_id="org-1",
        correlation_id="corr-result",
    )


def signing_secret(key: str = DEVELOPMENT_SIGNING_KEY, salt: str = "salt-1") -> str:
    return derive_signing_secret(key, "client-1", salt)


def metric_samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Each sample of a Prometheus text exposition, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


# --- behaviour ----------------------------------------------------------------------------


class TestCallbackDelivery:
    async def test_a_result_with_a_callback_url_is_delivered_once_with_a_valid_signature(
        self, database_url: str, receiver: CallbackReceiver
    ) -> None:
        # A slow poll proves the subscriber's wake-up, not the poll, sends it.
        settings = notifier_settings(database_url, poll_interval_seconds=5.0)
        async with running_callbacks(settings) as notifier:
            await notifier.receive_client(client_event())
            event = result_event(receiver.url())
            started = asyncio.get_running_loop().time()
            await notifier.receive_result(event)
            [callback] = await receiver.wait_for(1)
            elapsed = asyncio.get_running_loop().time() - started
            delivery = await notifier.wait_for_status(event, "delivered")
            await asyncio.sleep(0.5)

        assert elapsed < 1.5
        assert len(receiver.received) == 1
        assert callback.path == "/hooks/points?token=receiver-own"
        assert callback.headers["host"] == f"127.0.0.1:{receiver.port}"
        assert callback.headers["content-type"] == "application/json"
        assert callback.headers["x-points-event-id"] == str(event.event_id)
        assert verify(signing_secret(), callback.body, callback.headers["x-points-signature"])
        assert not verify(
            signing_secret(salt="other"), callback.body, callback.headers["x-points-signature"]
        )
        assert json.loads(callback.body) == {
            "requestId": event.data.request_id,
            "transactionId": str(event.data.transaction_id),
            "ruleId": "rule-1",
            "userId": "user-1",
            "type": "earn",
            "amount": 50,
            "status": "succeeded",
            "reason": None,
            "balance": 150,
            "processedAt": "2026-11-03T12:00:05Z",
        }
        assert delivery["attempts"] == 1
        assert delivery["last_status_code"] == 200

    async def test_a_rejected_result_is_reported_as_failed_with_its_reason(
        self, database_url: str, receiver: CallbackReceiver
    ) -> None:
        async with running_callbacks(notifier_settings(database_url)) as notifier:
            await notifier.receive_client(client_event())
            await notifier.receive_result(result_event(receiver.url(), applied=False))
            [callback] = await receiver.wait_for(1)

        body = json.loads(callback.body)
        assert (body["status"], body["reason"], body["balance"]) == ("failed", "CAP_EXCEEDED", None)

    async def test_a_receiver_failing_three_times_then_succeeding_gets_exactly_four_requests(
        self, database_url: str, receiver: CallbackReceiver
    ) -> None:
        receiver.statuses = [500, 503, 404]
        with capture_logs() as logs:
            async with running_callbacks(notifier_settings(database_url)) as notifier:
                await notifier.receive_client(client_event())
                event = result_event(receiver.url())
                await notifier.receive_result(event)
                await receiver.wait_for(4)
                delivery = await notifier.wait_for_status(event, "delivered")
                await asyncio.sleep(0.6)

        assert len(receiver.received) == 4
        assert {callback.body for callback in receiver.received} == {receiver.received[0].body}
        assert delivery["attempts"] == 4
        assert delivery["last_error"] is None
        outcomes = [line for line in logs if line["event"].startswith("callback.")]
        assert [line["event"] for line in outcomes if line["event"] != "callback.queued"][-4:] == [
            "callback.failed",
            "callback.failed",
            "callback.failed",
            "callback.delivered",
        ]
        assert all(line["request_id"] == event.data.request_id for line in outcomes[-4:])
        signature = receiver.received[-1].headers["x-points-signature"].split("v1=")[1]
        assert signature not in repr(logs)
        assert signing_secret() not in repr(logs)

    async def test_a_receiver_that_never_succeeds_ends_parked_after_the_schedule(
        self, database_url: str, receiver: CallbackReceiver
    ) -> None:
        receiver.then = 500
        settings = notifier_settings(database_url, retry_schedule_seconds=(0.1, 0.1))
        async with running_callbacks(settings) as notifier:
            await notifier.receive_client(client_event())
            event = result_event(receiver.url())
            await notifier.receive_result(event)
            delivery = await notifier.wait_for_status(event, "parked")
            await asyncio.sleep(0.5)

        assert len(receiver.received) == 3
        assert delivery["attempts"] == 3
        assert (delivery["last_status_code"], delivery["last_error"]) == (500, "HTTP 500")

    async def test_a_redirect_is_not_followed_but_retried(
        self, database_url: str, receiver: CallbackReceiver
    ) -> None:
        receiver.statuses = [302]
        async with running_callbacks(notifier_settings(database_url)) as notifier:
            await notifier.receive_client(client_event())
            event = result_event(receiver.url())
            await notifier.receive_result(event)
            delivery = await notifier.wait_for_status(event, "delivered")

        assert len(receiver.received) == 2
        assert delivery["attempts"] == 2

    async def test_the_same_result_event_delivered_twice_makes_one_delivery(
        self, database_url: str, receiver: CallbackReceiver
    ) -> None:
        async with running_callbacks(notifier_settings(database_url)) as notifier:
            await notifier.receive_client(client_event())
            event = result_event(receiver.url())
            first = await notifier.receive_result(event)
            again = await notifier.receive_result(event)
            await notifier.wait_for_status(event, "delivered")
            await asyncio.sleep(0.5)
            rows = await notifier.runtime.pool.fetchval("SELECT count(*) FROM deliveries")

        assert (first, again) == (True, False)
        assert rows == 1
        assert len(receiver.received) == 1

    async def test_a_result_without_a_callback_url_sends_nothing_and_costs_no_inbox_row(
        self, database_url: str
    ) -> None:
        async with running_callbacks(notifier_settings(database_url)) as notifier:
            event = result_event(None)
            queued = await notifier.receive_result(event)
            pool = notifier.runtime.pool
            claimed = await pool.fetchval(
                "SELECT count(*) FROM inbox WHERE event_id = $1", event.event_id
            )
            deliveries = await pool.fetchval("SELECT count(*) FROM deliveries")

        assert (queued, claimed, deliveries) == (False, 0, 0)

    async def test_workers_woken_in_the_instant_they_are_stopped_still_stop(
        self, database_url: str
    ) -> None:
        async with running_callbacks(notifier_settings(database_url)) as notifier:
            await asyncio.sleep(0.3)  # every worker is asleep, waiting to be woken
            notifier.dispatcher.wake()
            async with asyncio.timeout(5):  # it never returned before
                await notifier.dispatcher.stop()


class TestClientProjection:
    async def test_callbacks_are_signed_with_the_newest_salt_whatever_the_event_order(
        self, database_url: str, receiver: CallbackReceiver
    ) -> None:
        now = datetime.now(UTC)
        async with running_callbacks(notifier_settings(database_url)) as notifier:
            await notifier.receive_client(client_event(salt="rotated", occurred_at=now))
            await notifier.receive_client(
                client_event(salt="original", occurred_at=now - timedelta(hours=1))
            )
            await notifier.receive_result(result_event(receiver.url()))
            [callback] = await receiver.wait_for(1)

        signature = callback.headers["x-points-signature"]
        assert verify(signing_secret(salt="rotated"), callback.body, signature)

    async def test_during_a_rotations_overlap_the_old_secret_verifies_too_and_not_after(
        self, database_url: str, receiver: CallbackReceiver
    ) -> None:
        now = datetime.now(UTC)
        async with running_callbacks(notifier_settings(database_url)) as notifier:
            rotated = client_event(
                salt="new", previous_salt="old", previous_until=now + timedelta(hours=24)
            )
            await notifier.receive_client(rotated)
            await notifier.receive_result(result_event(receiver.url()))
            [during] = await receiver.wait_for(1)
            ended = client_event(
                salt="new",
                previous_salt="old",
                previous_until=now - timedelta(seconds=1),
                # Newer than the rotation however long the start took: an older change
                # would rightly be ignored.
                occurred_at=rotated.occurred_at + timedelta(seconds=1),
            )
            await notifier.receive_client(ended)
            await notifier.receive_result(result_event(receiver.url()))
            [_, after] = await receiver.wait_for(2)

        for secret in (signing_secret(salt="new"), signing_secret(salt="old")):
            assert verify(secret, during.body, during.headers["x-points-signature"])
        assert verify(signing_secret(salt="new"), after.body, after.headers["x-points-signature"])
        assert not verify(
            signing_secret(salt="old"), after.body, after.headers["x-points-signature"]
        )

    async def test_a_callback_waiting_for_its_client_goes_out_once_the_client_is_known(
        self, database_url: str, receiver: CallbackReceiver
    ) -> None:
        settings = notifier_settings(database_url, retry_schedule_seconds=(600.0,))
        async with running_callbacks(settings) as notifier:
            event = result_event(receiver.url())
            await notifier.receive_result(event)
            await asyncio.sleep(0.5)
            waiting = await notifier.delivery(event)
            await notifier.receive_client(client_event())
            [callback] = await receiver.wait_for(1, timeout=3.0)

        assert waiting["status"] == "pending"
        assert waiting["last_error"].startswith("unknown client")
        assert verify(signing_secret(), callback.body, callback.headers["x-points-signature"])

    async def test_a_callback_parked_for_want_of_its_client_is_revived_by_the_client(
        self, database_url: str, receiver: CallbackReceiver
    ) -> None:
        settings = notifier_settings(database_url, retry_schedule_seconds=())
        async with running_callbacks(settings) as notifier:
            event = result_event(receiver.url())
            await notifier.receive_result(event)
            parked = await notifier.wait_for_status(event, "parked")
            await notifier.receive_client(client_event())
            delivered = await notifier.wait_for_status(event, "delivered", timeout=3.0)

        assert parked["last_error"].startswith("unknown client")
        assert delivered["attempts"] == 1
        assert len(receiver.received) == 1


class TestSsrfGuard:
    @pytest.mark.parametrize(
        ("url", "reason"),
        [
            ("https://127.0.0.1:{port}/hooks", "loopback"),
            ("https://localhost:{port}/hooks", "loopback"),
            ("https://10.0.0.1/hooks", "private"),
            ("https://169.254.169.254/latest/meta-data", "link-local"),
            ("https://[fec0::1]/hooks", "site-local"),
            ("http://93.184.216.34/hooks", "https"),
            ("ftp://example.com/hooks", "scheme"),
        ],
    )
    async def test_production_refuses_non_public_targets_without_sending(
        self, database_url: str, receiver: CallbackReceiver, url: str, reason: str
    ) -> None:
        settings = notifier_settings(
            database_url,
            mode="production",
            callback_signing_key=PRODUCTION_KEY,
            invitation_sealing_key=PRODUCTION_SEALING_KEY,
        )
        async with running_callbacks(settings) as notifier:
            await notifier.receive_client(client_event())
            event = result_event(url.format(port=receiver.port))
            await notifier.receive_result(event)
            delivery = await notifier.wait_for_status(event, "parked")

        assert receiver.received == []
        assert delivery["attempts"] == 1
        assert reason in delivery["last_error"]

    async def test_development_allows_loopback_but_not_private_addresses(
        self, database_url: str, receiver: CallbackReceiver
    ) -> None:
        async with running_callbacks(notifier_settings(database_url)) as notifier:
            await notifier.receive_client(client_event())
            loopback = result_event(receiver.url())
            private = result_event("http://192.168.1.10/hooks")
            await notifier.receive_result(loopback)
            await notifier.receive_result(private)
            await notifier.wait_for_status(loopback, "delivered")
            parked = await notifier.wait_for_status(private, "parked")

        assert "private" in parked["last_error"]


class TestDeliveryMetrics:
    async def test_metrics_count_a_delivered_and_a_parked_callback_and_gauge_the_parked_one(
        self, database_url: str, receiver: CallbackReceiver
    ) -> None:
        async with running_callbacks(notifier_settings(database_url)) as notifier:
            app = create_http_app()
            app.include_router(metrics_router(notifier.runtime))
            await notifier.receive_client(client_event())
            delivered = result_event(receiver.url())
            refused = result_event("http://10.0.0.1/hooks")  # private: parked at once
            await notifier.receive_result(delivered)
            await notifier.receive_result(refused)
            await notifier.wait_for_status(delivered, "delivered")
            await notifier.wait_for_status(refused, "parked")
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://notifier") as http:
                response = await http.get("/metrics")

        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=")
        samples = metric_samples(response.text)
        attempts = "points_notifier_delivery_attempts_total"
        assert samples[sample(attempts, kind="callback", outcome="delivered")] == 1
        assert samples[sample(attempts, kind="callback", outcome="parked")] == 1
        assert samples[sample(attempts, kind="callback", outcome="retry")] == 0
        assert samples[sample(attempts, kind="email", outcome="delivered")] == 0
        latency = "points_notifier_delivery_latency_seconds_count"
        assert samples[sample(latency, kind="callback")] == 1  # a refused URL is never sent
        gauge = "points_notifier_deliveries"
        assert samples[sample(gauge, kind="callback", status="parked")] == 1
        assert samples[sample(gauge, kind="callback", status="delivered")] == 1
        assert samples[sample(gauge, kind="callback", status="pending")] == 0
        assert samples[sample("points_notifier_oldest_pending_delivery_age_seconds")] == 0

    async def test_the_status_gauges_come_from_the_database_not_from_this_process(
        self, database_url: str, receiver: CallbackReceiver
    ) -> None:
        settings = notifier_settings(database_url, retry_schedule_seconds=(600.0,))
        async with running_callbacks(settings) as notifier:
            # No client is known, so the callback waits, pending, for its retry.
            await notifier.receive_result(result_event(receiver.url()))
            await asyncio.sleep(1.0)
        async with running_callbacks(settings) as restarted:
            text = (await restarted.runtime.metrics.render()).decode()

        samples = metric_samples(text)
        assert samples[sample("points_notifier_deliveries", kind="callback", status="pending")] == 1
        assert samples[sample("points_notifier_oldest_pending_delivery_age_seconds")] >= 1.0
        assert (
            samples[
                sample("points_notifier_delivery_attempts_total", kind="callback", outcome="retry")
            ]
            == 0
        )


class TestDeliveryLogs:
    async def test_no_log_line_of_a_delivery_holds_the_secret_the_signature_or_the_url_query(
        self, database_url: str, receiver: CallbackReceiver, caplog: pytest.LogCaptureFixture
    ) -> None:
        receiver.statuses = [500]
        query = "token=receivers-own-credential-7f3a"
        caplog.set_level(logging.DEBUG)
        with capture_logs() as logs:
            async with running_callbacks(notifier_settings(database_url)) as notifier:
                await notifier.receive_client(client_event())
                event = result_event(receiver.url(f"/hooks/points?{query}"))
                await notifier.receive_result(event)
                await notifier.wait_for_status(event, "delivered")

        signatures = {callback.headers["x-points-signature"] for callback in receiver.received}
        assert len(receiver.received) == 2
        lines = [repr(line) for line in logs] + [record.getMessage() for record in caplog.records]
        forbidden = {signing_secret(), query, *signatures}
        forbidden |= {signature.split("v1=")[1] for signature in signatures}
        assert {"callback.failed", "callback.delivered"} <= {line["event"] for line in logs}
        assert [(text, line) for text in forbidden for line in lines if text in line] == []


@asynccontextmanager
async def operator_api(
    settings: NotifierSettings, notifier: RunningCallbacks, verifier: JwksVerifier | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of ``notifier``'s delivery endpoints (business users' tokens checked
    with ``verifier``)."""
    app = create_http_app()
    app.state.notifier = NotifierContext(
        runtime=notifier.runtime,
        settings=settings,
        dispatcher=notifier.dispatcher,
        verifier=verifier or JwksVerifier(settings.token_issuer_url),
    )
    app.include_router(operator_router)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://notifier") as http:
        yield http


class TestOperatorEndpoints:
    async def test_an_operator_sees_a_parked_callback_and_replays_it(
        self, database_url: str, receiver: CallbackReceiver
    ) -> None:
        receiver.statuses = [500, 500]
        settings = notifier_settings(
            database_url, retry_schedule_seconds=(0.1,), operator_token="operator-token"
        )
        async with (
            running_callbacks(settings) as notifier,
            operator_api(settings, notifier) as http,
        ):
            await notifier.receive_client(client_event())
            event = result_event(receiver.url())
            await notifier.receive_result(event)
            await notifier.wait_for_status(event, "parked")
            auth = {"Authorization": "Bearer operator-token"}
            anonymous = await http.get("/v1/deliveries", params={"status": "parked"})
            listed = await http.get("/v1/deliveries", params={"status": "parked"}, headers=auth)
            [item] = listed.json()["items"]
            replayed = await http.post(f"/v1/deliveries/{item['id']}/replay", headers=auth)
            await notifier.wait_for_status(event, "delivered")
            again = await http.post(f"/v1/deliveries/{item['id']}/replay", headers=auth)

        assert anonymous.status_code == 401
        assert item["eventId"] == str(event.event_id)
        assert (item["status"], item["attempts"], item["lastError"]) == ("parked", 2, "HTTP 500")
        assert replayed.status_code == 202
        assert len(receiver.received) == 3
        assert again.status_code == 404

    @pytest.mark.parametrize("delivery_id", [2**63, -(2**63) - 1])
    async def test_a_delivery_id_no_bigint_holds_is_refused_as_invalid(
        self, database_url: str, delivery_id: int
    ) -> None:
        settings = notifier_settings(database_url, operator_token="operator-token")
        async with (
            running_callbacks(settings) as notifier,
            operator_api(settings, notifier) as http,
        ):
            replayed = await http.post(
                f"/v1/deliveries/{delivery_id}/replay",
                headers={"Authorization": "Bearer operator-token"},
            )

        assert replayed.status_code == 400
        assert replayed.json()["code"] == "INVALID_REQUEST"
        assert replayed.json()["errors"][0]["field"] == "path.delivery_id"


async def publish_in_order(
    bootstrap_servers: str, *events: ClientLifecycleEvent | PointsResultEvent
) -> None:
    """Put ``events`` on the notifier's topics (created first), one after the other."""
    topics = [topic for topic in ALL_TOPICS if topic.name in {CLIENTS_LIFECYCLE, POINTS_RESULTS}]
    await create_topics(bootstrap_servers, topics)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all")
    await producer.start()
    try:
        for event in events:
            await producer.send_and_wait(
                event.TOPIC, event.model_dump_json().encode(), key=event.key().encode()
            )
    finally:
        await producer.stop()


class TestThroughKafka:
    async def test_a_points_result_on_kafka_reaches_the_receiver_signed(
        self, database_url: str, kafka_bootstrap_servers: str, receiver: CallbackReceiver
    ) -> None:
        result = result_event(receiver.url())
        await publish_in_order(kafka_bootstrap_servers, client_event(), result)

        app, runtime = create_app(
            notifier_settings(database_url, kafka_bootstrap_servers=kafka_bootstrap_servers)
        )
        await runtime.start()
        try:
            [callback] = await receiver.wait_for(1, timeout=30.0)
            await asyncio.sleep(0.5)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://notifier") as http:
                metrics = metric_samples((await http.get("/metrics")).text)
        finally:
            await runtime.stop()

        assert len(receiver.received) == 1
        assert callback.headers["x-points-event-id"] == str(result.event_id)
        assert verify(signing_secret(), callback.body, callback.headers["x-points-signature"])
        assert json.loads(callback.body)["requestId"] == result.data.request_id
        delivered = sample("points_notifier_deliveries", kind="callback", status="delivered")
        assert metrics[delivered] == 1

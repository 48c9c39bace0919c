"""Callbacks of expired points: sent to the URL a client registered for them, signed
like every callback, once per expiry; nothing for a client that did not opt in."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from structlog.testing import capture_logs

from contracts import ClientLifecycleEvent, PointsResultEvent
from infra.runtime import ServiceRuntime
from infra.signing import verify
from services.notifier.app import create_app
from services.notifier.queueing import expiry_delivery_id
from tests.helpers import eventually
from tests.integration.test_notifier import (
    CallbackReceiver,
    RunningCallbacks,
    client_event,
    notifier_settings,
    publish_in_order,
    receiver,
    result_event,
    running_callbacks,
    signing_secret,
)

__all__ = ["receiver"]  # the fixture, used by name

EXPIRY_ID = uuid.UUID("aab32389-22bc-525a-a9bd-8f6c1b7d2e45")


def opted_in(url: str | None) -> ClientLifecycleEvent:
    """client-1 registered with ``url`` as its expiry callback URL (None: opted out)."""
    registered = client_event()
    return ClientLifecycleEvent.new_event(
        data=registered.data.model_copy(update={"expiry_callback_url": url}),
        environment="staging",
        org_id=registered.org_id,
        correlation_id="corr-expiry-url",
        type="client.expiry_callback_changed",
    )


def expiry_event(callback_url: str | None = None) -> PointsResultEvent:
    """The ledger's news that 30 of an earn's 50 points expired (the request's own
    callback URL, when it had one, is not where this goes)."""
    earn = result_event(callback_url).data
    expired = earn.model_copy(
        update={
            "status": "expired",
            "balance": 120,
            "expiry_id": EXPIRY_ID,
            "expired_amount": 30,
            "expires_at": datetime(2027, 11, 3, 12, 0, 5, tzinfo=UTC),
            "processed_at": datetime(2027, 11, 3, 12, 0, 9, tzinfo=UTC),
        }
    )
    return PointsResultEvent.new_event(
        data=expired, environment="staging", org_id="org-1", correlation_id="corr-expiry"
    )


async def deliveries(notifier: RunningCallbacks) -> int:
    return int(await notifier.runtime.pool.fetchval("SELECT count(*) FROM deliveries"))


async def parked_delivery(notifier: RunningCallbacks, delivery_id: uuid.UUID) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            row = await notifier.runtime.pool.fetchrow(
                "SELECT * FROM deliveries WHERE event_id = $1 AND status = 'parked'", delivery_id
            )
            if row is not None:
                return dict(row.items())
            await asyncio.sleep(0.05)


class TestExpiryCallbacks:
    async def test_an_expiry_is_posted_signed_to_the_clients_expiry_url(
        self, database_url: str, receiver: CallbackReceiver
    ) -> None:
        async with running_callbacks(notifier_settings(database_url)) as notifier:
            await notifier.receive_client(opted_in(receiver.url("/hooks/expired")))
            event = expiry_event(callback_url=receiver.url("/hooks/outcomes"))
            await notifier.receive_result(event)
            [callback] = await receiver.wait_for(1)

        assert callback.path == "/hooks/expired"
        assert callback.headers["x-points-event-id"] == str(expiry_delivery_id(event.data))
        assert verify(signing_secret(), callback.body, callback.headers["x-points-signature"])
        assert json.loads(callback.body) == {
            "event": "points.expired",
            "requestId": event.data.request_id,
            "transactionId": str(event.data.transaction_id),
            "ruleId": "rule-1",
            "userId": "user-1",
            "type": "earn",
            "amount": 50,
            "status": "expired",
            "expiredAmount": 30,
            "expiresAt": "2027-11-03T12:00:05Z",
            "expiryId": str(EXPIRY_ID),
            "balance": 120,
            "processedAt": "2027-11-03T12:00:09Z",
        }

    async def test_a_client_without_an_expiry_url_is_sent_nothing(
        self, database_url: str, receiver: CallbackReceiver
    ) -> None:
        async with running_callbacks(notifier_settings(database_url)) as notifier:
            await notifier.receive_client(opted_in(None))
            queued = await notifier.receive_result(expiry_event(callback_url=receiver.url()))
            await asyncio.sleep(0.5)
            queued_rows = await deliveries(notifier)

        assert (queued, queued_rows) == (False, 0)
        assert receiver.received == []

    async def test_an_expiry_ahead_of_its_clients_event_is_called_back_once_the_client_arrives(
        self, database_url: str, receiver: CallbackReceiver
    ) -> None:
        with capture_logs() as logs:
            async with running_callbacks(notifier_settings(database_url)) as notifier:
                event = expiry_event()
                queued = await notifier.receive_result(event)
                again = await notifier.receive_result(event)
                before_the_client = await deliveries(notifier)
                await notifier.receive_client(opted_in(receiver.url("/hooks/expired")))
                [callback] = await receiver.wait_for(1)
                await asyncio.sleep(0.3)

        assert (queued, again, before_the_client) == (False, False, 0)
        assert any(line["event"] == "callback.expiry_awaiting_client" for line in logs)
        assert callback.path == "/hooks/expired"
        assert callback.headers["x-points-event-id"] == str(expiry_delivery_id(event.data))
        assert verify(signing_secret(), callback.body, callback.headers["x-points-signature"])
        assert json.loads(callback.body)["expiryId"] == str(EXPIRY_ID)
        assert len(receiver.received) == 1

    async def test_an_expiry_held_for_a_client_that_wants_none_is_dropped_when_it_arrives(
        self, database_url: str, receiver: CallbackReceiver
    ) -> None:
        async with running_callbacks(notifier_settings(database_url)) as notifier:
            await notifier.receive_result(expiry_event())
            await notifier.receive_client(opted_in(None))
            await notifier.receive_client(opted_in(receiver.url()))  # opted in later
            await asyncio.sleep(0.5)
            queued_rows = await deliveries(notifier)
            held = await notifier.runtime.pool.fetchval(
                "SELECT count(*) FROM expiries_awaiting_client"
            )

        assert (queued_rows, held) == (0, 0)
        assert receiver.received == []

    async def test_an_expiry_published_again_under_another_event_id_is_called_back_once(
        self, database_url: str, receiver: CallbackReceiver
    ) -> None:
        async with running_callbacks(notifier_settings(database_url)) as notifier:
            await notifier.receive_client(opted_in(receiver.url()))
            event = expiry_event()
            again = event.model_copy(update={"event_id": uuid.uuid4()})
            outcomes = [
                await notifier.receive_result(event),
                await notifier.receive_result(event),
                await notifier.receive_result(again),
            ]
            await receiver.wait_for(1)
            await asyncio.sleep(0.5)
            queued_rows = await deliveries(notifier)

        assert outcomes == [True, False, False]
        assert queued_rows == 1
        assert len(receiver.received) == 1

    async def test_an_expiry_url_to_a_private_address_is_refused_at_send_time_and_parked(
        self, database_url: str
    ) -> None:
        # Development allows loopback, never a private network: the send-time check holds.
        async with running_callbacks(notifier_settings(database_url)) as notifier:
            await notifier.receive_client(opted_in("http://192.168.1.10/hooks/expired"))
            event = expiry_event()
            await notifier.receive_result(event)
            parked = await parked_delivery(notifier, expiry_delivery_id(event.data))

        assert "private" in parked["last_error"]


class TestExpiryCallbacksThroughKafka:
    async def test_an_expiry_on_kafka_reaches_the_clients_expiry_url_signed(
        self, database_url: str, kafka_bootstrap_servers: str, receiver: CallbackReceiver
    ) -> None:
        event = expiry_event()
        await publish_in_order(kafka_bootstrap_servers, opted_in(receiver.url()))
        _, runtime = create_app(
            notifier_settings(database_url, kafka_bootstrap_servers=kafka_bootstrap_servers)
        )
        await runtime.start()
        try:
            # The client registered long before its points expire.
            await eventually(lambda: client_known(runtime), what="the client's projection")
            await publish_in_order(kafka_bootstrap_servers, event)
            [callback] = await receiver.wait_for(1, timeout=30.0)
        finally:
            await runtime.stop()

        assert verify(signing_secret(), callback.body, callback.headers["x-points-signature"])
        assert json.loads(callback.body)["expiryId"] == str(EXPIRY_ID)


async def client_known(runtime: ServiceRuntime) -> bool:
    return bool(await runtime.pool.fetchval("SELECT count(*) FROM clients"))

"""The broker's promises: a message whose handler fails is not lost, and one that can
never be handled is quarantined rather than stopping its partition."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer
from faststream.kafka import KafkaBroker

from contracts import CLIENTS_LIFECYCLE, ClientLifecycleEvent
from infra import db
from infra.broker import create_broker
from infra.consumers import IDLE_FETCH_WAIT_MS, FetchWait, consume_in_batches
from infra.runtime import INFRA_MIGRATIONS
from infra.settings import ServiceSettings
from tests.unit.test_contracts import example_event


async def produce(bootstrap_servers: str, topic: str, *values: bytes) -> None:
    """Send ``values`` to partition 0 of ``topic``, in order, acknowledged by the broker."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, partition=0)
    finally:
        await producer.stop()


async def consume_until(broker: KafkaBroker, done: asyncio.Event) -> None:
    await broker.start()
    try:
        await asyncio.wait_for(done.wait(), 30)
    finally:
        await broker.stop()


class TestAckPolicy:
    async def test_a_message_whose_handler_failed_is_delivered_again_and_then_committed(
        self, kafka_bootstrap_servers: str
    ) -> None:
        broker = create_broker(ServiceSettings(kafka_bootstrap_servers=kafka_bootstrap_servers))
        seen: list[bytes] = []
        done = asyncio.Event()

        @broker.subscriber("ack.test", group_id="ack-test", auto_offset_reset="earliest")
        async def flaky(body: bytes) -> None:
            seen.append(body)
            if len(seen) == 1:
                raise RuntimeError("the database blinked")
            done.set()

        await produce(kafka_bootstrap_servers, "ack.test", b"points for member-1")

        await consume_until(broker, done)
        assert seen == [b"points for member-1", b"points for member-1"]

        # The group's committed offset is past the message: a restarted consumer
        # goes on with the next message and does not see the first again.
        await produce(kafka_bootstrap_servers, "ack.test", b"points for member-2")
        again = create_broker(ServiceSettings(kafka_bootstrap_servers=kafka_bootstrap_servers))
        replayed: list[bytes] = []
        next_one = asyncio.Event()

        @again.subscriber("ack.test", group_id="ack-test", auto_offset_reset="earliest")
        async def record(body: bytes) -> None:
            replayed.append(body)
            next_one.set()

        await again.start()
        try:
            await asyncio.wait_for(next_one.wait(), 30)
            await asyncio.sleep(1)
        finally:
            await again.stop()
        assert replayed == [b"points for member-2"]


class TestPoisonMessages:
    async def test_a_message_that_breaks_the_contract_is_quarantined_and_the_next_one_handled(
        self, kafka_bootstrap_servers: str, database_url: str
    ) -> None:
        await db.migrate(database_url, "poison_test", [INFRA_MIGRATIONS])
        pool = await db.create_pool(database_url, "poison_test")
        broker = create_broker(ServiceSettings(kafka_bootstrap_servers=kafka_bootstrap_servers))
        handled: list[ClientLifecycleEvent] = []
        done = asyncio.Event()

        async def project(events: list[ClientLifecycleEvent]) -> None:
            handled.extend(events)
            done.set()

        consume_in_batches(
            broker,
            {"poison.test": ClientLifecycleEvent},
            group_id="poison-test",
            description="the test's consumer",
            handler=project,
            pool=lambda: pool,
        )
        valid = example_event(CLIENTS_LIFECYCLE)
        await produce(
            kafka_bootstrap_servers,
            "poison.test",
            b'{"type": "client.registered"}',
            valid.model_dump_json().encode(),
        )

        try:
            await consume_until(broker, done)
            kept = await pool.fetch("SELECT topic, kafka_offset, value FROM quarantine")
        finally:
            await pool.close()

        assert [event.event_id for event in handled] == [valid.event_id]
        assert [tuple(row.values()) for row in kept] == [
            ("poison.test", 0, b'{"type": "client.registered"}')
        ]


class TestFetchWait:
    async def test_a_consumer_asks_for_the_short_wait_while_records_flow_and_the_long_once_idle(
        self, kafka_bootstrap_servers: str, database_url: str
    ) -> None:
        # On the embedded broker the fetch wait is how late a record reaches its
        # consumer; this checks the wait really reaches aiokafka's fetch requests.
        await db.migrate(database_url, "fetch_wait_test", [INFRA_MIGRATIONS])
        pool = await db.create_pool(database_url, "fetch_wait_test")
        broker = create_broker(ServiceSettings(kafka_bootstrap_servers=kafka_bootstrap_servers))
        handled = asyncio.Event()

        async def project(events: list[ClientLifecycleEvent]) -> None:
            handled.set()

        [consumer] = consume_in_batches(
            broker,
            {"fetch-wait.test": ClientLifecycleEvent},
            group_id="fetch-wait-test",
            description="the test's consumer",
            handler=project,
            pool=lambda: pool,
            active_fetch_wait_ms=20,
        )
        consumer.fetch_wait = FetchWait(20, active_seconds=0.5)
        await produce(
            kafka_bootstrap_servers,
            "fetch-wait.test",
            example_event(CLIENTS_LIFECYCLE).model_dump_json().encode(),
        )
        await broker.start()
        try:
            await asyncio.wait_for(handled.wait(), 30)
            busy = consumer.fetch_wait.current_ms
            await asyncio.sleep(1.0)
            idle = consumer.fetch_wait.current_ms
        finally:
            await broker.stop()
            await pool.close()

        assert (busy, idle) == (20, IDLE_FETCH_WAIT_MS)

"""The broker factory's promises: a message whose handler fails is not lost, and one
that can never be handled does not stop its partition."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer
from faststream.kafka import KafkaBroker

from contracts import CLIENTS_LIFECYCLE, ClientLifecycleEvent
from infra.broker import create_broker
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


class TestInvalidMessages:
    async def test_a_message_that_breaks_the_contract_is_skipped_and_the_next_one_handled(
        self, kafka_bootstrap_servers: str
    ) -> None:
        broker = create_broker(ServiceSettings(kafka_bootstrap_servers=kafka_bootstrap_servers))
        handled: list[ClientLifecycleEvent] = []
        done = asyncio.Event()

        @broker.subscriber("poison.test", group_id="poison-test", auto_offset_reset="earliest")
        async def project(event: ClientLifecycleEvent) -> None:
            handled.append(event)
            done.set()

        valid = example_event(CLIENTS_LIFECYCLE)
        await produce(
            kafka_bootstrap_servers,
            "poison.test",
            b'{"type": "client.registered"}',
            valid.model_dump_json().encode(),
        )

        await consume_until(broker, done)

        assert [event.event_id for event in handled] == [valid.event_id]

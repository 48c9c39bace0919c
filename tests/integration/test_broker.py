"""The broker factory's promise: a message whose handler fails is not lost."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer

from infra.broker import create_broker
from infra.settings import ServiceSettings


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

        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap_servers, acks="all")
        await producer.start()
        await producer.send_and_wait("ack.test", b"points for member-1")
        await producer.stop()

        await broker.start()
        try:
            await asyncio.wait_for(done.wait(), 30)
        finally:
            await broker.stop()
        assert seen == [b"points for member-1", b"points for member-1"]

        # The group's committed offset is past the message: a restarted consumer
        # goes on with the next message and does not see the first again.
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap_servers, acks="all")
        await producer.start()
        await producer.send_and_wait("ack.test", b"points for member-2")
        await producer.stop()
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

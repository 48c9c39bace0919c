"""Waiting until a consumer group has consumed what was produced, on a real broker.

``GroupProgress`` is what lets the rules service answer a change once the gateway
has it, and the gateway answer "pending" only once it has settled every result
published before the question. Here a plain producer and a plain consumer group
play the writer and the reader.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from infra.catchup import GroupProgress
from infra.settings import ServiceSettings

TOPIC = "progress.test"
GROUP = "progress.reader"


@pytest.fixture
async def producer(kafka_bootstrap_servers: str) -> AsyncIterator[AIOKafkaProducer]:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(TOPIC, num_partitions=3, replication_factor=1)])
    finally:
        await admin.close()
    writer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap_servers, enable_idempotence=False)
    await writer.start()
    yield writer
    await writer.stop()


@pytest.fixture
async def progress(kafka_bootstrap_servers: str) -> AsyncIterator[GroupProgress]:
    watching = GroupProgress(ServiceSettings(kafka_bootstrap_servers=kafka_bootstrap_servers))
    yield watching
    await watching.stop()


async def reader(kafka_bootstrap_servers: str) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        TOPIC,
        bootstrap_servers=kafka_bootstrap_servers,
        group_id=GROUP,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    return consumer


async def read_and_commit(consumer: AIOKafkaConsumer, expected: int) -> None:
    read = 0
    while read < expected:
        batches = await consumer.getmany(timeout_ms=500)
        read += sum(len(records) for records in batches.values())
    await consumer.commit()


async def test_waits_until_the_group_commits_what_was_produced_before_the_question(
    kafka_bootstrap_servers: str, producer: AIOKafkaProducer, progress: GroupProgress
) -> None:
    sent = [await producer.send_and_wait(TOPIC, b"x", key=f"k{n}".encode()) for n in range(6)]
    partitions = await progress.partitions(TOPIC)
    consumer = await reader(kafka_bootstrap_servers)
    try:
        assert await progress.is_consuming(GROUP)
        # Nothing committed yet: the question times out rather than answering yes.
        assert not await progress.consumed(GROUP, partitions, timeout=0.3)

        waiting = asyncio.create_task(progress.consumed(GROUP, partitions, timeout=10))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await read_and_commit(consumer, expected=len(sent))
        assert await waiting

        # Produced after the question was answered: a new question waits for it.
        await producer.send_and_wait(TOPIC, b"y", key=b"later")
        assert not await progress.consumed(GROUP, partitions, timeout=0.3)
        await read_and_commit(consumer, expected=1)
        assert await progress.consumed(GROUP, partitions, timeout=10)
    finally:
        await consumer.stop()


async def test_names_the_partition_a_producer_puts_a_key_on(
    producer: AIOKafkaProducer, progress: GroupProgress
) -> None:
    for key in ("staging:org_1:member-1", "production:org_9:member-42", "x"):
        metadata = await producer.send_and_wait(TOPIC, b"x", key=key.encode())
        assert await progress.partition_of(TOPIC, key) == TopicPartition(TOPIC, metadata.partition)


async def test_a_group_nobody_runs_is_not_consuming(
    producer: AIOKafkaProducer, progress: GroupProgress
) -> None:
    await producer.send_and_wait(TOPIC, b"x", key=b"k")
    assert not await progress.is_consuming("nobody.runs.this")
    assert await progress.partition_of("no.such.topic", "k") is None


async def test_a_broker_that_cannot_be_reached_leaves_a_status_pending_not_an_error() -> None:
    from services.trigger.reads import ResultsConsumed

    # A port nothing listens on: every connection is refused at once.
    unreachable = GroupProgress(ServiceSettings(kafka_bootstrap_servers="127.0.0.1:1"))
    consumed = ResultsConsumed(unreachable, "trigger.results", timeout=1.0)
    try:
        settled = await consumed({"environment": "staging", "org_id": "org-1", "user_id": "m-1"})
    finally:
        await unreachable.stop()

    assert settled is False  # the gateway answers from its database: "pending"

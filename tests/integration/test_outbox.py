"""The transactional outbox against real PostgreSQL and a real Kafka-protocol broker."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from contracts import ALL_TOPICS, RULES_LIFECYCLE, RuleLifecycleEvent
from infra import db
from infra.broker import start_producer
from infra.kafka_admin import create_topics
from infra.outbox import OutboxRelay, enqueue
from infra.runtime import INFRA_MIGRATIONS
from infra.settings import ServiceSettings

SCHEMA = "outbox_test"
EXAMPLE = Path(__file__).parents[2] / "contracts" / "examples" / f"{RULES_LIFECYCLE}.json"

# Commits events in one transaction, then dies at once: the process is gone
# before anything could publish them.
CRASHING_WRITER = textwrap.dedent(
    """
    import asyncio, json, os, signal, sys
    from infra import db
    from infra.outbox import enqueue
    from contracts import RuleLifecycleEvent

    async def main(dsn, example, count):
        template = json.loads(open(example).read())[0]
        connection = await db.connect(dsn, "outbox_test")
        async with connection.transaction():
            events = []
            for version in range(1, count + 1):
                message = dict(template, event_id=f"00000000-0000-4000-8000-{version:012d}")
                message["data"] = dict(template["data"], version=version)
                events.append(RuleLifecycleEvent.model_validate(message))
            await enqueue(connection, *events)
        os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    """
)


async def consume(bootstrap: str, topic: str, expected: int, timeout: float = 20.0) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id="outbox-test"
    )
    await consumer.start()
    values: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while len(values) < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                values += [record.value for record in records]
    finally:
        await consumer.stop()
    return values


@pytest.fixture
async def producer(
    database_url: str, kafka_bootstrap_servers: str
) -> AsyncIterator[AIOKafkaProducer]:
    """The outbox's schema migrated, the topics created, and a producer to relay with."""
    await db.migrate(database_url, SCHEMA, [INFRA_MIGRATIONS])
    await create_topics(kafka_bootstrap_servers, ALL_TOPICS)
    started = await start_producer(ServiceSettings(kafka_bootstrap_servers=kafka_bootstrap_servers))
    yield started
    await started.stop()


class TestOutboxRelay:
    async def test_events_committed_by_a_process_that_crashed_are_published_after_restart(
        self, database_url: str, kafka_bootstrap_servers: str, producer: AIOKafkaProducer
    ) -> None:
        writer = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CRASHING_WRITER,
            database_url,
            str(EXAMPLE),
            "50",
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await writer.communicate()
        assert writer.returncode == -9, stderr.decode()

        relay = OutboxRelay(database_url, SCHEMA, producer)
        relay.start()
        try:
            values = await consume(kafka_bootstrap_servers, RULES_LIFECYCLE, expected=50)
        finally:
            await relay.stop()

        versions = [RuleLifecycleEvent.model_validate_json(value).data.version for value in values]
        # One rule id, so one key and one partition: commit order is kept.
        assert versions == list(range(1, 51))

        connection = await db.connect(database_url, SCHEMA)
        try:
            pending = await connection.fetchval(
                "SELECT count(*) FROM outbox WHERE published_at IS NULL"
            )
        finally:
            await connection.close()
        assert pending == 0

    async def test_a_commit_wakes_the_relay_without_waiting_for_its_safety_poll(
        self, database_url: str, kafka_bootstrap_servers: str, producer: AIOKafkaProducer
    ) -> None:
        relay = OutboxRelay(database_url, SCHEMA, producer, safety_poll_seconds=600)
        relay.start()
        try:
            await asyncio.sleep(1.0)  # the relay has published nothing and sleeps on LISTEN
            event = RuleLifecycleEvent.model_validate(json.loads(EXAMPLE.read_text())[0])
            connection = await db.connect(database_url, SCHEMA)
            try:
                async with connection.transaction():
                    await enqueue(connection, event)
            finally:
                await connection.close()
            committed = time.monotonic()
            values = await consume(kafka_bootstrap_servers, RULES_LIFECYCLE, expected=1)
            assert [RuleLifecycleEvent.model_validate_json(v).event_id for v in values] == [
                event.event_id
            ]
            assert relay.published == 1
            # Far below the 600 s safety poll: NOTIFY woke the relay.
            assert time.monotonic() - committed < 10
        finally:
            await relay.stop()

    async def test_a_stop_just_after_traffic_drains_at_once(
        self, database_url: str, producer: AIOKafkaProducer
    ) -> None:
        published = asyncio.Event()
        relay = OutboxRelay(
            database_url,
            SCHEMA,
            producer,
            safety_poll_seconds=600,
            on_published=lambda _: published.set(),
        )
        relay.start()
        try:
            event = RuleLifecycleEvent.model_validate(json.loads(EXAMPLE.read_text())[0])
            connection = await db.connect(database_url, SCHEMA)
            try:
                async with connection.transaction():
                    await enqueue(connection, event)
            finally:
                await connection.close()
            relay.wake()
            await asyncio.wait_for(published.wait(), timeout=10)
            # The relay now looks for more rows a few times before it sleeps on LISTEN:
            # a stop that comes then must not wait for the sleep (600 s here).
            await asyncio.sleep(0.05)
            stopping = time.monotonic()
            await relay.stop(drain_seconds=30)
            assert time.monotonic() - stopping < 5
        finally:
            await relay.stop()

    async def test_only_one_relay_per_schema_publishes_at_a_time(
        self, database_url: str, kafka_bootstrap_servers: str, producer: AIOKafkaProducer
    ) -> None:
        relays = [
            OutboxRelay(database_url, SCHEMA, producer, safety_poll_seconds=0.2) for _ in range(2)
        ]
        for relay in relays:
            relay.start()
        try:
            template = json.loads(EXAMPLE.read_text())[0]
            events = [
                RuleLifecycleEvent.model_validate(
                    dict(
                        template, event_id=str(uuid.uuid4()), data=dict(template["data"], version=n)
                    )
                )
                for n in range(1, 201)
            ]
            connection = await db.connect(database_url, SCHEMA)
            try:
                for chunk in range(0, 200, 20):
                    async with connection.transaction():
                        await enqueue(connection, *events[chunk : chunk + 20])
            finally:
                await connection.close()
            values = await consume(kafka_bootstrap_servers, RULES_LIFECYCLE, expected=200)
            await asyncio.sleep(1.0)  # time for a second relay to publish duplicates, if it could
            values += await consume(kafka_bootstrap_servers, RULES_LIFECYCLE, expected=1, timeout=1)
        finally:
            for relay in relays:
                await relay.stop()
        versions = [RuleLifecycleEvent.model_validate_json(value).data.version for value in values]
        assert versions == list(range(1, 201))
        assert sorted(relay.published for relay in relays) == [0, 200]

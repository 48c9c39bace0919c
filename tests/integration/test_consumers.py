"""A consumer's failures stay with the message that caused them: against real PostgreSQL.

The consumer here applies client lifecycle events to a table of its own, one
transaction per batch with an inbox, as every service's handlers do; the
records are what the Kafka client hands over (the broker's part is in
test_broker.py).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiokafka import ConsumerRecord

from contracts import CLIENTS_LIFECYCLE, POINTS_REQUESTED, ClientLifecycleEvent, dead_letter_topic
from infra import db, inbox, quarantine
from infra.consumers import Backoff, Consumer, environment_from_member_key
from infra.runtime import INFRA_MIGRATIONS
from tests.unit.test_contracts import examples_of

SCHEMA = "consumer_test"
APPLIED_TABLE = """
CREATE TABLE IF NOT EXISTS applied (
    event_id uuid PRIMARY KEY,
    client_name text NOT NULL CHECK (client_name <> 'refused by the database')
)
"""


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    await db.migrate(database_url, SCHEMA, [INFRA_MIGRATIONS])
    pool = await db.create_pool(database_url, SCHEMA)
    await pool.execute(APPLIED_TABLE)
    try:
        yield pool
    finally:
        await pool.close()


def client_event(name: str = "mobile app", environment: str = "staging", **extra: Any) -> bytes:
    message = examples_of(CLIENTS_LIFECYCLE)[0]
    data = {**message["data"], "name": name, "environment": environment}
    return json.dumps(
        {**message, "event_id": str(uuid.uuid4()), "environment": environment, "data": data} | extra
    ).encode()


def records(
    *values: bytes, topic: str = CLIENTS_LIFECYCLE, key: bytes = b"client-1"
) -> list[ConsumerRecord[Any, Any]]:
    return [
        ConsumerRecord(
            topic=topic,
            partition=0,
            offset=offset,
            timestamp=1_700_000_000_000 + offset,
            timestamp_type=0,
            key=key,
            value=value,
            checksum=None,
            serialized_key_size=len(key),
            serialized_value_size=len(value),
            headers=[("type", b"client.registered")],
        )
        for offset, value in enumerate(values)
    ]


class Applier:
    """The consumer's handler: records each event's client name, in one transaction
    per batch, once per event; it can be told to fail as if the database were away."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.calls = 0
        self.unavailable_for = 0

    async def __call__(self, events: list[ClientLifecycleEvent]) -> None:
        self.calls += 1
        if self.unavailable_for:
            self.unavailable_for -= 1
            raise ConnectionResetError("the database went away")
        async with self.pool.acquire() as connection, connection.transaction():
            for event in await inbox.claim_new(connection, events, CLIENTS_LIFECYCLE):
                await connection.execute(
                    "INSERT INTO applied VALUES ($1, $2)", event.event_id, event.data.name
                )

    async def applied(self) -> list[str]:
        rows = await self.pool.fetch("SELECT client_name FROM applied ORDER BY client_name")
        return [row["client_name"] for row in rows]


def consumer(pool: asyncpg.Pool, handler: Applier, **options: Any) -> Consumer[Any]:
    return Consumer(
        group_id="consumer-test",
        models={CLIENTS_LIFECYCLE: ClientLifecycleEvent, POINTS_REQUESTED: ClientLifecycleEvent},
        handler=handler,
        pool=lambda: pool,
        retry_first_seconds=0.001,
        backoff=Backoff(first=0.001, most=0.001),
        **options,
    )


async def quarantined(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT * FROM quarantine ORDER BY kafka_offset")


class TestDeterministicFailures:
    async def test_a_message_that_is_not_json_is_quarantined_with_its_bytes(
        self, pool: asyncpg.Pool
    ) -> None:
        applier = Applier(pool)
        batch = records(client_event("first"), b"\x00not json\xff", client_event("second"))

        await consumer(pool, applier).process(batch)

        assert await applier.applied() == ["first", "second"]
        [kept] = await quarantined(pool)
        assert (kept["value"], kept["key"], kept["kafka_offset"]) == (
            b"\x00not json\xff",
            b"client-1",
            1,
        )
        assert kept["topic"] == CLIENTS_LIFECYCLE
        assert kept["error_type"] == "ValidationError"
        assert kept["resolution"] is None

    async def test_a_message_the_database_refuses_is_narrowed_down_and_the_rest_applied(
        self, pool: asyncpg.Pool
    ) -> None:
        applier = Applier(pool)
        names = [f"client {n:02}" for n in range(9)]
        values = [client_event(name) for name in names]
        values.insert(5, client_event("refused by the database"))

        await consumer(pool, applier).process(records(*values))

        assert await applier.applied() == names
        [kept] = await quarantined(pool)
        assert kept["kafka_offset"] == 5
        assert kept["error_type"] == "CheckViolationError"
        assert kept["attempts"] == 3
        assert "applied_client_name_check" in kept["error"]

    async def test_a_quarantined_message_goes_to_its_dead_letter_topic_through_the_outbox(
        self, pool: asyncpg.Pool
    ) -> None:
        poison = client_event("refused by the database")

        await consumer(pool, Applier(pool)).process(records(poison))

        [letter] = await pool.fetch("SELECT topic, key, payload, headers FROM outbox")
        assert letter["topic"] == dead_letter_topic(CLIENTS_LIFECYCLE)
        assert (letter["key"], bytes(letter["payload"])) == ("client-1", poison)
        about = json.loads(letter["headers"][quarantine.QUARANTINE_HEADER])
        assert about["topic"] == CLIENTS_LIFECYCLE
        assert about["offset"] == 0
        assert letter["headers"]["type"] == "client.registered"

    async def test_the_same_message_delivered_again_is_quarantined_once(
        self, pool: asyncpg.Pool
    ) -> None:
        batch = records(b"{}")

        await consumer(pool, Applier(pool)).process(batch)
        await consumer(pool, Applier(pool)).process(batch)

        assert len(await quarantined(pool)) == 1


class TestTransientFailures:
    async def test_a_batch_is_refused_while_the_database_is_away_and_nothing_quarantined(
        self, pool: asyncpg.Pool
    ) -> None:
        applier = Applier(pool)
        applier.unavailable_for = 2
        batch = records(client_event("first"), client_event("second"))
        the_consumer = consumer(pool, applier)

        for _ in range(2):
            with pytest.raises(ConnectionResetError):
                await the_consumer.process(batch)
        await the_consumer.process(batch)

        assert await applier.applied() == ["first", "second"]
        assert await quarantined(pool) == []


class TestTolerantReading:
    async def test_an_event_with_fields_this_code_does_not_know_is_applied(
        self, pool: asyncpg.Pool
    ) -> None:
        applier = Applier(pool)
        message = json.loads(client_event("from a newer producer"))
        message["data"]["loyalty_tier"] = "gold"

        await consumer(pool, applier).process(
            records(json.dumps(message | {"trace_parent": "00-abc"}).encode())
        )

        assert await applier.applied() == ["from a newer producer"]
        assert await quarantined(pool) == []


class TestEnvironments:
    async def test_a_consumer_of_one_environment_leaves_the_others_messages_alone(
        self, pool: asyncpg.Pool
    ) -> None:
        applier = Applier(pool)
        batch = records(
            client_event("staging app", "staging"),
            client_event("production app", "production"),
        )

        await consumer(pool, applier, environment="production").process(batch)

        assert await applier.applied() == ["production app"]

    async def test_a_message_keyed_by_member_is_told_apart_before_it_is_parsed(
        self, pool: asyncpg.Pool
    ) -> None:
        poison = records(b"staging poison", topic=POINTS_REQUESTED, key=b"staging:org-1:member-1")
        options = {"environment_of": environment_from_member_key}

        await consumer(pool, Applier(pool), environment="production", **options).process(poison)
        assert await quarantined(pool) == []

        await consumer(pool, Applier(pool), environment="staging", **options).process(poison)
        assert len(await quarantined(pool)) == 1

    async def test_a_message_keyed_for_one_environment_but_of_another_is_quarantined(
        self, pool: asyncpg.Pool
    ) -> None:
        applier = Applier(pool)
        disguised = records(
            client_event("production app", "production"), key=b"staging:org-1:member-1"
        )
        options = {"environment_of": environment_from_member_key}

        for environment in ("staging", "production"):
            await consumer(pool, applier, environment=environment, **options).process(disguised)

        assert await applier.applied() == []
        [kept] = await quarantined(pool)
        assert "keyed for staging, but its environment is production" in kept["error"]

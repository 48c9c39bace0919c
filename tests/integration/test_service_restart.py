"""Killing a service process and starting it again loses no committed event
and applies none twice: the ledger, run as its own process, SIGKILLed while a
stream of point requests (with duplicates) flows through it."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from contracts import (
    ALL_TOPICS,
    POINTS_REQUESTED,
    POINTS_RESULTS,
    PointsRequested,
    PointsRequestedEvent,
    PointsResultEvent,
)
from infra import db
from infra.dev.kafka import create_topics
from services.ledger.service import verify_ledger
from tests.helpers import free_port

REQUESTS = 2000
MEMBERS = 40
ORG = "org_restart"


def point_requests() -> list[PointsRequestedEvent]:
    rng = random.Random(7)
    return [
        PointsRequestedEvent.new_event(
            data=PointsRequested(
                request_id=f"req-{n}",
                transaction_id=uuid.uuid4(),
                client_id="cli_restart",
                rule_id="rul_restart",
                rule_version=1,
                user_id=f"member-{rng.randrange(MEMBERS)}",
                type="earn",
                amount=rng.randint(1, 50),
                callback_url=None,
                requested_at=datetime.now(UTC),
            ),
            environment="staging",
            org_id=ORG,
            correlation_id=f"corr-{n}",
        )
        for n in range(REQUESTS)
    ]


async def produce(bootstrap: str, events: list[PointsRequestedEvent]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        sends = [
            await producer.send(
                POINTS_REQUESTED,
                value=event.model_dump_json().encode(),
                key=event.key().encode(),
                headers=[("correlation_id", event.correlation_id.encode())],
            )
            for event in events
        ]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


async def start_ledger(database_url: str, bootstrap: str) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "POINTS_MODE": "development",
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "LEDGER_PORT": str(free_port()),
        "LEDGER_BATCH_MAX_RECORDS": "100",
        "TOKEN_ISSUER_URL": "http://127.0.0.1:9",
    }
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.ledger",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def applied_count(database_url: str) -> int:
    connection = await db.connect(database_url, "ledger")
    try:
        return int(await connection.fetchval("SELECT count(*) FROM transactions"))
    except Exception:
        return 0  # the schema is not migrated yet
    finally:
        await connection.close()


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.2)
    return False


async def published_results(bootstrap: str) -> list[PointsResultEvent]:
    consumer = AIOKafkaConsumer(
        POINTS_RESULTS, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    results: list[PointsResultEvent] = []
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=1500)
            if not batches:
                return results
            for records in batches.values():
                results += [PointsResultEvent.model_validate_json(r.value) for r in records]
    finally:
        await consumer.stop()


class TestLedgerProcessKilledMidStream:
    async def test_after_a_sigkill_and_restart_every_request_is_applied_exactly_once(
        self, database_url: str, kafka_bootstrap_servers: str
    ) -> None:
        await create_topics(kafka_bootstrap_servers, ALL_TOPICS)
        events = point_requests()
        redelivered = random.Random(3).sample(events, 200)  # the same events, sent again
        await produce(kafka_bootstrap_servers, events + redelivered)

        ledger = await start_ledger(database_url, kafka_bootstrap_servers)
        assert await wait_for(lambda: _at_least(database_url, 300), timeout=60), (
            "the ledger applied nothing"
        )
        ledger.send_signal(signal.SIGKILL)
        await ledger.wait()
        killed_at = await applied_count(database_url)
        assert killed_at < REQUESTS, "the kill came too late to prove anything"

        ledger = await start_ledger(database_url, kafka_bootstrap_servers)
        try:
            assert await wait_for(lambda: _at_least(database_url, REQUESTS), timeout=90)
            await asyncio.sleep(2)  # let a redelivered tail arrive, if any would
        finally:
            ledger.send_signal(signal.SIGTERM)
            await ledger.wait()

        expected: Counter[str] = Counter()
        for event in events:
            expected[event.data.user_id] += event.data.amount
        connection = await db.connect(database_url, "ledger")
        try:
            assert await connection.fetchval("SELECT count(*) FROM transactions") == REQUESTS
            balances = {
                row["owner_id"]: row["balance"]
                for row in await connection.fetch(
                    "SELECT owner_id, balance FROM accounts WHERE kind = 'member'"
                )
            }
            assert balances == dict(expected)
            assert await verify_ledger(connection) == []
        finally:
            await connection.close()

        results = await published_results(kafka_bootstrap_servers)
        # At least once on the wire (a crash may re-publish), once per transaction in effect.
        assert {result.data.transaction_id for result in results} == {
            event.data.transaction_id for event in events
        }


async def _at_least(database_url: str, count: int) -> bool:
    return await applied_count(database_url) >= count

"""Killing a service process and starting it again loses no committed event
and applies none twice: the ledger, run as its own process, SIGKILLed while a
stream of point requests (with duplicates and redemptions it must refuse)
flows through it.

The expected balances are worked out here, independently of the ledger's
code: each member's requests reach the ledger in the order they were
produced (they share a key, so a partition), an earn adds its amount, and a
redeem takes its amount only when the member's balance covers it.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import pytest
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
from infra.kafka_admin import create_topics
from tests.helpers import eventually, free_port

ORG = "org_restart"


@dataclass(frozen=True)
class Workload:
    """Distinct point requests, in the order the gateway published them, and
    some of them published again (as an outbox relay that died before marking
    them would)."""

    requests: list[PointsRequestedEvent]
    redelivered: list[PointsRequestedEvent]

    def stream(self, rng: random.Random) -> list[PointsRequestedEvent]:
        """Every message to produce: each redelivery somewhere after its original."""
        position = {event.event_id: index for index, event in enumerate(self.requests)}
        placed = [(float(index), event) for index, event in enumerate(self.requests)]
        placed += [
            (rng.uniform(position[event.event_id] + 0.5, len(self.requests)), event)
            for event in self.redelivered
        ]
        return [event for _, event in sorted(placed, key=lambda pair: pair[0])]

    def expected(self) -> tuple[dict[str, int], set[UUID]]:
        """Each member's balance once all is applied, and the requests refused."""
        balances: Counter[str] = Counter()
        refused = set()
        for event in self.requests:
            data = event.data
            if data.type == "earn":
                balances[data.user_id] += data.amount
            elif balances[data.user_id] >= data.amount:
                balances[data.user_id] -= data.amount
            else:
                refused.add(data.transaction_id)
        return dict(balances), refused


def workload(
    requests: int, *, members: int, redeem_share: float, redeliveries: int, seed: int
) -> Workload:
    rng = random.Random(seed)
    events = []
    for n in range(requests):
        redeem = rng.random() < redeem_share
        events.append(
            PointsRequestedEvent.new_event(
                data=PointsRequested(
                    request_id=f"req-{n}",
                    transaction_id=uuid.uuid4(),
                    client_id="cli_restart",
                    rule_id="rul_shop" if redeem else "rul_restart",
                    rule_version=1,
                    user_id=f"member-{rng.randrange(members)}",
                    type="redeem" if redeem else "earn",
                    amount=rng.randint(1, 120) if redeem else rng.randint(1, 50),
                    callback_url=None,
                    requested_at=datetime.now(UTC),
                ),
                environment="staging",
                org_id=ORG,
                correlation_id=f"corr-{n}",
            )
        )
    return Workload(events, rng.sample(events, redeliveries))


async def produce(
    bootstrap: str, events: list[PointsRequestedEvent], *, chunk: int = 0, pause: float = 0
) -> None:
    """Send ``events`` keyed as the gateway does; ``chunk`` at a time, ``pause`` s apart."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        step = chunk or len(events)
        for start in range(0, len(events), step):
            sends = [
                await producer.send(
                    POINTS_REQUESTED,
                    value=event.model_dump_json().encode(),
                    key=event.key().encode(),
                    headers=[("correlation_id", event.correlation_id.encode())],
                )
                for event in events[start : start + step]
            ]
            await asyncio.gather(*sends)
            await asyncio.sleep(pause)
    finally:
        await producer.stop()


async def start_ledger(
    database_url: str, bootstrap: str, batch_max_records: int
) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "POINTS_MODE": "development",
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "LEDGER_PORT": str(free_port()),
        "LEDGER_BATCH_MAX_RECORDS": str(batch_max_records),
        # A killed consumer's partitions move on after 3 s rather than 10.
        "LEDGER_CONSUMER_SESSION_TIMEOUT_MS": "3000",
        "LEDGER_CONSUMER_HEARTBEAT_INTERVAL_MS": "1000",
        "TOKEN_ISSUER_URL": "http://127.0.0.1:9",
        "LOG_LEVEL": "WARNING",
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


async def run_ledger_killed_at(
    database_url: str,
    bootstrap: str,
    *,
    kill_after_more: list[int],
    total: int,
    rng: random.Random,
    batch_max_records: int = 100,
) -> list[int]:
    """Run the ledger process and SIGKILL it, once for each of ``kill_after_more``,
    when that many more requests were applied since it started (plus a random
    moment); then let one last process apply all ``total``. Returns the count
    applied when each kill landed."""
    applied_at_kills = []
    for more in kill_after_more:
        threshold = await applied_count(database_url) + more
        ledger = await start_ledger(database_url, bootstrap, batch_max_records)
        try:
            await eventually(
                lambda t=threshold: _at_least(database_url, t),
                timeout=60,
                what=f"the ledger reaching {threshold} applied requests",
            )
            await asyncio.sleep(rng.uniform(0, 0.05))
        finally:
            ledger.send_signal(signal.SIGKILL)
            await ledger.wait()
        applied_at_kills.append(await applied_count(database_url))
    assert applied_at_kills[-1] < total, "the last kill came too late to prove anything"
    ledger = await start_ledger(database_url, bootstrap, batch_max_records)
    try:
        await eventually(
            lambda: _at_least(database_url, total),
            timeout=90,
            what=f"the ledger applying all {total} requests",
        )
        await asyncio.sleep(2)  # let a redelivered tail arrive, if any would
    finally:
        ledger.send_signal(signal.SIGTERM)
        await ledger.wait()
    return applied_at_kills


async def published_results(bootstrap: str) -> list[PointsResultEvent]:
    consumer = AIOKafkaConsumer(
        POINTS_RESULTS, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    results: list[PointsResultEvent] = []
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=1500, max_records=5000)
            if not batches:
                return results
            for records in batches.values():
                results += [PointsResultEvent.model_validate_json(r.value) for r in records]
    finally:
        await consumer.stop()


async def points_ledger_verify(database_url: str, var_dir: Path) -> tuple[int, str]:
    """Run ``points ledger verify`` as the operator would; its exit code and output."""
    env = {**os.environ, "DATABASE_URL": database_url, "POINTS_VAR_DIR": str(var_dir)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "points_cli",
        "ledger",
        "verify",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode()


async def assert_applied_exactly_once(
    database_url: str, bootstrap: str, work: Workload, var_dir: Path
) -> None:
    """Balances as worked out independently, one transaction per request, the
    refused ones refused, a result for each, and ``points ledger verify`` passing."""
    balances, refused = work.expected()
    connection = await db.connect(database_url, "ledger")
    try:
        rows = await connection.fetch("SELECT id, status, reason FROM transactions")
        members = await connection.fetch(
            "SELECT owner_id, balance FROM accounts WHERE kind = 'member'"
        )
    finally:
        await connection.close()
    assert len(rows) == len(work.requests)
    assert {row["id"] for row in rows} == {event.data.transaction_id for event in work.requests}
    assert {row["id"] for row in rows if row["status"] == "rejected"} == refused
    assert {row["reason"] for row in rows if row["status"] == "rejected"} <= {
        "INSUFFICIENT_BALANCE"
    }
    assert {row["owner_id"]: row["balance"] for row in members} == balances

    results = await published_results(bootstrap)
    # At least once on the wire (a crash may re-publish), once per transaction in effect.
    assert {result.data.transaction_id for result in results} == {
        event.data.transaction_id for event in work.requests
    }
    exit_code, report = await points_ledger_verify(database_url, var_dir)
    assert exit_code == 0, report


async def _at_least(database_url: str, count: int) -> bool:
    return await applied_count(database_url) >= count


class TestLedgerProcessKilledMidStream:
    async def test_after_a_sigkill_and_restart_every_request_is_applied_exactly_once(
        self, database_url: str, kafka_bootstrap_servers: str, tmp_path: Path
    ) -> None:
        await create_topics(kafka_bootstrap_servers, ALL_TOPICS)
        rng = random.Random(3)
        work = workload(2000, members=40, redeem_share=0.2, redeliveries=200, seed=7)
        await produce(kafka_bootstrap_servers, work.stream(rng))

        await run_ledger_killed_at(
            database_url, kafka_bootstrap_servers, kill_after_more=[300], total=2000, rng=rng
        )

        await assert_applied_exactly_once(database_url, kafka_bootstrap_servers, work, tmp_path)


REQUESTS = 20_000
KILLS = 3


class TestLedgerKilledRepeatedlyUnderLoad:
    @pytest.mark.timeout(180)
    async def test_after_several_sigkills_every_balance_is_exactly_right(
        self, database_url: str, kafka_bootstrap_servers: str, tmp_path: Path
    ) -> None:
        """20,000 requests (plus 1,000 redeliveries, a quarter of them redeems, many
        refused) are produced while the ledger is SIGKILLed three times at random
        moments; once it has caught up, the ledger is exactly right."""
        await create_topics(kafka_bootstrap_servers, ALL_TOPICS)
        seed = random.randrange(2**32)
        rng = random.Random(seed)
        work = workload(REQUESTS, members=500, redeem_share=0.25, redeliveries=1000, seed=seed)
        kill_after_more = [rng.randint(1000, 5000) for _ in range(KILLS)]

        producing = asyncio.create_task(
            produce(kafka_bootstrap_servers, work.stream(rng), chunk=1000, pause=0.1)
        )
        try:
            applied_at_kills = await run_ledger_killed_at(
                database_url,
                kafka_bootstrap_servers,
                kill_after_more=kill_after_more,
                total=REQUESTS,
                rng=rng,
                # Catching up after each kill, batches are large enough to be applied
                # as several parts side by side, and a kill can land between their commits.
                batch_max_records=2000,
            )
        finally:
            await producing

        assert len(applied_at_kills) == KILLS, f"seed {seed}"
        await assert_applied_exactly_once(database_url, kafka_bootstrap_servers, work, tmp_path)

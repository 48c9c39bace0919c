"""`make bench-ledger`: how fast the ledger applies point requests end to end.

On this machine, in one run:

1. starts an embedded PostgreSQL (or uses ``--server-dsn``) and a fresh Tansu
   broker, and pre-produces 100,000 ``points.requested.v1`` events for 10,000
   members, keyed as the gateway keys them (a tenth are redeems, some refused;
   ``--expiring-share`` of the earns, a tenth by default, carry an expiry: a
   fifth of those already past, so the ledger's expiry pass, run every
   ``--expiry-interval`` seconds, has work during the run, the rest within a year);
2. starts the ledger as its real process (``python -m services.ledger``)
   under the development stack's supervisor, and measures the apply rate from
   its first committed batch until the last result has been relayed to
   ``points.results.v1`` by its outbox: consume, apply, commit, publish;
3. measures ``pgbench -N`` (8 clients, 20 s) on a scratch database of the same
   server: one commit per operation, the ceiling batching must beat.

Figures are printed; nothing here is asserted. Other work on the machine makes
them noisy: compare the two figures of one run, not figures across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from aiokafka import AIOKafkaProducer

from contracts import ALL_TOPICS, POINTS_REQUESTED, PointsRequested, PointsRequestedEvent
from infra.dev.kafka import start_tansu
from infra.dev.launcher import free_port
from infra.dev.postgres import ensure_database, start_embedded_postgres
from infra.dev.supervisor import Supervisor
from infra.kafka_admin import create_topics
from services.ledger.settings import LedgerSettings

ORG = "org_bench"


def point_requests(
    count: int, members: int, expiring_share: float = 0.0, seed: int = 1
) -> list[PointsRequestedEvent]:
    rng = random.Random(seed)
    requested_at = datetime.now(UTC)
    events = []
    for n in range(count):
        redeem = rng.random() < 0.1
        expires_at = None
        if not redeem and rng.random() < expiring_share:
            days = -1 if rng.random() < 0.2 else rng.randint(1, 365)
            expires_at = requested_at + timedelta(days=days, seconds=rng.randrange(86_400))
        events.append(
            PointsRequestedEvent.new_event(
                data=PointsRequested(
                    request_id=f"bench-{n}",
                    transaction_id=uuid.uuid4(),
                    client_id="cli_bench",
                    rule_id="rul_bench_shop" if redeem else "rul_bench_earn",
                    rule_version=1,
                    user_id=f"member-{rng.randrange(members)}",
                    type="redeem" if redeem else "earn",
                    amount=rng.randint(1, 100),
                    callback_url=None,
                    requested_at=requested_at,
                    expires_at=expires_at,
                ),
                environment="staging",
                org_id=ORG,
                correlation_id=f"bench-{n}",
            )
        )
    return events


async def pre_produce(bootstrap: str, events: list[PointsRequestedEvent]) -> float:
    """Send every event and wait for the broker's acknowledgements; seconds taken."""
    started = time.perf_counter()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    await producer.start()
    try:
        pending = []
        for event in events:
            pending.append(
                await producer.send(
                    POINTS_REQUESTED,
                    value=event.model_dump_json().encode(),
                    key=event.key().encode(),
                )
            )
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def counts(connection: asyncpg.Connection) -> tuple[int, int]:
    """Requests recorded, and their results the outbox has relayed, so far (expiries and
    their results not counted)."""
    try:
        row = await connection.fetchrow(
            "SELECT (SELECT count(*) FROM ledger.transactions"
            "        WHERE type IN ('earn', 'redeem')) AS applied,"
            " (SELECT count(*) FROM ledger.outbox WHERE published_at IS NOT NULL"
            "        AND headers->>'type' IN ('points.applied', 'points.rejected')) AS relayed"
        )
    except asyncpg.UndefinedTableError:
        return 0, 0  # not migrated yet
    assert row is not None
    return int(row["applied"]), int(row["relayed"])


async def measure_ledger(
    database_url: str,
    bootstrap: str,
    total: int,
    batch_max_records: int,
    batch_parts: int,
    timeout: float,
    replicas: int = 1,
    expiry_interval: float = 1.0,
) -> dict[str, float]:
    """Run ``replicas`` ledger processes (one consumer group; partitions split between
    them) until every result is relayed."""
    supervisor = Supervisor(colour=False)
    env = {
        **os.environ,
        "POINTS_MODE": "development",
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "LEDGER_BATCH_MAX_RECORDS": str(batch_max_records),
        "LEDGER_BATCH_PARTS": str(batch_parts),
        "LEDGER_EXPIRY_INTERVAL_SECONDS": str(expiry_interval),
        "TOKEN_ISSUER_URL": "http://127.0.0.1:9",
        "LOG_LEVEL": "WARNING",
    }
    connection = await asyncpg.connect(database_url)
    started = time.perf_counter()
    for replica in range(replicas):
        await supervisor.add(
            f"ledger-{replica + 1}",
            [sys.executable, "-m", "services.ledger"],
            {**env, "LEDGER_PORT": str(free_port())},
        )
    try:
        applied = relayed = 0
        while relayed < total and time.perf_counter() - started < timeout:
            await asyncio.sleep(0.2)
            applied, relayed = await counts(connection)
        wall = time.perf_counter() - started
        # The ledger's own clocks: first batch decided, last result acknowledged by Kafka.
        first, last = await connection.fetchrow(
            "SELECT (SELECT min(created_at) FROM ledger.transactions),"
            " (SELECT max(published_at) FROM ledger.outbox)"
        )
        rejected = await connection.fetchval(
            "SELECT count(*) FROM ledger.transactions WHERE status = 'rejected'"
        )
        expired = await connection.fetchval(
            "SELECT count(*) FROM ledger.transactions WHERE type = 'expiry'"
        )
    finally:
        await supervisor.stop()
        await connection.close()
    seconds = (last - first).total_seconds()
    return {
        "applied": applied,
        "relayed": relayed,
        "rejected": rejected,
        "expired": expired,
        "seconds": seconds,
        "rate": relayed / seconds,
        "wall": wall,
    }


def pgbench(dsn: str, seconds: int, clients: int) -> float:
    """``pgbench -N`` TPS on a scratch database of the server ``dsn`` names."""
    executable = shutil.which("pgbench") or "/usr/bin/pgbench"
    scratch = asyncio.run(ensure_database(dsn, "bench_pgbench"))
    subprocess.run(  # noqa: S603
        [executable, "-i", "-q", "-s", "10", scratch], check=True, capture_output=True
    )
    completed = subprocess.run(  # noqa: S603
        [executable, "-N", "-c", str(clients), "-j", "2", "-T", str(seconds), scratch],
        check=True,
        capture_output=True,
        text=True,
    )
    match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", completed.stdout)
    if match is None:
        raise RuntimeError(f"pgbench printed no tps:\n{completed.stdout}")
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--members", type=int, default=10_000)
    defaults = LedgerSettings()
    parser.add_argument("--batch-max-records", type=int, default=defaults.batch_max_records)
    parser.add_argument(
        "--batch-parts",
        type=int,
        default=defaults.batch_parts,
        help="parts a batch is applied as, side by side (LEDGER_BATCH_PARTS)",
    )
    parser.add_argument(
        "--expiring-share",
        type=float,
        default=0.1,
        help="share of the earns whose points expire (a fifth of those already due)",
    )
    parser.add_argument(
        "--expiry-interval",
        type=float,
        default=1.0,
        help="seconds between the ledger's expiry passes (LEDGER_EXPIRY_INTERVAL_SECONDS)",
    )
    parser.add_argument("--pgbench-seconds", type=int, default=20)
    parser.add_argument("--pgbench-clients", type=int, default=8)
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="ledger processes sharing the topic's partitions (the way the ledger scales)",
    )
    parser.add_argument(
        "--server-dsn",
        help="a PostgreSQL server to use instead of an embedded one (a database is created)",
    )
    options = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-ledger-"))
    work.chmod(0o755)  # the embedded PostgreSQL runs as its own system user
    postgres = None if options.server_dsn else start_embedded_postgres(work / "pgdata")
    server_dsn = options.server_dsn or postgres.dsn  # type: ignore[union-attr]
    broker = start_tansu(free_port(), work / "tansu.log")
    try:
        database_url = asyncio.run(ensure_database(server_dsn, f"bench_{uuid.uuid4().hex[:8]}"))
        asyncio.run(create_topics(broker.bootstrap_servers, ALL_TOPICS))
        events = point_requests(options.events, options.members, options.expiring_share)
        produced = asyncio.run(pre_produce(broker.bootstrap_servers, events))
        print(f"pre-produced {len(events):,} events in {produced:.1f} s; starting the ledger …")
        ledger = asyncio.run(
            measure_ledger(
                database_url,
                broker.bootstrap_servers,
                len(events),
                options.batch_max_records,
                options.batch_parts,
                timeout=600,
                replicas=options.replicas,
                expiry_interval=options.expiry_interval,
            )
        )
        print(f"measuring pgbench -N for {options.pgbench_seconds} s …", flush=True)
        tps = pgbench(server_dsn, options.pgbench_seconds, options.pgbench_clients)

        print()
        print("ledger benchmark (2-core machine, shared; figures are noisy)")
        print(
            f"  ledger, end to end:  {ledger['rate']:,.0f} events/s  "
            f"({ledger['relayed']:,.0f} results relayed, {ledger['rejected']:,.0f} refused, "
            f"{ledger['expired']:,.0f} lots expired, "
            f"in {ledger['seconds']:.1f} s from the first batch to the last result relayed; "
            f"{ledger['wall']:.1f} s with start-up)"
        )
        print(
            f"  pgbench -N, {options.pgbench_clients} clients: {tps:,.0f} TPS "
            "(one commit per operation)"
        )
        print(f"  ratio ledger / pgbench: {ledger['rate'] / tps:.2f}")
        print(
            f"  batch size: up to {options.batch_max_records} requests, applied as up to "
            f"{options.batch_parts} parts side by side (one transaction each); "
            f"{options.replicas} ledger process(es)"
        )
    finally:
        broker.stop()
        if postgres is not None:
            postgres.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

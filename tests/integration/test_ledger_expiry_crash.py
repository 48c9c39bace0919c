"""A ledger process SIGKILLed while it expires 10,000 lots, then started again.

The ledger runs as ``python -m services.ledger`` against the test's PostgreSQL
and broker, with 10,000 lots already due and small expiry transactions, so the
kill lands mid-pass. Started again, it must expire every lot exactly once: one
expiry transaction and one ``points.expired`` result per lot, naming the expiry
the lot records, whatever the killed process had committed. Expiry ids are
random, so nothing but each lot's own state keeps a second expiry out.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import asyncpg

from contracts import ALL_TOPICS
from infra.kafka_admin import create_topics
from services.ledger.applying import apply_batch
from services.ledger.verification import verify_ledger
from tests.helpers import eventually, free_port
from tests.integration.test_ledger_service import points_requested
from tests.integration.test_notifier_crash import log_tail_on_failure

LOTS = 10_000
MEMBERS = 500


async def start_ledger(database_url: str, bootstrap: str, log: Path) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "POINTS_MODE": "development",
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "LEDGER_PORT": str(free_port()),
        "LEDGER_EXPIRY_INTERVAL_SECONDS": "0.5",
        "LEDGER_EXPIRY_CHUNK": "100",
        "LOG_JSON": "true",
    }
    with log.open("ab") as output:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.ledger",
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=output,
        )


async def run_ledger_until(
    database_url: str,
    bootstrap: str,
    log: Path,
    probe: Callable[[], Awaitable[bool]],
    what: str,
    stop: signal.Signals = signal.SIGTERM,
) -> None:
    """Run a ledger process until ``probe`` holds, then send it ``stop``."""
    ledger = await start_ledger(database_url, bootstrap, log)
    try:
        with log_tail_on_failure(log):
            await eventually(probe, timeout=120, what=what)
    finally:
        ledger.send_signal(stop)
        await ledger.wait()


async def seed_due_lots(pool: asyncpg.Pool) -> None:
    due = datetime.now(UTC) - timedelta(hours=1)
    events = [
        points_requested(
            f"member-{n % MEMBERS}",
            amount=1 + n % 7,
            rule_id=f"rule-{n % 3}",
            expires_at=due - timedelta(seconds=n),
        )
        for n in range(LOTS)
    ]
    for start in range(0, LOTS, 2_000):
        async with pool.acquire() as connection, connection.transaction():
            await apply_batch(connection, events[start : start + 2_000])


async def expiries(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM transactions WHERE type = 'expiry'"))


class TestLedgerKilledMidExpiry:
    async def test_started_again_it_expires_every_lot_exactly_once(
        self, database_url: str, kafka_bootstrap_servers: str, pool: asyncpg.Pool, tmp_path: Path
    ) -> None:
        await create_topics(kafka_bootstrap_servers, ALL_TOPICS)
        await seed_due_lots(pool)
        log = tmp_path / "ledger.log"

        async def some_expired() -> bool:
            return await expiries(pool) > 0

        servers = (database_url, kafka_bootstrap_servers, log)
        await run_ledger_until(*servers, some_expired, "some lots expired", signal.SIGKILL)
        expired_before_kill = await expiries(pool)

        async def all_expired() -> bool:
            return await expiries(pool) >= LOTS and not await pool.fetchval(
                "SELECT count(*) FROM outbox WHERE published_at IS NULL"
            )

        await run_ledger_until(*servers, all_expired, "every lot expired and published")

        assert 0 < expired_before_kill < LOTS, "the kill did not land mid-pass"
        assert await expiries(pool) == LOTS
        lots = await pool.fetch("SELECT id, remaining, expired_by FROM lots")
        assert len(lots) == LOTS
        assert all(lot["remaining"] == 0 and lot["expired_by"] is not None for lot in lots)
        assert len({lot["expired_by"] for lot in lots}) == LOTS
        assert (
            await pool.fetchval(
                "SELECT count(*) FROM accounts WHERE kind = 'member' AND balance <> 0"
            )
            == 0
        )
        results = await pool.fetch(
            "SELECT payload FROM outbox WHERE headers->>'type' = 'points.expired'"
        )
        expired = [json.loads(row["payload"]) for row in results]
        assert len(expired) == LOTS
        assert {
            (UUID(result["data"]["transaction_id"]), UUID(result["data"]["expiry_id"]))
            for result in expired
        } == {(lot["id"], lot["expired_by"]) for lot in lots}
        assert len({result["event_id"] for result in expired}) == LOTS
        async with pool.acquire() as connection:
            assert await verify_ledger(connection) == []

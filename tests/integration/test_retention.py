"""Every table that grows with traffic is bounded: the retention purges against real
PostgreSQL (and the broker, for the inbox's committed offsets)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from contracts import MEMBERS_LIFECYCLE, POINTS_REQUESTED, TOPICS_TO_CREATE
from infra import inbox
from infra.health import health_router
from infra.http import create_http_app
from infra.inbox_retention import PURGE_INBOX, InboxRetention
from infra.kafka_admin import create_topics
from infra.outbox import enqueue
from infra.retention import Purge, Retention, outbox_purge, purge_in_batches
from infra.runtime import ServiceRuntime
from infra.settings import ServiceSettings
from services.ledger.app import MIGRATIONS as LEDGER_MIGRATIONS
from services.ledger.app import create_app as create_ledger_app
from services.ledger.settings import LedgerSettings
from services.notifier import repository as notifier_repository
from services.notifier.app import MIGRATIONS as NOTIFIER_MIGRATIONS
from services.rules import sign_in_repository
from services.rules.app import MIGRATIONS as RULES_MIGRATIONS
from tests.helpers import Service, eventually, migrated_pool
from tests.integration.test_ledger_expiry import project, standing
from tests.integration.test_ledger_service import apply, balance, points_requested
from tests.integration.test_metrics import rule_events, running, sample, scrape

TOPIC = POINTS_REQUESTED
GROUP = "retention-test"
BATCH = 2


async def count(pool: asyncpg.Pool, table: str, where: str = "true") -> int:
    return int(await pool.fetchval(f"SELECT count(*) FROM {table} WHERE {where}"))  # noqa: S608


async def claim(
    pool: asyncpg.Pool,
    *,
    days_ago: float,
    partition: int | None = None,
    offset: int | None = None,
    topic: str = TOPIC,
) -> UUID:
    """An inbox row processed ``days_ago``, read at ``partition``/``offset`` (or nowhere)."""
    event_id = uuid4()
    positions = {} if partition is None or offset is None else {event_id: (partition, offset)}
    async with pool.acquire() as connection, connection.transaction():
        with inbox.delivered_from(positions):
            assert await inbox.claim(connection, event_id, topic)
        await connection.execute(
            "UPDATE inbox SET processed_at = now() - $2::float8 * interval '1 day'"
            " WHERE event_id = $1",
            event_id,
            days_ago,
        )
    return event_id


async def inbox_ids(pool: asyncpg.Pool) -> set[UUID]:
    return {row["event_id"] for row in await pool.fetch("SELECT event_id FROM inbox")}


async def purge_inbox(pool: asyncpg.Pool, keep: timedelta, committed: dict[int, int]) -> int:
    partitions = sorted(committed)
    return await purge_in_batches(
        pool,
        PURGE_INBOX,
        TOPIC,
        keep,
        partitions,
        [committed[p] for p in partitions],
        batch_size=BATCH,
    )


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with migrated_pool(database_url, "ledger", LEDGER_MIGRATIONS) as pool:
        yield pool


class TestTheInbox:
    async def test_a_consumer_records_where_each_claimed_event_was_read(
        self, pool: asyncpg.Pool
    ) -> None:
        first, second = uuid4(), uuid4()
        async with pool.acquire() as connection, connection.transaction():
            with inbox.delivered_from({first: (3, 41), second: (5, 7)}):
                await inbox.claim_all(connection, [first, second], TOPIC)

        rows = await pool.fetch("SELECT event_id, kafka_partition, kafka_offset FROM inbox")

        assert {(r["event_id"], r["kafka_partition"], r["kafka_offset"]) for r in rows} == {
            (first, 3, 41),
            (second, 5, 7),
        }


class TestTheInboxPurge:
    async def test_removes_rows_past_retention_whose_offsets_the_group_committed(
        self, pool: asyncpg.Pool
    ) -> None:
        gone = [await claim(pool, days_ago=10, partition=0, offset=n) for n in range(5)]

        purged = await purge_inbox(pool, timedelta(days=9), {0: 5})

        assert purged == 5
        assert not await inbox_ids(pool) & set(gone)

    async def test_keeps_rows_the_group_has_not_committed_past(self, pool: asyncpg.Pool) -> None:
        kept = await claim(pool, days_ago=10, partition=0, offset=5)

        await purge_inbox(pool, timedelta(days=9), {0: 5})

        assert await inbox_ids(pool) == {kept}

    async def test_keeps_rows_within_retention_even_when_committed(
        self, pool: asyncpg.Pool
    ) -> None:
        kept = await claim(pool, days_ago=8, partition=0, offset=1)

        await purge_inbox(pool, timedelta(days=9), {0: 100})

        assert await inbox_ids(pool) == {kept}

    async def test_keeps_rows_of_a_partition_with_no_committed_offset(
        self, pool: asyncpg.Pool
    ) -> None:
        kept = await claim(pool, days_ago=10, partition=1, offset=1)

        await purge_inbox(pool, timedelta(days=9), {0: 100})

        assert await inbox_ids(pool) == {kept}

    async def test_removes_rows_claimed_outside_a_consumer_on_age_alone(
        self, pool: asyncpg.Pool
    ) -> None:
        await claim(pool, days_ago=10)
        kept = await claim(pool, days_ago=1)

        await purge_inbox(pool, timedelta(days=9), {})

        assert await inbox_ids(pool) == {kept}

    async def test_leaves_other_topics_rows(self, pool: asyncpg.Pool) -> None:
        kept = await claim(pool, days_ago=10, topic="points.results.v1")

        await purge_inbox(pool, timedelta(days=9), {})

        assert await inbox_ids(pool) == {kept}


class TestTheInboxRetentionOfAService:
    async def test_purges_what_the_group_committed_past_and_the_topic_no_longer_holds(
        self, pool: asyncpg.Pool, database_url: str, kafka_bootstrap_servers: str
    ) -> None:
        await create_topics(kafka_bootstrap_servers, TOPICS_TO_CREATE)
        partition = await produce_and_commit(kafka_bootstrap_servers, produced=4, committed=2)
        # The topic keeps 7 days and segments 1; outbox 1 day, margin 1: 10 days in all.
        settings = ServiceSettings(
            database_url=database_url, kafka_bootstrap_servers=kafka_bootstrap_servers
        )
        retention = InboxRetention(settings)
        retention.consumed(GROUP, [TOPIC])
        committed_past = await claim(pool, days_ago=11, partition=partition, offset=1)
        not_committed = await claim(pool, days_ago=11, partition=partition, offset=2)
        too_young = await claim(pool, days_ago=9.5, partition=partition, offset=0)
        purger = Retention(lambda: pool, interval=60, batch_size=BATCH)
        purger.add(*await retention.purges())

        purged = await purger.once()

        assert purged == 1
        assert committed_past not in await inbox_ids(pool)
        assert await inbox_ids(pool) == {not_committed, too_young}


async def produce_and_commit(servers: str, *, produced: int, committed: int) -> int:
    """Produce ``produced`` messages on one partition of the topic and have the group
    commit the first ``committed``; the partition."""
    producer = AIOKafkaProducer(bootstrap_servers=servers, acks="all")
    await producer.start()
    try:
        for _ in range(produced):
            sent = await producer.send_and_wait(TOPIC, b"{}", key=b"member", partition=0)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, group_id=GROUP, enable_auto_commit=False)
    await consumer.start()
    try:
        assigned = TopicPartition(TOPIC, sent.partition)
        consumer.assign([assigned])
        await consumer.commit({assigned: committed})
    finally:
        await consumer.stop()
    return int(sent.partition)


class TestTheOutboxPurge:
    async def test_removes_published_rows_past_retention_and_keeps_the_rest(
        self, pool: asyncpg.Pool
    ) -> None:
        async with pool.acquire() as connection, connection.transaction():
            await enqueue(connection, *rule_events(6))
        ids = [row["id"] for row in await pool.fetch("SELECT id FROM outbox ORDER BY id")]
        old, recent, pending = ids[:3], ids[3:5], ids[5]
        await pool.execute(
            "UPDATE outbox SET published_at = now() - interval '2 days' WHERE id = ANY($1)", old
        )
        await pool.execute("UPDATE outbox SET published_at = now() WHERE id = ANY($1)", recent)
        purger = Retention(lambda: pool, interval=60, batch_size=BATCH)
        purger.add(outbox_purge(timedelta(days=1)))

        purged = await purger.once()

        assert purged == 3
        left = [row["id"] for row in await pool.fetch("SELECT id FROM outbox ORDER BY id")]
        assert left == [*recent, pending]


class TestAServicesRuntime:
    async def test_purges_its_outbox_and_inbox_in_the_background_and_keeps_compacted_rows(
        self, database_url: str, kafka_bootstrap_servers: str
    ) -> None:
        await create_topics(kafka_bootstrap_servers, TOPICS_TO_CREATE)
        settings = LedgerSettings(
            database_url=database_url,
            kafka_bootstrap_servers=kafka_bootstrap_servers,
            startup_timeout_seconds=15,
            retention_interval_seconds=0.2,
        )
        async with running(Service(*create_ledger_app(settings))) as ledger:
            pool = ledger.runtime.pool
            async with pool.acquire() as connection, connection.transaction():
                await enqueue(connection, *rule_events(1))

            async def published() -> bool:
                return await count(pool, "outbox", "published_at IS NOT NULL") == 1

            await eventually(published, timeout=20, what="the relay to publish")
            await pool.execute("UPDATE outbox SET published_at = now() - interval '2 days'")
            await claim(pool, days_ago=30)
            kept = await claim(pool, days_ago=30, topic=MEMBERS_LIFECYCLE)

            async def purged() -> bool:
                return await count(pool, "outbox") == 0 and await inbox_ids(pool) == {kept}

            await eventually(purged, timeout=20, what="the outbox and inbox to be purged")


class TestPurgersAtOnce:
    async def test_two_purgers_share_the_work_and_count_each_row_once(
        self, pool: asyncpg.Pool
    ) -> None:
        rows = 3_000
        await pool.execute(
            "INSERT INTO inbox (event_id, topic, processed_at)"
            " SELECT gen_random_uuid(), $1, now() - interval '30 days' FROM generate_series(1, $2)",
            TOPIC,
            rows,
        )
        purge = Purge("inbox", PURGE_INBOX, (TOPIC, timedelta(days=9), list[int](), list[int]()))
        purgers = [Retention(lambda: pool, interval=60, batch_size=100) for _ in range(2)]
        for purger in purgers:
            purger.add(purge)

        counts = await asyncio.gather(*(purger.once() for purger in purgers))

        assert sum(counts) == rows
        assert await count(pool, "inbox") == 0


class TestRedeliveryAfterThePurge:
    async def test_a_request_redelivered_after_its_inbox_row_went_moves_no_points_again(
        self, pool: asyncpg.Pool
    ) -> None:
        event = points_requested(amount=100)
        await apply(pool, event)
        await pool.execute("DELETE FROM inbox")  # what a purge past retention does

        [again] = await apply(pool, event)

        assert await balance(pool) == 100
        assert await count(pool, "transactions") == 1
        assert (again.data.status, again.data.balance) == ("applied", 100)

    async def test_a_compacted_topic_replayed_after_the_purge_changes_no_standing(
        self, pool: asyncpg.Pool
    ) -> None:
        """members.lifecycle.v1 is compacted: a replay hands the ledger old events at any
        time, and the projection keeps only the newest standing, with no inbox row."""
        now = datetime.now(UTC)
        blocked, unblocked = standing(True, now), standing(False, now + timedelta(minutes=1))
        await project(pool, blocked, unblocked)
        await project(pool, blocked)  # the replay
        remembered = await count(pool, "inbox")

        [result] = await apply(pool, points_requested(amount=10))

        assert result.data.status == "applied"
        assert remembered == 0  # nothing to purge, nothing that needs to be kept


class TestTheNotifierDeliveriesPurge:
    async def test_removes_delivered_past_retention_and_keeps_pending_parked_and_failed(
        self, database_url: str
    ) -> None:
        async with migrated_pool(database_url, "notifier", NOTIFIER_MIGRATIONS) as pool:
            for status, days_ago in [
                ("delivered", 31),
                ("delivered", 1),
                ("pending", 31),
                ("parked", 31),
                ("failed", 31),
            ]:
                await pool.execute(
                    "INSERT INTO deliveries (event_id, client_id, org_id, environment,"
                    " request_id, transaction_id, url, host, body, status, updated_at)"
                    " VALUES ($1, 'c', 'o', 'staging', 'r', $1, 'https://x.test/', 'x.test',"
                    " '\\x7b7d', $2, now() - $3::float8 * interval '1 day')",
                    uuid4(),
                    status,
                    days_ago,
                )

            purged = await purge_in_batches(
                pool, notifier_repository.PURGE_DELIVERED, 30.0, batch_size=BATCH
            )

            left = sorted(
                (row["status"], row["days"])
                for row in await pool.fetch(
                    "SELECT status, round(extract(epoch FROM now() - updated_at) / 86400)::int"
                    " AS days FROM deliveries"
                )
            )
        assert purged == 1
        assert left == [("delivered", 1), ("failed", 31), ("parked", 31), ("pending", 31)]


class TestTheRulesPurges:
    async def test_remove_expired_sessions_and_idle_sign_in_keys_only(
        self, database_url: str
    ) -> None:
        async with migrated_pool(database_url, "rules", RULES_MIGRATIONS) as pool:
            await pool.execute("INSERT INTO organisations (id, name) VALUES ('org', 'Org')")
            await pool.execute(
                "INSERT INTO users (id, org_id, email, password_hash, role)"
                " VALUES ('user', 'org', 'a@example.com', 'x', 'admin')"
            )
            for expires in ("-1 hour", "1 hour"):
                await pool.execute(
                    "INSERT INTO console_sessions (id_hash, user_id, csrf_secret, expires_at)"
                    " VALUES (sha256(random()::text::bytea), 'user', '\\x00',"
                    " now() + $1::text::interval)",
                    expires,
                )
            for key, idle in (("idle", "2 hours"), ("recent", "1 minute")):
                await pool.execute(
                    "INSERT INTO sign_in_attempts (scope, key, attempts, last_attempt_at)"
                    " VALUES ('login', $1, 3, now() - $2::text::interval)",
                    key,
                    idle,
                )
            purger = Retention(lambda: pool, interval=60, batch_size=BATCH)
            purger.add(
                Purge("sessions", sign_in_repository.PURGE_EXPIRED_CONSOLE_SESSIONS),
                Purge("attempts", sign_in_repository.PURGE_IDLE_SIGN_IN_ATTEMPTS, (900.0,)),
            )

            purged = await purger.once()

            live = await count(pool, "console_sessions", "expires_at > now()")
            sessions = await count(pool, "console_sessions")
            keys = [row["key"] for row in await pool.fetch("SELECT key FROM sign_in_attempts")]
        assert purged == 2
        assert (live, sessions) == (1, 1)
        assert keys == ["recent"]


class TestTableSizeMetrics:
    async def test_each_table_of_the_schema_shows_its_rows_and_bytes(
        self, database_url: str
    ) -> None:
        settings = LedgerSettings(database_url=database_url, startup_timeout_seconds=15)
        runtime = ServiceRuntime(
            settings, schema="ledger", migrations=LEDGER_MIGRATIONS, relay=False
        )
        app = create_http_app(runtime.metrics)
        app.include_router(health_router(runtime))
        await runtime.start()
        try:
            await runtime.pool.execute(
                "INSERT INTO inbox (event_id, topic) SELECT gen_random_uuid(), 't'"
                " FROM generate_series(1, 500)"
            )
            await runtime.pool.execute("ANALYZE inbox")
            samples = await scrape(app)
        finally:
            await runtime.stop()

        assert samples[sample("points_table_rows", service="ledger", table="inbox")] == 500
        assert samples[sample("points_table_bytes", service="ledger", table="inbox")] > 0
        assert sample("points_table_bytes", service="ledger", table="transactions") in samples

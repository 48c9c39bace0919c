"""The outbox relay after its Kafka cluster lost its log or was replaced, and the operator's
``points outbox republish``, against real PostgreSQL and the embedded broker.

The broker is replaced as ``points dev`` replaces it on every start: Tansu
stopped, and a new one, empty and with a cluster id of its own, started on the
same port.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from structlog.testing import capture_logs

from contracts import ALL_TOPICS, RULES_LIFECYCLE, RuleLifecycleEvent
from infra import db
from infra.broker import start_producer
from infra.dev.kafka import TansuBroker, start_tansu
from infra.kafka_admin import ClusterIdentity, create_topics
from infra.outbox import OutboxRelay, enqueue
from infra.runtime import INFRA_MIGRATIONS
from infra.settings import ServiceSettings
from tests.helpers import free_port, points
from tests.integration.test_outbox import EXAMPLE, consume

SCHEMA = "outbox_test"


class ReplaceableBroker:
    """An embedded broker on a port of its own that the test can replace with an empty one."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.broker = self._start()

    @property
    def bootstrap_servers(self) -> str:
        return self.broker.bootstrap_servers

    def replace(self) -> None:
        self.broker.stop()
        self.broker = self._start()

    def _start(self) -> TansuBroker:
        return start_tansu(self.port, self.directory / "tansu.log")


@pytest.fixture
def replaceable_broker() -> Iterator[ReplaceableBroker]:
    with tempfile.TemporaryDirectory(prefix="tansu-") as directory:
        broker = ReplaceableBroker(Path(directory))
        try:
            yield broker
        finally:
            broker.broker.stop()


@pytest.fixture
async def outbox_schema(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    await db.migrate(database_url, SCHEMA, [INFRA_MIGRATIONS])
    connection = await db.connect(database_url, SCHEMA)
    try:
        yield connection
    finally:
        await connection.close()


def rule_events(count: int) -> list[RuleLifecycleEvent]:
    template = json.loads(EXAMPLE.read_text())[0]
    return [
        RuleLifecycleEvent.model_validate(
            dict(template, event_id=str(uuid.uuid4()), data=dict(template["data"], version=n))
        )
        for n in range(1, count + 1)
    ]


async def stage(connection: asyncpg.Connection, events: list[RuleLifecycleEvent]) -> None:
    async with connection.transaction():
        await enqueue(connection, *events)


def versions(values: list[bytes]) -> list[int]:
    return [RuleLifecycleEvent.model_validate_json(value).data.version for value in values]


@asynccontextmanager
async def following_relay(database_url: str, servers: str) -> AsyncIterator[OutboxRelay]:
    """A relay of the test schema that follows the cluster at ``servers`` and creates the
    topics on a new one, as the embedded stack's do; topics made on the first."""
    await create_topics(servers, ALL_TOPICS)
    producer = await start_producer(ServiceSettings(kafka_bootstrap_servers=servers))
    relay = OutboxRelay(
        database_url,
        SCHEMA,
        producer,
        safety_poll_seconds=0.2,
        cluster=ClusterIdentity(servers),
        on_new_cluster=lambda: create_topics(servers, ALL_TOPICS),
    )
    relay.start()
    try:
        yield relay
    finally:
        await relay.stop()
        await producer.stop()


class TestRelayOnANewCluster:
    async def test_a_replaced_cluster_gets_again_what_the_old_one_held_then_what_is_new(
        self,
        database_url: str,
        outbox_schema: asyncpg.Connection,
        replaceable_broker: ReplaceableBroker,
    ) -> None:
        servers = replaceable_broker.bootstrap_servers
        events = rule_events(6)
        async with following_relay(database_url, servers):
            await stage(outbox_schema, events[:5])
            assert versions(await consume(servers, RULES_LIFECYCLE, expected=5)) == [1, 2, 3, 4, 5]
            first_cluster = replaceable_broker.broker.cluster_id

            with capture_logs() as logs:
                replaceable_broker.replace()
                await stage(outbox_schema, events[5:])
                values = await consume(servers, RULES_LIFECYCLE, expected=6, timeout=60)

        # Everything the lost cluster held comes first, in commit order, then the new event.
        assert versions(values) == [1, 2, 3, 4, 5, 6]
        remembered = await outbox_schema.fetchval("SELECT cluster_id FROM outbox_relay")
        assert remembered == replaceable_broker.broker.cluster_id != first_cluster
        republishing = [line for line in logs if line["event"] == "outbox.republishing"]
        assert [line["rows"] for line in republishing] == [5]
        assert republishing[0]["previous_cluster_id"] == first_cluster

    async def test_the_first_cluster_a_relay_meets_is_remembered_and_nothing_is_republished(
        self,
        database_url: str,
        outbox_schema: asyncpg.Connection,
        replaceable_broker: ReplaceableBroker,
    ) -> None:
        servers = replaceable_broker.bootstrap_servers
        await outbox_schema.execute(
            "INSERT INTO outbox (topic, key, payload, published_at) "
            "VALUES ('rules.lifecycle.v1', 'k', '\\x7b7d', now())"
        )
        async with following_relay(database_url, servers) as relay:
            await stage(outbox_schema, rule_events(1))
            assert versions(await consume(servers, RULES_LIFECYCLE, expected=1)) == [1]
        assert relay.published == 1  # the row published before the relay knew clusters stays so
        remembered = await outbox_schema.fetchval("SELECT cluster_id FROM outbox_relay")
        assert remembered == replaceable_broker.broker.cluster_id


@pytest.fixture
def cli_environment(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("POINTS_MODE", "development")
    monkeypatch.setenv("POINTS_VAR_DIR", str(tmp_path))


async def publish_rows(database_url: str, published_ago: list[timedelta]) -> None:
    """Outbox rows in the trigger's schema, published that long ago."""
    connection = await db.connect(database_url, "trigger")
    try:
        for ago in published_ago:
            await connection.execute(
                "INSERT INTO outbox (topic, key, payload, published_at) "
                "VALUES ('points.requested.v1', 'k', '\\x7b7d', now() - $1::interval)",
                ago,
            )
    finally:
        await connection.close()


async def pending_in(database_url: str, schema: str) -> int:
    connection = await db.connect(database_url, schema)
    try:
        return int(
            await connection.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        )
    finally:
        await connection.close()


@pytest.mark.usefixtures("cli_environment")
class TestOutboxRepublishCommand:
    async def test_events_published_since_the_time_given_are_pending_again(
        self, database_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert await points("migrate") == 0
        await publish_rows(database_url, [timedelta(hours=3), timedelta(minutes=20)] * 2)
        capsys.readouterr()

        assert (
            await points("outbox", "republish", "--since", "1h", "--service", "trigger", "--json")
            == 0
        )

        answer = json.loads(capsys.readouterr().out)
        assert answer["services"]["trigger"]["republished"] == 2
        assert list(answer["services"]) == ["trigger"]
        assert await pending_in(database_url, "trigger") == 2

    async def test_every_service_is_republished_when_none_is_named(
        self, database_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert await points("migrate") == 0
        capsys.readouterr()
        since = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
        assert await points("outbox", "republish", "--since", since, "--json") == 0
        answer = json.loads(capsys.readouterr().out)
        assert sorted(answer["services"]) == ["ledger", "notifier", "rules", "trigger"]

    async def test_a_time_older_than_the_outbox_holds_is_refused_saying_how_far_back_it_goes(
        self, database_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert await points("migrate") == 0
        await publish_rows(database_url, [timedelta(hours=2)])
        capsys.readouterr()

        assert await points("outbox", "republish", "--since", "3d") == 1

        error = capsys.readouterr().err
        assert "it can go back to" in error and "nothing was republished" in error
        assert await pending_in(database_url, "trigger") == 0

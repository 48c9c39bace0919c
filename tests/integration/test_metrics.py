"""Every service's /metrics against real PostgreSQL and a real Kafka-protocol broker."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import httpx
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from contracts import POINTS_REQUESTED, RULES_LIFECYCLE, TOPICS_TO_CREATE, RuleLifecycleEvent
from infra.health import health_router
from infra.http import create_http_app
from infra.kafka_admin import create_topics
from infra.outbox import enqueue
from infra.runtime import ServiceRuntime
from services.ledger.app import MIGRATIONS as LEDGER_MIGRATIONS
from services.ledger.app import create_app as create_ledger_app
from services.ledger.settings import LedgerSettings
from tests.helpers import Service, eventually

EXAMPLES = Path(__file__).parents[2] / "contracts" / "examples"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples_of(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


async def scrape(app: FastAPI) -> Samples:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://service") as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    return samples_of(response.text)


def rule_events(count: int) -> list[RuleLifecycleEvent]:
    template = json.loads((EXAMPLES / f"{RULES_LIFECYCLE}.json").read_text())[0]
    return [
        RuleLifecycleEvent.model_validate(dict(template, event_id=str(uuid.uuid4())))
        for _ in range(count)
    ]


@asynccontextmanager
async def running(ledger: Service) -> AsyncIterator[Service]:
    await ledger.runtime.start()
    try:
        yield ledger
    finally:
        await ledger.runtime.stop()


class TestHttpMetrics:
    async def test_a_ledger_request_is_counted_under_its_route_template_and_status(
        self, database_url: str
    ) -> None:
        settings = LedgerSettings(database_url=database_url, startup_timeout_seconds=15)
        async with running(Service(*create_ledger_app(settings, consume=False))) as ledger:
            transport = httpx.ASGITransport(app=ledger.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://ledger") as http:
                refused = await http.get("/v1/members/member-42/balance")
            samples = await scrape(ledger.app)

        assert refused.status_code == 401
        route = "/v1/members/{user_id}/balance"
        labels = {"service": "ledger", "method": "GET", "route": route}
        assert samples[sample("points_http_requests_total", **labels, status="401")] == 1
        assert samples[sample("points_http_request_duration_seconds_count", **labels)] == 1
        # A reader runs no relay: the backlog is the consuming ledger's to report.
        assert not any(name == "points_outbox_backlog" for name, _ in samples)


class TestOutboxMetrics:
    async def test_the_backlog_counts_committed_rows_and_drops_once_the_relay_publishes_them(
        self, database_url: str, kafka_bootstrap_servers: str
    ) -> None:
        await create_topics(kafka_bootstrap_servers, TOPICS_TO_CREATE)
        settings = LedgerSettings(
            database_url=database_url,
            kafka_bootstrap_servers=kafka_bootstrap_servers,
            startup_timeout_seconds=15,
        )
        ledger = Service(*create_ledger_app(settings))
        backlog = sample("points_outbox_backlog", service="ledger")
        published = sample("points_outbox_published_total", service="ledger")
        # Holding the relay's leader lock keeps it from publishing until we let go.
        holder = await asyncpg.connect(database_url)
        await holder.fetchval("SELECT pg_advisory_lock(hashtext('ledger_outbox'))")
        try:
            async with running(ledger):
                pool = ledger.runtime.pool
                async with pool.acquire() as connection, connection.transaction():
                    await enqueue(connection, *rule_events(3))
                waiting = await scrape(ledger.app)
                await holder.close()

                async def drained() -> Samples | None:
                    samples = await scrape(ledger.app)
                    return samples if samples[backlog] == 0 else None

                after = await eventually(drained, timeout=15, what="the relay to publish")
        finally:
            await holder.close()

        assert (waiting[backlog], waiting[published]) == (3, 0)
        assert (after[backlog], after[published]) == (0, 3)


class TestConsumerLagMetric:
    async def test_a_group_that_consumed_none_of_seven_messages_lags_by_seven(
        self, database_url: str, kafka_bootstrap_servers: str
    ) -> None:
        await create_topics(kafka_bootstrap_servers, TOPICS_TO_CREATE)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap_servers, acks="all")
        await producer.start()
        try:
            for number in range(7):
                await producer.send_and_wait(POINTS_REQUESTED, b"{}", key=f"m-{number}".encode())
        finally:
            await producer.stop()
        settings = LedgerSettings(
            database_url=database_url, kafka_bootstrap_servers=kafka_bootstrap_servers
        )
        runtime = ServiceRuntime(
            settings, schema="ledger", migrations=LEDGER_MIGRATIONS, relay=False
        )
        runtime.watch_lag("reporting", [POINTS_REQUESTED])
        app = create_http_app(runtime.metrics)
        app.include_router(health_router(runtime))
        await runtime.start()
        try:
            samples = await scrape(app)
        finally:
            await runtime.stop()

        lag = sample(
            "points_consumer_lag", service="ledger", group="reporting", topic=POINTS_REQUESTED
        )
        assert samples[lag] == 7

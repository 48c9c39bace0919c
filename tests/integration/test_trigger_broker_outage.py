"""With the broker frozen, the gateway keeps accepting triggers; none is lost.

The embedded broker process is stopped with SIGSTOP (a restart would empty
its memory) while developers keep triggering; every 202 is backed by a
committed outbox row, and once the broker answers again (SIGCONT) the relay
publishes each accepted request.
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from contracts import ALL_TOPICS, POINTS_REQUESTED, PointsRequestedEvent
from infra.dev.kafka import create_topics, start_tansu
from infra.tokens import JwksVerifier
from services.rules.app import create_app as create_rules_app
from services.trigger.app import create_app as create_trigger_app
from services.trigger.settings import TriggerSettings
from tests.helpers import (
    RULES_URL,
    TRIGGER_URL,
    Seeder,
    asgi_client,
    bearer,
    client_token,
    eventually,
    free_port,
    login,
    rules_settings,
)

TRIGGERS = 200


async def requested_ids(bootstrap: str, wanted: set[str]) -> set[str]:
    """Request ids on ``points.requested.v1`` (read from the start, without a group),
    once all of ``wanted`` are there or a minute has passed."""
    partitions = next(t.partitions for t in ALL_TOPICS if t.name == POINTS_REQUESTED)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    seen: set[str] = set()
    try:
        assigned = [TopicPartition(POINTS_REQUESTED, p) for p in range(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        async with asyncio.timeout(60):
            while not wanted <= seen:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        seen.add(
                            PointsRequestedEvent.model_validate_json(record.value).data.request_id
                        )
    finally:
        await consumer.stop()
    return seen


class TestBrokerOutage:
    async def test_triggers_accepted_while_the_broker_is_frozen_are_all_published_after(
        self, database_url: str
    ) -> None:
        logs = Path(tempfile.mkdtemp(prefix="outage-"))
        broker = start_tansu(free_port(), logs / "tansu.log")
        try:
            await self._run(database_url, broker.bootstrap_servers, broker.pid)
        finally:
            os.kill(broker.pid, signal.SIGCONT)  # never leave a frozen process behind
            broker.stop()

    async def _run(self, database_url: str, bootstrap: str, broker_pid: int) -> None:
        await create_topics(bootstrap, ALL_TOPICS)
        settings = rules_settings(database_url, bootstrap)
        rules_app, rules_runtime = create_rules_app(settings)
        trigger_app, trigger_runtime = create_trigger_app(
            TriggerSettings(
                mode="development",
                database_url=database_url,
                kafka_bootstrap_servers=bootstrap,
                token_issuer_url=RULES_URL,
                rate_limit_per_second=10_000,
                rate_limit_burst=10_000,
            ),
            verifier=JwksVerifier(RULES_URL, http=asgi_client(rules_app, RULES_URL)),
        )
        await rules_runtime.start()
        await trigger_runtime.start()
        try:
            async with (
                asgi_client(rules_app, RULES_URL) as rules_http,
                asgi_client(trigger_app, TRIGGER_URL) as gateway,
            ):
                seeder = Seeder(database_url, settings)
                org = await seeder.organisation()
                client = await seeder.client(org.id)
                console = bearer(await login(rules_http, org.email))
                rule = (
                    await rules_http.post(
                        "/v1/rules",
                        headers=console,
                        json={
                            "name": "Outage",
                            "type": "earn",
                            "environment": "staging",
                            "apiTrigger": True,
                            "authorizedClientIds": [client.client_id],
                        },
                    )
                ).json()
                await rules_http.post(f"/v1/rules/{rule['id']}/activate", headers=console)
                developer = bearer(await client_token(rules_http, client))

                async def trigger(request_id: str) -> int:
                    response = await gateway.post(
                        "/v1/points/requests",
                        headers=developer,
                        json={
                            "userId": "member-1",
                            "ruleId": rule["id"],
                            "amount": 1,
                            "requestId": request_id,
                        },
                    )
                    return response.status_code

                async def projected() -> bool:
                    return await trigger(f"probe-{uuid.uuid4().hex}") == 202

                await eventually(projected, timeout=60, what="the rule reaching the gateway")

                os.kill(broker_pid, signal.SIGSTOP)
                request_ids = [f"outage-{n}" for n in range(TRIGGERS)]
                statuses = await asyncio.gather(*(trigger(rid) for rid in request_ids))
                assert statuses == [202] * TRIGGERS
                pending = await trigger_runtime.pool.fetchval(
                    "SELECT count(*) FROM outbox WHERE published_at IS NULL"
                )
                assert pending > 0, "the broker was frozen, so something must be waiting"

                os.kill(broker_pid, signal.SIGCONT)

                async def drained() -> bool:
                    left = await trigger_runtime.pool.fetchval(
                        "SELECT count(*) FROM outbox WHERE published_at IS NULL"
                    )
                    return left == 0

                await eventually(drained, timeout=120, what="the outbox to drain")
                published = await requested_ids(bootstrap, set(request_ids))
                assert set(request_ids) <= published
        finally:
            await trigger_runtime.stop()
            await rules_runtime.stop()

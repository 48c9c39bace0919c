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
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from contracts import ALL_TOPICS, POINTS_REQUESTED, PointsRequestedEvent
from infra.dev.kafka import start_tansu
from tests.helpers import eventually, free_port, trigger_stack

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
        async with trigger_stack(database_url, bootstrap) as stack:
            os.kill(broker_pid, signal.SIGSTOP)
            request_ids = [f"outage-{n}" for n in range(TRIGGERS)]
            responses = await asyncio.gather(*(stack.trigger(rid) for rid in request_ids))
            assert [response.status_code for response in responses] == [202] * TRIGGERS
            pending = await stack.runtime.pool.fetchval(
                "SELECT count(*) FROM outbox WHERE published_at IS NULL"
            )
            assert pending > 0, "the broker was frozen, so something must be waiting"

            os.kill(broker_pid, signal.SIGCONT)

            async def drained() -> bool:
                left = await stack.runtime.pool.fetchval(
                    "SELECT count(*) FROM outbox WHERE published_at IS NULL"
                )
                return left == 0

            await eventually(drained, timeout=120, what="the outbox to drain")
            published = await requested_ids(bootstrap, set(request_ids))
            assert set(request_ids) <= published

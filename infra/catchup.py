"""Readiness of a projection: has its consumer group caught up with the topics?

At start-up we note each partition's end offset; the projection is caught up
once the group's committed offsets reach those marks. It then stays ready:
later lag is normal operation, not a reason to leave the load balancer.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, TopicPartition

from infra.settings import ServiceSettings


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """Stop a short-lived consumer.

    aiokafka's ``stop()`` can re-raise the CancelledError of its own internal
    offset-reset task when stopped soon after starting; that says nothing about
    our task, so it is swallowed unless our task is really being cancelled.
    """
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise


class CatchUp:
    def __init__(self, settings: ServiceSettings, group_id: str, topics: list[str]) -> None:
        self._servers = settings.kafka_bootstrap_servers.split(",")
        self._group_id = group_id
        self._topics = topics
        self._marks: dict[TopicPartition, int] | None = None
        self._caught_up = False

    async def mark(self) -> None:
        """Remember where the topics end now."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self._servers, enable_auto_commit=False)
        await consumer.start()
        try:
            partitions = [
                TopicPartition(topic, partition)
                for topic in self._topics
                for partition in sorted(consumer.partitions_for_topic(topic) or ())
            ]
            ends = await consumer.end_offsets(partitions) if partitions else {}
        finally:
            await stop_consumer(consumer)
        self._marks = {tp: offset for tp, offset in ends.items() if offset > 0}

    async def caught_up(self) -> bool:
        if self._caught_up:
            return True
        if self._marks is None:
            return False
        if self._marks:
            # A consumer that names the group but never subscribes only reads
            # the group's committed offsets; it does not join or rebalance it.
            reader = AIOKafkaConsumer(
                bootstrap_servers=self._servers, group_id=self._group_id, enable_auto_commit=False
            )
            await reader.start()
            try:
                for tp, mark in self._marks.items():
                    committed = await reader.committed(tp)
                    if committed is None or committed < mark:
                        return False
            finally:
                await stop_consumer(reader)
        self._caught_up = True
        return True

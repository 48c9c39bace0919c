"""Answering a change once the trigger gateway has it (read your writes).

A partner's integration test activates a rule and triggers it at once; a business
user revokes a leaked client and expects the next trigger refused. The change
reaches the gateway as an event: committed with its outbox row, published by the
relay, consumed by the gateway's projection. So a change's answer waits, bounded,
until the gateway's projection group has committed the topics it projects
(``contracts.GATEWAY_PROJECTED_TOPICS``: rules, clients and member standings)
up to where they end once the change is published. Triggers pay nothing for it, and a
refusal never waits: by the time a caller hears that a change is made, the
gateway has it.

The wait is skipped when no gateway runs (its group has no members), and gives up
after ``RULES_PROPAGATION_TIMEOUT_SECONDS`` with a warning: the change is
committed either way, and reaches the gateway when it is back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Protocol

import asyncpg
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from contracts import GATEWAY_PROJECTED_TOPICS, GATEWAY_PROJECTION_GROUP
from infra import outbox
from infra.logging import get_logger

log = get_logger(__name__)


class Progress(Protocol):
    """Where consumer groups stand (:class:`infra.catchup.GroupProgress`)."""

    async def is_consuming(self, group_id: str) -> bool: ...

    async def partitions(self, topic: str) -> list[TopicPartition]: ...

    async def consumed(
        self, group_id: str, partitions: Sequence[TopicPartition], *, timeout: float
    ) -> bool: ...


class Propagation:
    """Waits until the gateway has consumed the changes up to an outbox row."""

    def __init__(
        self,
        pool: Callable[[], asyncpg.Pool | asyncpg.Connection],
        progress: Progress,
        *,
        timeout: float,
    ) -> None:
        self._pool = pool
        self._progress = progress
        self._timeout = timeout

    async def reach_gateway(self, outbox_id: int) -> bool:
        """True once every event up to ``outbox_id`` is published and the gateway has
        consumed the lifecycle topics that far (or no gateway runs); False when the
        timeout passed first."""
        if self._timeout == 0:
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        try:
            async with asyncio.timeout_at(deadline):
                if not await self._progress.is_consuming(GATEWAY_PROJECTION_GROUP):
                    return True
                await outbox.wait_until_published(self._pool(), outbox_id)
                partitions = [
                    partition
                    for topic in GATEWAY_PROJECTED_TOPICS
                    for partition in await self._progress.partitions(topic)
                ]
            if await self._progress.consumed(
                GATEWAY_PROJECTION_GROUP, partitions, timeout=max(deadline - loop.time(), 0.001)
            ):
                return True
        except (OSError, KafkaError, TimeoutError):
            pass
        log.warning(
            "rules.change_not_yet_at_gateway",
            outbox_id=outbox_id,
            waited_seconds=self._timeout,
            hint="the change is committed; the gateway applies it once it consumes it",
        )
        return False

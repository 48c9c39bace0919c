"""Answering a change once the services that judge triggers have it (read your writes).

A partner's integration test activates a rule and triggers it at once; a business
user revokes a leaked client and expects the next trigger refused, or unblocks a
member and expects the next trigger to earn. The change reaches its readers as an
event: committed with its outbox row, published by the relay, consumed by each
reader's projection. So a change's answer waits, bounded, until the consumer groups
that project the topics it was published on have committed them up to where they
end once the change is published (:func:`readers_of`):

* every change: the gateway's projection group (``contracts.GATEWAY_PROJECTION_GROUP``,
  over ``contracts.GATEWAY_PROJECTED_TOPICS``: rules, clients and member standings),
  which accepts or refuses the trigger;
* a member's standing (``members.lifecycle.v1``) also: the ledger's members group of
  the member's environment (``ledger.members.<environment>``), which rejects a blocked
  member's requests as it applies them. Without it, a trigger the gateway accepted
  right after an unblock could still be failed ``MEMBER_BLOCKED`` by the ledger.
* a business user's removal or change of role (``users.lifecycle.v1``) also: the
  ledger's and the notifier's users groups (``ledger.users``, ``notifier.users``),
  which refuse a removed user's bearer tokens; so once a removal is answered, the
  user's token reads nothing there.

Triggers pay nothing for it, and a refusal never waits: by the time a caller hears
that a change is made, its readers have it.

A group that has no members (nobody runs it) is not waited for, and the wait gives
up after ``RULES_PROPAGATION_TIMEOUT_SECONDS`` with a warning: the change is
committed either way, and reaches its readers when they are back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, get_args

import asyncpg
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from contracts import (
    GATEWAY_PROJECTED_TOPICS,
    GATEWAY_PROJECTION_GROUP,
    LEDGER_MEMBERS_GROUP,
    LEDGER_USERS_GROUP,
    MEMBERS_LIFECYCLE,
    NOTIFIER_USERS_GROUP,
    USERS_LIFECYCLE,
    Environment,
    environment_group,
)
from infra import outbox
from infra.logging import get_logger

log = get_logger(__name__)

ENVIRONMENTS: tuple[str, ...] = get_args(Environment)

#: The topics and environments (from member keys) of the rows a change staged.
STAGED_TOPICS = """
SELECT DISTINCT topic,
       CASE WHEN topic = $3 THEN split_part(key, ':', 1) END AS environment
FROM outbox WHERE id > $1 AND id <= $2
"""


class Progress(Protocol):
    """Where consumer groups stand (:class:`infra.catchup.GroupProgress`)."""

    async def is_consuming(self, group_id: str) -> bool: ...

    async def partitions(self, topic: str) -> list[TopicPartition]: ...

    async def consumed(
        self, group_id: str, partitions: Sequence[TopicPartition], *, timeout: float
    ) -> bool: ...


#: A consumer group and the topics it must have consumed.
Reader = tuple[str, tuple[str, ...]]


def readers_of(staged: Iterable[tuple[str, str | None]]) -> list[Reader]:
    """Who must have consumed a change that published on these ``(topic, environment)``
    pairs (the environment of a member key, else None) before it is answered."""
    readers: dict[str, tuple[str, ...]] = {GATEWAY_PROJECTION_GROUP: GATEWAY_PROJECTED_TOPICS}
    for topic, environment in staged:
        if topic == MEMBERS_LIFECYCLE and environment in ENVIRONMENTS:
            readers[environment_group(LEDGER_MEMBERS_GROUP, environment)] = (MEMBERS_LIFECYCLE,)
        if topic == USERS_LIFECYCLE:
            readers[LEDGER_USERS_GROUP] = (USERS_LIFECYCLE,)
            readers[NOTIFIER_USERS_GROUP] = (USERS_LIFECYCLE,)
    return sorted(readers.items())


class Propagation:
    """Waits until the readers of a change have consumed it (see the module's doc)."""

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

    async def reach_readers(self, staged: outbox.Staged) -> bool:
        """True once every event up to ``staged.row_id`` is published and every group of
        :func:`readers_of` that runs has consumed its topics that far (or none runs);
        False when the timeout passed first."""
        if self._timeout == 0 or staged.row_id is None:
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        waited: list[str] = []
        try:
            async with asyncio.timeout_at(deadline):
                rows = await self._pool().fetch(
                    STAGED_TOPICS, staged.after_row_id, staged.row_id, MEMBERS_LIFECYCLE
                )
                readers = [
                    (group, topics)
                    for group, topics in readers_of((row[0], row[1]) for row in rows)
                    if await self._progress.is_consuming(group)
                ]
                if not readers:
                    return True
                waited = [group for group, _ in readers]
                await outbox.wait_until_published(self._pool(), staged.row_id)
                partitions = {
                    topic: await self._progress.partitions(topic)
                    for topic in {topic for _, topics in readers for topic in topics}
                }
            left = max(deadline - loop.time(), 0.001)
            consumed = await asyncio.gather(
                *(
                    self._progress.consumed(
                        group,
                        [tp for topic in topics for tp in partitions[topic]],
                        timeout=left,
                    )
                    for group, topics in readers
                )
            )
            if all(consumed):
                return True
            waited = [group for (group, _), done in zip(readers, consumed, strict=True) if not done]
        except (OSError, KafkaError, TimeoutError):
            pass
        log.warning(
            "rules.change_not_yet_at_gateway",
            outbox_id=staged.row_id,
            groups=waited,
            waited_seconds=self._timeout,
            hint="the change is committed; its readers apply it once they consume it",
        )
        return False

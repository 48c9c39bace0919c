"""Where a request stands, as its client polls it.

The status never contradicts a callback. The ledger publishes a result once, and
the notifier and this gateway consume it independently: the notifier may deliver
the callback before the gateway has settled the request. So before answering
"pending", the gateway waits (bounded by ``TRIGGER_STATUS_CATCH_UP_SECONDS``) until
its results consumer has committed the member's partition of the results topic up
to where it ends now, and reads the request again. A result published before the
question is then settled in the answer; a settled request pays nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any, Protocol

import asyncpg
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from contracts import POINTS_RESULTS, member_key
from infra.problems import Problem
from services.trigger import repository
from services.trigger.checks import Caller


def request_view(row: asyncpg.Record) -> dict[str, Any]:
    view: dict[str, Any] = {
        "requestId": row["request_id"],
        "transactionId": str(row["transaction_id"]),
        "status": row["status"],
    }
    if row["reason"]:
        view["reason"] = row["reason"]
    if row["reversed_at"] is not None:
        view["reversal"] = {
            "reversalId": str(row["reversal_id"]),
            "reversedAmount": row["reversed_amount"],
            "uncoveredAmount": row["uncovered_amount"],
            "reversedAt": row["reversed_at"].astimezone(UTC).isoformat().replace("+00:00", "Z"),
        }
    return view


class Progress(Protocol):
    """Where consumer groups stand (:class:`infra.catchup.GroupProgress`)."""

    async def partition_of(self, topic: str, key: str) -> TopicPartition | None: ...

    async def consumed(
        self, group_id: str, partitions: Sequence[TopicPartition], *, timeout: float
    ) -> bool: ...


@dataclass(frozen=True)
class ResultsConsumed:
    """Whether the results consumer has settled every result published so far for a
    request's member (``False`` when it did not in ``timeout`` seconds)."""

    progress: Progress
    #: The results consumer's group, per environment: ``<group>.<environment>``.
    group_id: str
    timeout: float

    async def __call__(self, request: asyncpg.Record) -> bool:
        environment = request["environment"]
        key = member_key(environment, request["org_id"], request["user_id"])
        try:
            partition = await self.progress.partition_of(POINTS_RESULTS, key)
        except (KafkaError, OSError, TimeoutError):
            # The broker is away: what the database says is the answer ("pending"), and
            # the partner asks again; the results it holds cannot be newer meanwhile.
            return False
        if partition is None or self.timeout == 0:
            return False
        return await self.progress.consumed(
            f"{self.group_id}.{environment}", [partition], timeout=self.timeout
        )


async def request_status(
    pool: asyncpg.Pool,
    caller: Caller,
    request_id: str,
    *,
    results_consumed: Callable[[asyncpg.Record], Awaitable[bool]] | None = None,
) -> dict[str, Any]:
    """The request's view; a pending one is read again once ``results_consumed`` says
    every result published before the question is settled."""
    row = await repository.get_request(pool, caller.client_id, request_id)
    if row is None:
        raise Problem(f"request {request_id} is not known", status=404, code="REQUEST_NOT_FOUND")
    pending = row["status"] == "pending"
    if pending and results_consumed is not None and await results_consumed(row):
        row = await repository.get_request(pool, caller.client_id, request_id) or row
    return request_view(row)

"""Operators' actions: what gave up, and sending it again."""

from __future__ import annotations

from typing import Any

from infra.logging import get_logger
from services.notifier import repository

log = get_logger(__name__)


async def list_deliveries(
    executor: repository.Executor,
    *,
    status: str | None = None,
    kind: str | None = None,
    client_id: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Deliveries (never their bodies), most recently changed first."""
    return await repository.list_deliveries(
        executor, status=status, kind=kind, client_id=client_id, limit=limit
    )


async def replay_delivery(executor: repository.Executor, delivery_id: int) -> bool:
    """Queue a parked or failed delivery again with a fresh schedule; False if there is none."""
    replayed = await repository.replay(executor, delivery_id)
    if replayed:
        log.info("delivery.replayed", delivery_id=delivery_id)
    return replayed


async def replay_parked_deliveries(executor: repository.Executor) -> list[int]:
    """Queue every parked delivery again with a fresh schedule; their ids."""
    ids = await repository.replay_all_parked(executor)
    log.info("delivery.replayed_all", count=len(ids))
    return ids

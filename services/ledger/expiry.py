"""Expiring points: what is left of each due lot leaves the member for its rule's pool.

Each lot expires in an ``expiry`` transaction of its own, whose id is derived
from the lot's, so whatever replica or retry writes it, a lot expires once (the
primary key makes sure). A pass works through the due lots a chunk at a time,
each chunk in one transaction of its own: it locks the chunk's members in id
order, as every batch does, reads again which lots are still open (another
replica, or a redemption, may have taken them), and writes the expiries, their
entries, the lots, the balances and a ``points.expired`` result per lot.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID, uuid5

import asyncpg
import pydantic_core

from contracts import PointsResultEvent, member_key
from infra import outbox
from infra.errors import is_transient
from infra.logging import get_logger
from infra.waiting import wait_at_most
from services.ledger import lots_repository, repository
from services.ledger.applying import RESULT_EVENT_IDS
from services.ledger.repository import TransactionRow

log = get_logger(__name__)

#: An expiry's transaction id is uuid5(EXPIRY_IDS, str(lot id)).
EXPIRY_IDS = UUID("0c7a2f6e-58d1-4b57-8f0e-6a3c2d9e4b17")
#: Most lots expired in one transaction.
CHUNK = 1_000


def expiry_id(lot_id: UUID) -> UUID:
    return uuid5(EXPIRY_IDS, str(lot_id))


@dataclass(frozen=True)
class PassReport:
    """What one pass did."""

    lots: int
    points: int


async def expire_due_lots(
    pool: asyncpg.Pool, *, now: datetime | None = None, chunk: int = CHUNK
) -> PassReport:
    """Expire every lot due by ``now`` (default: the moment the pass starts), a chunk per
    transaction; return how many lots and points expired."""
    now = now or datetime.now(UTC)
    lots = points = 0
    while True:
        async with pool.acquire() as connection:
            candidates = await lots_repository.due_lots(connection, now, chunk)
            if not candidates:
                break
            async with connection.transaction():
                expired, moved = await expire_chunk(connection, candidates, now)
        lots += expired
        points += moved
        # A full chunk none of which was still open was taken by another replica,
        # which goes on with the rest.
        if len(candidates) < chunk or not expired:
            break
    log.info("points.expiry.pass", lots=lots, points=points, due_by=now.isoformat())
    return PassReport(lots=lots, points=points)


async def expire_chunk(
    connection: asyncpg.Connection, candidates: list[asyncpg.Record], now: datetime
) -> tuple[int, int]:
    """Expire those of ``candidates`` still open, in the caller's transaction; how many
    lots and points expired."""
    balances = await lots_repository.lock_members(
        connection, [row["account_id"] for row in candidates]
    )
    due = await lots_repository.open_due_lots(connection, [row["id"] for row in candidates], now)
    if not due:
        return 0, 0
    transactions, entries, expired, events = [], [], [], []
    changes: dict[int, int] = {}
    in_lots: dict[int, int] = {}
    for lot in due:
        member, pool, left = lot["account_id"], lot["pool_id"], int(lot["remaining"])
        expiry = expiry_id(lot["id"])
        balances[member] -= left
        changes[member] = changes.get(member, 0) - left
        changes[pool] = changes.get(pool, 0) + left
        in_lots[member] = in_lots.get(member, 0) - left
        transactions.append(_expiry_row(lot, expiry, now))
        entries += [(expiry, member, -left), (expiry, pool, left)]
        expired.append((lot["id"], expiry))
        events.append(expired_row(lot, expiry, balances[member], now))
    await repository.insert_transactions(connection, transactions)
    await repository.insert_entries(connection, entries)
    await lots_repository.expire_lots(connection, expired)
    await outbox.enqueue_rows(connection, events)
    await repository.add_to_balances(connection, changes, in_lots)  # last: it locks the pools
    return len(due), sum(int(lot["remaining"]) for lot in due)


def _expiry_row(lot: asyncpg.Record, expiry: UUID, now: datetime) -> TransactionRow:
    return TransactionRow(
        id=expiry,
        environment=lot["environment"],
        org_id=lot["org_id"],
        user_id=lot["user_id"],
        request_id=lot["request_id"],
        client_id=lot["client_id"],
        rule_id=lot["rule_id"],
        rule_version=lot["rule_version"],
        correlation_id=f"expiry-{lot['id']}",
        type="expiry",
        amount=int(lot["remaining"]),
        status="applied",
        reason=None,
        created_at=now,
    )


def expired_row(lot: asyncpg.Record, expiry: UUID, balance: int, now: datetime) -> outbox.OutboxRow:
    """The ``points.expired`` result of one lot, serialised directly like
    :func:`services.ledger.applying.result_row` (a unit test checks it validates)."""
    correlation_id = f"expiry-{lot['id']}"
    payload = pydantic_core.to_json(
        {
            "event_id": uuid5(RESULT_EVENT_IDS, f"{expiry}:expired"),
            "type": "points.expired",
            "version": PointsResultEvent.VERSION,
            "occurred_at": now,
            "environment": lot["environment"],
            "org_id": lot["org_id"],
            "correlation_id": correlation_id,
            "data": {
                "request_id": lot["request_id"],
                "transaction_id": lot["id"],
                "client_id": lot["client_id"],
                "rule_id": lot["rule_id"],
                "user_id": lot["user_id"],
                "type": "earn",
                "amount": int(lot["earn_amount"]),
                "status": "expired",
                "reason": None,
                "balance": balance,
                "callback_url": None,
                "processed_at": now,
                "reversal_id": None,
                "reversed_amount": None,
                "uncovered_amount": None,
                "expiry_id": expiry,
                "expired_amount": int(lot["remaining"]),
                "expires_at": lot["expires_at"],
            },
        }
    )
    key = member_key(lot["environment"], lot["org_id"], lot["user_id"])
    headers = outbox.outbox_headers("points.expired", correlation_id)
    return PointsResultEvent.TOPIC, key, payload, headers


class ExpiryProcess:
    """Runs :func:`expire_due_lots` at start and then every ``interval`` seconds until
    stopped. Every replica runs one: a lot another replica took is skipped."""

    def __init__(
        self, pool_of: Callable[[], asyncpg.Pool], *, interval: float, chunk: int = CHUNK
    ) -> None:
        self._pool_of = pool_of
        self._interval = interval
        self._chunk = chunk
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="ledger-expiry")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await expire_due_lots(self._pool_of(), chunk=self._chunk)
            except Exception as error:  # the next pass tries again: no lot is half expired
                report = log.warning if is_transient(error) else log.error
                report("points.expiry.failed", error=str(error) or type(error).__name__)
            await wait_at_most(self._stopping, self._interval)

"""Expiring points: what is left of each due lot leaves the member for its rule's pool.

Each lot expires in an ``expiry`` transaction of its own, with a random id, so no
id anyone chose elsewhere (a reversal's, a request's) can stand in its way. A lot
expires once because of its own row: the pass locks it and reads again that it is
still open before it writes, so whatever replica or retry comes second finds it
expired and leaves it.

A pass walks the due lots in ``(expires_at, id)`` order, a chunk at a time, each
chunk in one transaction of its own: it locks the chunk's members in id order, as
every batch does, then the chunk's lots still open (another replica, or a
redemption, may have taken them), and writes the expiries, their entries, the
lots, the balances and a ``points.expired`` result per lot. A chunk that fails is
tried again lot by lot, so a lot that cannot expire is logged and skipped while
every other lot still expires; the walk goes on after it, and the next pass tries
it again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID, uuid4, uuid5

import asyncpg
import pydantic_core

from contracts import PointsResultEvent, member_key
from infra import outbox
from infra.logging import get_logger
from infra.periodic import Periodic
from services.ledger import activity, lots_repository, repository
from services.ledger.applying import RESULT_EVENT_IDS
from services.ledger.repository import TransactionRow

log = get_logger(__name__)

#: Most lots expired in one transaction.
CHUNK = 1_000

#: Failures that say the database is out of reach rather than anything about a lot:
#: no other lot would fare better, so they end the pass instead of skipping lots.
DATABASE_AWAY: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.OperatorInterventionError,
)


class LotExpiredMeanwhile(RuntimeError):
    """A lot the pass had locked open was expired by someone else: never expected, so the
    chunk is rolled back rather than expiring the lot twice."""


@dataclass(frozen=True)
class PassReport:
    """What one pass did."""

    lots: int
    points: int
    failed: int = 0
    """Lots whose expiry failed, each logged with its id; the next pass tries them again."""

    def __add__(self, other: PassReport) -> PassReport:
        return PassReport(
            self.lots + other.lots, self.points + other.points, self.failed + other.failed
        )


async def expire_due_lots(
    pool: asyncpg.Pool, *, now: datetime | None = None, chunk: int = CHUNK
) -> PassReport:
    """Expire every lot due by ``now`` (default: the moment the pass starts), a chunk per
    transaction; return how many lots and points expired, and how many lots failed to."""
    now = now or datetime.now(UTC)
    report = PassReport(lots=0, points=0)
    after: tuple[datetime, UUID] | None = None
    while True:
        async with pool.acquire() as connection:
            candidates = await lots_repository.due_lots(connection, now, chunk, after)
        if not candidates:
            break
        report += await _expire_isolating_failures(pool, candidates, now)
        after = (candidates[-1]["expires_at"], candidates[-1]["id"])
        if len(candidates) < chunk:
            break
    log.info(
        "points.expiry.pass",
        lots=report.lots,
        points=report.points,
        failed=report.failed,
        due_by=now.isoformat(),
    )
    return report


async def _expire_isolating_failures(
    pool: asyncpg.Pool, candidates: list[asyncpg.Record], now: datetime
) -> PassReport:
    """Expire ``candidates`` in one transaction; should that fail, each in one of its own."""
    if len(candidates) == 1:
        return await _expire_lot(pool, candidates[0], now)
    try:
        return await _expire_in_transaction(pool, candidates, now)
    except DATABASE_AWAY:
        raise
    except Exception as error:  # a lot of the chunk cannot expire: find which, expire the rest
        log.warning(
            "points.expiry.chunk_failed",
            lots=len(candidates),
            first_lot_id=str(candidates[0]["id"]),
            error=str(error) or type(error).__name__,
        )
    report = PassReport(lots=0, points=0)
    for candidate in candidates:
        report += await _expire_lot(pool, candidate, now)
    return report


async def _expire_lot(pool: asyncpg.Pool, candidate: asyncpg.Record, now: datetime) -> PassReport:
    try:
        return await _expire_in_transaction(pool, [candidate], now)
    except DATABASE_AWAY:
        raise
    except Exception as error:  # logged and skipped: the other lots must still expire
        log.error(
            "points.expiry.lot_failed",
            lot_id=str(candidate["id"]),
            error=str(error) or type(error).__name__,
        )
        return PassReport(lots=0, points=0, failed=1)


async def _expire_in_transaction(
    pool: asyncpg.Pool, candidates: list[asyncpg.Record], now: datetime
) -> PassReport:
    async with pool.acquire() as connection, connection.transaction():
        lots, points = await expire_chunk(connection, candidates, now)
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
        expiry = uuid4()
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
    if await lots_repository.expire_lots(connection, expired) != len(expired):
        raise LotExpiredMeanwhile("a lot this pass had locked open was expired meanwhile")
    await outbox.enqueue_rows(connection, events)
    await repository.add_to_balances(connection, changes, in_lots)  # last: it locks the pools
    await activity.record(
        connection,
        (
            activity.Movement(row.org_id, row.environment, row.rule_id, "expired", row.amount)
            for row in transactions
        ),
        now,
    )
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


class ExpiryProcess(Periodic):
    """Runs :func:`expire_due_lots` at start and then every ``interval`` seconds until
    stopped. Every replica runs one: a lot another replica took is skipped; a pass that
    fails leaves no lot half expired, and the next pass tries again."""

    name = "points.expiry"

    def __init__(
        self, pool_of: Callable[[], asyncpg.Pool], *, interval: float, chunk: int = CHUNK
    ) -> None:
        super().__init__(interval=interval)
        self._pool_of = pool_of
        self._chunk = chunk

    async def once(self) -> int:
        report = await expire_due_lots(self._pool_of(), chunk=self._chunk)
        return report.lots

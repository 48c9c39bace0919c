"""The SQL of lots (points that expire), their uses, and the expiry process.

Like :mod:`services.ledger.repository`: statements as constants, batch
statements over ``unnest``'ed arrays or COPY, one round trip per statement
whatever the batch size; the caller owns the transaction.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

import asyncpg

from services.ledger.lots import Lot, MemberLots

# Open lots of the named (locked) member accounts, soonest first (lots_open_of_account).
OPEN_LOTS_OF_ACCOUNTS = """
SELECT id, account_id, expires_at, remaining, amount FROM lots
WHERE account_id = ANY($1::bigint[]) AND expired_by IS NULL AND remaining > 0
ORDER BY account_id, expires_at, id
"""

SET_REMAINING = """
UPDATE lots SET remaining = changed.remaining
FROM unnest($1::uuid[], $2::bigint[]) AS changed (id, remaining)
WHERE lots.id = changed.id
"""

# What a transaction took from (or gave back to) lots, for a redeem's reversal.
LOT_USES_OF = """
SELECT lot_use.lot_id, lot_use.amount, lot.expires_at, lot.remaining, lot.amount AS lot_amount,
       lot.expired_by
FROM lot_uses AS lot_use JOIN lots AS lot ON lot.id = lot_use.lot_id
WHERE lot_use.transaction_id = $1
ORDER BY lot.expires_at, lot.id
"""

# What the expiry of an earn's lot took; no row while the lot is open (or for no lot).
EXPIRED_OF_LOT = """
SELECT expiry.amount FROM lots AS lot JOIN transactions AS expiry ON expiry.id = lot.expired_by
WHERE lot.id = $1
"""

# Candidates only, read without locks: the pass locks their members, then reads again.
# A pass walks them in (expires_at, id) order, each chunk after the last one's end, so a
# lot it could not expire stays behind it.
DUE_LOTS = """
SELECT id, account_id, expires_at FROM lots
WHERE expired_by IS NULL AND remaining > 0 AND expires_at <= $1
ORDER BY expires_at, id
LIMIT $2
"""

DUE_LOTS_AFTER = """
SELECT id, account_id, expires_at FROM lots
WHERE expired_by IS NULL AND remaining > 0 AND expires_at <= $1
  AND (expires_at, id) > ($3, $4)
ORDER BY expires_at, id
LIMIT $2
"""

# Members in id order, as every batch locks them, so a pass and a batch queue.
LOCK_MEMBERS = """
SELECT id, balance FROM accounts WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE
"""

# The candidates still open once their members are locked, with their earn and pool,
# locked too: a lot another transaction expired meanwhile is read again and left out,
# so a lot expires once whatever its expiry's id.
OPEN_DUE_LOTS = """
SELECT lot.id, lot.account_id, lot.expires_at, lot.remaining,
       earn.environment, earn.org_id, earn.user_id, earn.request_id, earn.client_id,
       earn.rule_id, earn.rule_version, earn.amount AS earn_amount,
       pool.id AS pool_id
FROM lots AS lot
JOIN transactions AS earn ON earn.id = lot.id
JOIN accounts AS pool
    ON (pool.environment, pool.org_id, pool.kind, pool.owner_id)
        = (earn.environment, earn.org_id, 'pool', earn.rule_id)
WHERE lot.id = ANY($1::uuid[]) AND lot.expired_by IS NULL AND lot.remaining > 0
  AND lot.expires_at <= $2
ORDER BY lot.account_id, lot.expires_at, lot.id
FOR UPDATE OF lot
"""

EXPIRE_LOTS = """
UPDATE lots SET remaining = 0, expired_by = expired.expiry_id
FROM unnest($1::uuid[], $2::uuid[]) AS expired (id, expiry_id)
WHERE lots.id = expired.id AND lots.expired_by IS NULL
"""

# A member's open lots by expiry instant, soonest first (the balance's `expiring`).
MEMBER_EXPIRING = """
SELECT lot.expires_at, sum(lot.remaining) AS amount
FROM lots AS lot
JOIN accounts AS account ON account.id = lot.account_id
WHERE account.environment = $1 AND account.org_id = $2 AND account.kind = 'member'
  AND account.owner_id = $3 AND lot.expired_by IS NULL AND lot.remaining > 0
GROUP BY lot.expires_at
ORDER BY lot.expires_at
LIMIT $4
"""

# The invariant checks of `points ledger verify` on lots; each returns at most $1 rows.
LOTS_NOT_ADDING_UP = """
SELECT lot.id, lot.amount, lot.remaining, coalesce(used.total, 0) AS used,
       coalesce(expiry.amount, 0) AS expired
FROM lots AS lot
LEFT JOIN (SELECT lot_id, sum(amount) AS total FROM lot_uses GROUP BY lot_id) AS used
    ON used.lot_id = lot.id
LEFT JOIN transactions AS expiry ON expiry.id = lot.expired_by
WHERE lot.amount - lot.remaining <> coalesce(used.total, 0) + coalesce(expiry.amount, 0)
ORDER BY lot.id LIMIT $1
"""

EXPIRED_LOTS_WITHOUT_EXPIRY = """
SELECT lot.id, lot.expired_by FROM lots AS lot
LEFT JOIN transactions AS expiry ON expiry.id = lot.expired_by
JOIN transactions AS earn ON earn.id = lot.id
WHERE lot.expired_by IS NOT NULL
  AND (expiry.id IS NULL OR expiry.type <> 'expiry' OR expiry.status <> 'applied'
       OR (expiry.environment, expiry.org_id, expiry.user_id, expiry.rule_id)
          IS DISTINCT FROM (earn.environment, earn.org_id, earn.user_id, earn.rule_id))
ORDER BY lot.id LIMIT $1
"""

MEMBERS_LOTS_OVER_BALANCE = """
SELECT account.id, account.environment, account.org_id, account.owner_id, account.balance,
       account.lots_remaining, coalesce(open.total, 0) AS open
FROM accounts AS account
LEFT JOIN (
    SELECT account_id, sum(remaining) AS total FROM lots
    WHERE expired_by IS NULL GROUP BY account_id
) AS open ON open.account_id = account.id
WHERE account.kind = 'member'
  AND (coalesce(open.total, 0) > account.balance
       OR coalesce(open.total, 0) <> account.lots_remaining)
ORDER BY account.id LIMIT $1
"""

EXPIRIES_NOT_ONE_LOT = """
SELECT expiry.id, count(lot.id) AS lots FROM transactions AS expiry
LEFT JOIN lots AS lot ON lot.expired_by = expiry.id
WHERE expiry.type = 'expiry'
GROUP BY expiry.id
HAVING count(lot.id) <> 1
ORDER BY expiry.id LIMIT $1
"""


async def open_lots(
    connection: asyncpg.Connection, account_ids: Sequence[int]
) -> dict[int, MemberLots]:
    """The open lots of these (locked) member accounts, by account id."""
    held: dict[int, MemberLots] = defaultdict(MemberLots)
    for row in await connection.fetch(OPEN_LOTS_OF_ACCOUNTS, list(account_ids)):
        held[row["account_id"]].lots.append(
            Lot(row["id"], row["expires_at"], row["remaining"], row["amount"])
        )
    return held


async def insert_lots(connection: asyncpg.Connection, lots: Sequence[tuple[Lot, int, str]]) -> None:
    """Insert ``(lot, member account id, rule id)`` rows."""
    await connection.copy_records_to_table(
        "lots",
        records=[
            (lot.id, account_id, rule_id, lot.expires_at, lot.amount, lot.remaining)
            for lot, account_id, rule_id in lots
        ],
        columns=("id", "account_id", "rule_id", "expires_at", "amount", "remaining"),
    )


async def set_remaining(
    connection: asyncpg.Connection, changed: Sequence[tuple[UUID, int]]
) -> None:
    await connection.execute(
        SET_REMAINING, [lot_id for lot_id, _ in changed], [left for _, left in changed]
    )


async def insert_uses(
    connection: asyncpg.Connection, uses: Sequence[tuple[UUID, UUID, int]]
) -> None:
    """Insert ``(transaction id, lot id, signed amount)`` rows."""
    await connection.copy_records_to_table(
        "lot_uses", records=uses, columns=("transaction_id", "lot_id", "amount")
    )


async def uses_of(connection: asyncpg.Connection, transaction_id: UUID) -> list[asyncpg.Record]:
    return list(await connection.fetch(LOT_USES_OF, transaction_id))


async def expired_of_lot(connection: asyncpg.Connection, lot_id: UUID) -> int:
    """The points the expiry process took from lot ``lot_id``; 0 if it has not."""
    return int(await connection.fetchval(EXPIRED_OF_LOT, lot_id) or 0)


async def due_lots(
    connection: asyncpg.Connection,
    now: datetime,
    limit: int,
    after: tuple[datetime, UUID] | None = None,
) -> list[asyncpg.Record]:
    """Up to ``limit`` lots due by ``now`` and still open, soonest first, those after the
    ``(expires_at, id)`` of ``after`` only."""
    if after is None:
        return list(await connection.fetch(DUE_LOTS, now, limit))
    return list(await connection.fetch(DUE_LOTS_AFTER, now, limit, *after))


async def lock_members(
    connection: asyncpg.Connection, account_ids: Sequence[int]
) -> dict[int, int]:
    """Lock these member accounts in id order; their balances by id."""
    rows = await connection.fetch(LOCK_MEMBERS, sorted(set(account_ids)))
    return {row["id"]: row["balance"] for row in rows}


async def open_due_lots(
    connection: asyncpg.Connection, lot_ids: Sequence[UUID], now: datetime
) -> list[asyncpg.Record]:
    return list(await connection.fetch(OPEN_DUE_LOTS, list(lot_ids), now))


async def expire_lots(connection: asyncpg.Connection, expired: Sequence[tuple[UUID, UUID]]) -> int:
    """Mark ``(lot id, expiry transaction id)`` lots expired: nothing left in them. How many
    were still open to mark."""
    status = await connection.execute(
        EXPIRE_LOTS, [lot_id for lot_id, _ in expired], [expiry for _, expiry in expired]
    )
    return int(status.split()[-1])


async def member_expiring(
    connection: asyncpg.Connection, environment: str, org_id: str, user_id: str, limit: int
) -> list[tuple[datetime, int]]:
    rows = await connection.fetch(MEMBER_EXPIRING, environment, org_id, user_id, limit)
    return [(row["expires_at"], int(row["amount"])) for row in rows]

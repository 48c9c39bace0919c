"""Every SQL statement of the ledger, and the thin functions that run them.

Connections see the ``ledger`` schema first (``search_path``), so table names
are unqualified. Batch statements take PostgreSQL arrays and ``unnest`` them, or
COPY their rows in, one round trip per statement whatever the batch size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NamedTuple
from uuid import UUID

import asyncpg

from infra.db import array_columns
from infra.errors import ConcurrentUpdateConflict

AccountKind = Literal["member", "pool"]

#: The constraint (migration 0005) keeping a pool within ±MAX_POOL_BALANCE.
POOL_LIMIT_CONSTRAINT = "pool_balance_within_limit"


class AccountKey(NamedTuple):
    """Names an account; tuples sort, which gives every batch the same order."""

    environment: str
    org_id: str
    kind: AccountKind
    owner_id: str


@dataclass(frozen=True)
class Account:
    id: int
    key: AccountKey
    balance: int
    blocked: bool = False
    """Whether the member is blocked (members.lifecycle.v1); never for a pool."""
    lots_remaining: int = 0
    """The member's points held in open lots (they expire); the rest never do."""


class TransactionRow(NamedTuple):
    """A transaction as inserted: one per points request the ledger decided.

    A tuple, in the order of its columns, because that is what COPY sends.
    """

    id: UUID
    environment: str
    org_id: str
    user_id: str
    request_id: str
    client_id: str
    rule_id: str
    rule_version: int
    correlation_id: str
    type: str
    amount: int
    status: str
    reason: str | None
    created_at: datetime


# Accounts are inserted in the caller's (sorted) order so that concurrent
# batches creating the same accounts wait on each other instead of deadlocking.
# Only accounts that do not exist yet are offered to the insert: ON CONFLICT
# waits for any transaction that updated the existing row, so offering a busy
# rule's pool made every batch wait here for the one adding to that pool.
CREATE_MISSING_ACCOUNTS = """
INSERT INTO accounts (environment, org_id, kind, owner_id)
SELECT environment, org_id, kind, owner_id
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) WITH ORDINALITY
    AS wanted (environment, org_id, kind, owner_id, position)
WHERE NOT EXISTS (
    SELECT FROM accounts AS account
    WHERE (account.environment, account.org_id, account.kind, account.owner_id)
        = (wanted.environment, wanted.org_id, wanted.kind, wanted.owner_id)
)
ORDER BY position
ON CONFLICT (environment, org_id, kind, owner_id) DO NOTHING
"""

# Member accounts are locked (FOR UPDATE) in id order: ORDER BY is applied
# before the row locks, so two batches with members in common queue instead of
# deadlocking. Pool accounts are only read: nothing is decided on a pool's
# balance, so a batch locks its pools only to add to them, last, just before it
# commits (LOCK_POOLS). Every writer takes the same order, members then pools,
# and batches of different members no longer wait for each other on a busy
# rule's pool for the whole of their work.
LOCK_ACCOUNTS = """
WITH wanted AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
        AS wanted (environment, org_id, kind, owner_id)
), members AS (
    SELECT account.id, account.environment, account.org_id, account.kind,
           account.owner_id, account.balance, account.blocked, account.lots_remaining
    FROM accounts AS account
    JOIN wanted USING (environment, org_id, kind, owner_id)
    WHERE wanted.kind = 'member'
    ORDER BY account.id
    FOR UPDATE OF account
)
SELECT * FROM members
UNION ALL
SELECT account.id, account.environment, account.org_id, account.kind,
       account.owner_id, account.balance, account.blocked, account.lots_remaining
FROM accounts AS account
JOIN wanted USING (environment, org_id, kind, owner_id)
WHERE wanted.kind = 'pool'
"""

LOCK_POOLS = """
SELECT id FROM accounts WHERE id = ANY($1::bigint[]) AND kind = 'pool' ORDER BY id FOR UPDATE
"""

# Two lookups rather than one OR, which the planner answers with a full scan. The
# second carries the predicate of transactions_request_unique (migration 0007), so
# the planner uses that index, and an expiry, which shares its earn's request id,
# never makes a request look recorded.
RECORDED_TRANSACTIONS = """
SELECT id, client_id, request_id, status, reason FROM transactions WHERE id = ANY($1::uuid[])
UNION
SELECT txn.id, txn.client_id, txn.request_id, txn.status, txn.reason
FROM transactions AS txn
JOIN unnest($2::text[], $3::text[]) AS wanted (client_id, request_id)
    USING (client_id, request_id)
WHERE txn.type <> 'expiry'
"""

ADD_TO_BALANCES = """
UPDATE accounts SET balance = accounts.balance + change.amount
FROM unnest($1::bigint[], $2::bigint[]) AS change (account_id, amount)
WHERE accounts.id = change.account_id
"""

# The same, for members whose open lots change too (a separate statement, so a
# batch without lots runs the one above unchanged).
ADD_TO_BALANCES_AND_LOTS = """
UPDATE accounts SET balance = accounts.balance + change.amount,
                    lots_remaining = accounts.lots_remaining + change.lots
FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS change (account_id, amount, lots)
WHERE accounts.id = change.account_id
"""

# The latest change wins, so a replayed older event changes nothing.
SET_STANDING = """
UPDATE accounts SET blocked = $2, standing_changed_at = $3
WHERE id = $1 AND (standing_changed_at IS NULL OR standing_changed_at < $3)
"""

MEMBER_BALANCE = """
SELECT balance FROM accounts
WHERE environment = $1 AND org_id = $2 AND kind = 'member' AND owner_id = $3
"""

MEMBER_HISTORY = """
SELECT id, seq, user_id, request_id, rule_id, type, amount, status, reason, created_at
FROM transactions
WHERE environment = $1 AND org_id = $2 AND user_id = $3
  AND ($4::bigint IS NULL OR seq < $4)
ORDER BY seq DESC
LIMIT $5
"""

# The same page shape as a member's history, for every member of one rule.
RULE_HISTORY = """
SELECT id, seq, user_id, request_id, rule_id, type, amount, status, reason, created_at
FROM transactions
WHERE environment = $1 AND org_id = $2 AND rule_id = $3
  AND ($4::bigint IS NULL OR seq < $4)
ORDER BY seq DESC
LIMIT $5
"""

# The invariant checks of `points ledger verify`; each returns at most $1 rows.
UNBALANCED_TRANSACTIONS = """
SELECT transaction_id, sum(amount) AS total
FROM entries GROUP BY transaction_id HAVING sum(amount) <> 0
ORDER BY transaction_id LIMIT $1
"""

BALANCES_DIFFERING_FROM_ENTRIES = """
SELECT account.id, account.environment, account.org_id, account.kind, account.owner_id,
       account.balance, coalesce(moved.total, 0) AS total
FROM accounts AS account
LEFT JOIN (
    SELECT account_id, sum(amount) AS total FROM entries GROUP BY account_id
) AS moved ON moved.account_id = account.id
WHERE account.balance <> coalesce(moved.total, 0)
ORDER BY account.id LIMIT $1
"""

NEGATIVE_MEMBER_BALANCES = """
SELECT id, environment, org_id, owner_id, balance FROM accounts
WHERE kind = 'member' AND balance < 0
ORDER BY id LIMIT $1
"""

# A reversal of an earn the member had entirely spent moves nothing: no entries.
APPLIED_WITHOUT_ENTRIES = """
SELECT id FROM transactions AS txn
WHERE status = 'applied' AND (type <> 'reversal' OR uncovered < amount)
  AND NOT EXISTS (SELECT 1 FROM entries WHERE entries.transaction_id = txn.id)
ORDER BY seq LIMIT $1
"""

REJECTED_WITH_ENTRIES = """
SELECT id FROM transactions AS txn
WHERE status = 'rejected'
  AND EXISTS (SELECT 1 FROM entries WHERE entries.transaction_id = txn.id)
ORDER BY seq LIMIT $1
"""


# A reversal moves back, on every account, its original's entry scaled by the
# share it recovered: all of it, or for an earn, what the member could cover.
REVERSALS_NOT_MIRRORING_ORIGINALS = """
SELECT reversal.id, reversal.reverses
FROM transactions AS reversal
JOIN transactions AS original ON original.id = reversal.reverses
WHERE reversal.type = 'reversal'
  AND EXISTS (
      SELECT 1 FROM (
          SELECT sum(amount) FILTER (WHERE transaction_id = reversal.id) AS back,
                 sum(amount) FILTER (WHERE transaction_id = original.id) AS forth
          FROM entries WHERE transaction_id IN (reversal.id, original.id)
          GROUP BY account_id
      ) AS moved
      WHERE coalesce(moved.back, 0) * original.amount
            <> -coalesce(moved.forth, 0) * (reversal.amount - reversal.uncovered)
  )
ORDER BY reversal.seq LIMIT $1
"""

TRANSACTION_COLUMNS = """
id, environment, org_id, user_id, request_id, client_id, rule_id, rule_version,
correlation_id, type, amount, status, reason, created_at,
reverses, reversal_reason, reversed_by, uncovered, balance_after
"""

TRANSACTION = f"""
SELECT {TRANSACTION_COLUMNS} FROM transactions WHERE id = $1
"""  # noqa: S608 - a constant column list

REVERSAL_OF = f"""
SELECT {TRANSACTION_COLUMNS} FROM transactions WHERE reverses = $1
"""  # noqa: S608 - a constant column list

INSERT_REVERSAL = """
INSERT INTO transactions (
    id, environment, org_id, user_id, request_id, client_id, rule_id, rule_version,
    correlation_id, type, amount, status, created_at,
    reverses, reversal_reason, reversed_by, uncovered, balance_after
)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'reversal', $10, 'applied', $11,
        $12, $13, $14, $15, $16)
"""

# Points a rule moved, by kind; a reversal counts what it actually moved back, an
# expiry what was left of its earn.
RULE_TOTALS = """
SELECT
    coalesce(sum(txn.amount) FILTER (WHERE txn.type = 'earn' AND txn.status = 'applied'), 0)
        AS earned,
    coalesce(sum(txn.amount) FILTER (WHERE txn.type = 'redeem' AND txn.status = 'applied'), 0)
        AS redeemed,
    coalesce(sum(txn.amount - txn.uncovered) FILTER (WHERE original.type = 'earn'), 0)
        AS reversed_earned,
    coalesce(sum(txn.amount - txn.uncovered) FILTER (WHERE original.type = 'redeem'), 0)
        AS reversed_redeemed,
    coalesce(sum(txn.uncovered), 0) AS uncovered,
    coalesce(sum(txn.amount) FILTER (WHERE txn.type = 'expiry'), 0) AS expired,
    count(*) FILTER (WHERE txn.status = 'applied') AS applied,
    count(*) FILTER (WHERE txn.status = 'rejected') AS rejected
FROM transactions AS txn
LEFT JOIN transactions AS original ON original.id = txn.reverses
WHERE txn.environment = $1 AND txn.org_id = $2 AND txn.rule_id = $3
"""


async def create_missing_accounts(
    connection: asyncpg.Connection, keys: Sequence[AccountKey]
) -> None:
    await connection.execute(CREATE_MISSING_ACCOUNTS, *array_columns(keys, width=4))


async def lock_accounts(
    connection: asyncpg.Connection, keys: Sequence[AccountKey]
) -> dict[AccountKey, Account]:
    """Lock the named member accounts (FOR UPDATE, in id order) and return every named
    account by key; a pool's balance is as last committed, and stays unlocked."""
    rows = await connection.fetch(LOCK_ACCOUNTS, *array_columns(keys, width=4))
    accounts = {}
    for row in rows:
        key = AccountKey(row["environment"], row["org_id"], row["kind"], row["owner_id"])
        accounts[key] = Account(
            id=row["id"],
            key=key,
            balance=row["balance"],
            blocked=row["blocked"],
            lots_remaining=row["lots_remaining"],
        )
    return accounts


@dataclass(frozen=True)
class Recorded:
    """How the ledger settled a transaction it recorded."""

    status: Literal["applied", "rejected"]
    reason: str | None


async def recorded_transactions(
    connection: asyncpg.Connection,
    transaction_ids: Sequence[UUID],
    requests: Sequence[tuple[str, str]],
) -> tuple[dict[UUID, Recorded], set[tuple[str, str]]]:
    """Which of these transaction ids are recorded, and how each was settled; and which
    of these (client id, request id) pairs are recorded."""
    rows = await connection.fetch(
        RECORDED_TRANSACTIONS,
        list(transaction_ids),
        [client_id for client_id, _ in requests],
        [request_id for _, request_id in requests],
    )
    return (
        {row["id"]: Recorded(row["status"], row["reason"]) for row in rows},
        {(row["client_id"], row["request_id"]) for row in rows},
    )


# The two biggest inserts of a batch use binary COPY rather than an INSERT over
# unnest'ed arrays: no arrays to build and check element by element here, and less
# work per row in PostgreSQL (about 5 µs less per request in all). COPY keeps the
# rows' order and fires the tables' triggers.
async def insert_transactions(
    connection: asyncpg.Connection, transactions: Sequence[TransactionRow]
) -> None:
    await connection.copy_records_to_table(
        "transactions", records=transactions, columns=TransactionRow._fields
    )


async def insert_entries(
    connection: asyncpg.Connection, entries: Sequence[tuple[UUID, int, int]]
) -> None:
    """Insert ``(transaction id, account id, signed amount)`` rows."""
    await connection.copy_records_to_table(
        "entries", records=entries, columns=("transaction_id", "account_id", "amount")
    )


async def add_to_balances(
    connection: asyncpg.Connection,
    changes: dict[int, int],
    lots: dict[int, int] | None = None,
) -> None:
    """Add each signed amount to its account's balance (account id -> amount), and each
    of ``lots`` to its account's points in open lots.

    The members must be locked already (:func:`lock_accounts`); the pools are
    locked here, in id order. Call it as late as possible before the commit, so a
    busy rule's pool stays locked only while the transaction finishes.

    The service decided on the pools' balances as last committed, unlocked: when a
    concurrent transaction has since moved a pool so far that this change would
    take it past its limit, the database refuses it, and this raises
    :class:`ConcurrentUpdateConflict`, for the caller to try again on fresh balances.
    """
    await connection.execute(LOCK_POOLS, list(changes))
    try:
        if lots:
            ids = list(changes.keys() | lots.keys())
            await connection.execute(
                ADD_TO_BALANCES_AND_LOTS,
                ids,
                [changes.get(account_id, 0) for account_id in ids],
                [lots.get(account_id, 0) for account_id in ids],
            )
        else:
            await connection.execute(ADD_TO_BALANCES, list(changes), list(changes.values()))
    except asyncpg.CheckViolationError as error:
        if error.constraint_name != POOL_LIMIT_CONSTRAINT:
            raise
        raise ConcurrentUpdateConflict(
            "a concurrent transaction moved a pool this one adds to near its limit"
        ) from error


async def set_standing(
    connection: asyncpg.Connection, account_id: int, *, blocked: bool, changed_at: datetime
) -> None:
    """Record whether the member of (locked) ``account_id`` is blocked, unless a later
    change is recorded already."""
    await connection.execute(SET_STANDING, account_id, blocked, changed_at)


async def member_balance(
    connection: asyncpg.Connection, environment: str, org_id: str, user_id: str
) -> int | None:
    balance = await connection.fetchval(MEMBER_BALANCE, environment, org_id, user_id)
    return None if balance is None else int(balance)


async def history(
    connection: asyncpg.Connection,
    statement: str,
    environment: str,
    org_id: str,
    subject_id: str,
    *,
    before_seq: int | None,
    limit: int,
) -> list[asyncpg.Record]:
    """A page of :data:`MEMBER_HISTORY` (``subject_id`` a member) or :data:`RULE_HISTORY`
    (a rule), newest first."""
    return list(
        await connection.fetch(statement, environment, org_id, subject_id, before_seq, limit)
    )


async def fetch_violations(
    connection: asyncpg.Connection, statement: str, limit: int
) -> list[dict[str, Any]]:
    return [dict(row.items()) for row in await connection.fetch(statement, limit)]


async def transaction(
    connection: asyncpg.Connection, transaction_id: UUID
) -> asyncpg.Record | None:
    return await connection.fetchrow(TRANSACTION, transaction_id)


async def reversal_of(
    connection: asyncpg.Connection, transaction_id: UUID
) -> asyncpg.Record | None:
    return await connection.fetchrow(REVERSAL_OF, transaction_id)


@dataclass(frozen=True)
class ReversalRow:
    """A reversal as inserted, with the original's member, rule and request."""

    id: UUID
    environment: str
    org_id: str
    user_id: str
    request_id: str
    client_id: str
    rule_id: str
    rule_version: int
    correlation_id: str
    amount: int
    created_at: datetime
    reverses: UUID
    reversal_reason: str
    reversed_by: str
    uncovered: int
    balance_after: int


async def insert_reversal(connection: asyncpg.Connection, reversal: ReversalRow) -> None:
    fields = list(ReversalRow.__dataclass_fields__)
    await connection.execute(INSERT_REVERSAL, *(getattr(reversal, name) for name in fields))


async def rule_totals(
    connection: asyncpg.Connection, environment: str, org_id: str, rule_id: str
) -> asyncpg.Record:
    row = await connection.fetchrow(RULE_TOTALS, environment, org_id, rule_id)
    assert row is not None  # an aggregate always answers one row
    return row

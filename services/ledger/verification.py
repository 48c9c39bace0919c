"""Checking the ledger's invariants (``points ledger verify`` and the tests)."""

from __future__ import annotations

import asyncpg

from services.ledger import lots_repository, repository

#: How many offending rows each invariant check reports at most.
VIOLATIONS_REPORTED_PER_CHECK = 100


async def verify_ledger(connection: asyncpg.Connection) -> list[str]:
    """Check the ledger's invariants; each violation found, as a sentence.

    An empty list means: every transaction's entries sum to zero, every
    account's balance equals the sum of its entries, no member balance is
    negative, every applied transaction has entries and no rejected one has
    (a reversal that recovered nothing has none), and every reversal moves
    back its original's entries, scaled to what it recovered; every lot's
    spent points are its uses and its expiry, an expired lot's expiry exists,
    each expiry expired exactly one lot, and a member's open lots add up to
    what their account says and never to more than their balance.
    ``connection`` must see the ledger schema (``search_path``).
    """
    limit = VIOLATIONS_REPORTED_PER_CHECK
    violations: list[str] = []
    for row in await repository.fetch_violations(
        connection, repository.UNBALANCED_TRANSACTIONS, limit
    ):
        violations.append(
            f"Transaction {row['transaction_id']} has entries summing to {row['total']}, not 0."
        )
    for row in await repository.fetch_violations(
        connection, repository.BALANCES_DIFFERING_FROM_ENTRIES, limit
    ):
        violations.append(
            f"The {row['kind']} account of {row['owner_id']!r} ({row['environment']}, "
            f"org {row['org_id']}) has balance {row['balance']} but its entries sum to "
            f"{row['total']}."
        )
    for row in await repository.fetch_violations(
        connection, repository.NEGATIVE_MEMBER_BALANCES, limit
    ):
        violations.append(
            f"Member {row['owner_id']!r} ({row['environment']}, org {row['org_id']}) "
            f"has a negative balance of {row['balance']}."
        )
    for row in await repository.fetch_violations(
        connection, repository.APPLIED_WITHOUT_ENTRIES, limit
    ):
        violations.append(f"Applied transaction {row['id']} has no entries.")
    for row in await repository.fetch_violations(
        connection, repository.REJECTED_WITH_ENTRIES, limit
    ):
        violations.append(f"Rejected transaction {row['id']} has entries.")
    for row in await repository.fetch_violations(
        connection, repository.REVERSALS_NOT_MIRRORING_ORIGINALS, limit
    ):
        violations.append(
            f"Reversal {row['id']} does not move back the entries of transaction {row['reverses']}."
        )
    for row in await repository.fetch_violations(
        connection, lots_repository.LOTS_NOT_ADDING_UP, limit
    ):
        violations.append(
            f"Lot {row['id']} of {row['amount']} points has {row['remaining']} left, but its "
            f"uses took {row['used']} and its expiry {row['expired']}."
        )
    for row in await repository.fetch_violations(
        connection, lots_repository.EXPIRED_LOTS_WITHOUT_EXPIRY, limit
    ):
        violations.append(
            f"Lot {row['id']} is marked expired by {row['expired_by']}, which is no expiry "
            "of its member and rule."
        )
    for row in await repository.fetch_violations(
        connection, lots_repository.MEMBERS_LOTS_OVER_BALANCE, limit
    ):
        violations.append(
            f"Member {row['owner_id']!r} ({row['environment']}, org {row['org_id']}) has "
            f"{row['open']} points in open lots, their account says {row['lots_remaining']}, "
            f"with a balance of {row['balance']}."
        )
    for row in await repository.fetch_violations(
        connection, lots_repository.EXPIRIES_NOT_ONE_LOT, limit
    ):
        violations.append(f"Expiry {row['id']} expired {row['lots']} lots, not one.")
    return violations

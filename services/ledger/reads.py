"""Reading members' points: balances, history pages and their cursors, rule totals."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from infra.problems import Problem
from infra.storable import BIGINT_MAX
from services.ledger import lots_repository, repository
from services.ledger.access import ReadScope


class InvalidCursor(Problem):
    status = 400
    code = "INVALID_CURSOR"


async def member_balance(connection: asyncpg.Connection, scope: ReadScope, user_id: str) -> int:
    """The member's balance; 0 for a member the ledger has never seen."""
    balance = await repository.member_balance(connection, scope.environment, scope.org_id, user_id)
    return balance or 0


#: How many expiry instants a balance lists.
EXPIRING_LISTED = 5


async def member_expiring(
    connection: asyncpg.Connection, scope: ReadScope, user_id: str
) -> list[tuple[datetime, int]]:
    """The member's points in open lots by expiry instant, the next
    :data:`EXPIRING_LISTED`, soonest first; lots already due that the expiry process
    has not taken yet come first."""
    return await lots_repository.member_expiring(
        connection, scope.environment, scope.org_id, user_id, EXPIRING_LISTED
    )


@dataclass(frozen=True)
class HistoryItem:
    transaction_id: UUID
    user_id: str
    request_id: str
    rule_id: str
    type: str
    amount: int
    status: str
    reason: str | None
    created_at: datetime


@dataclass(frozen=True)
class HistoryPage:
    items: list[HistoryItem]
    next_cursor: str | None


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, seq = text.partition(":")
        position = int(seq)
        # A sequence past bigint is no cursor this API returned, and PostgreSQL refuses it.
        if prefix != "seq" or not 0 <= position <= BIGINT_MAX:
            raise ValueError(text)
        return position
    except (ValueError, binascii.Error, UnicodeDecodeError) as error:
        raise InvalidCursor("cursor is not one this API returned") from error


async def member_history(
    connection: asyncpg.Connection,
    scope: ReadScope,
    user_id: str,
    *,
    limit: int,
    cursor: str | None = None,
) -> HistoryPage:
    """The member's transactions, newest first, ``limit`` at a time."""
    return await _history_page(connection, repository.MEMBER_HISTORY, scope, user_id, limit, cursor)


async def rule_history(
    connection: asyncpg.Connection,
    scope: ReadScope,
    rule_id: str,
    *,
    limit: int,
    cursor: str | None = None,
) -> HistoryPage:
    """Every member's transactions of one rule, newest first, ``limit`` at a time."""
    return await _history_page(connection, repository.RULE_HISTORY, scope, rule_id, limit, cursor)


async def _history_page(
    connection: asyncpg.Connection,
    statement: str,
    scope: ReadScope,
    subject_id: str,
    limit: int,
    cursor: str | None,
) -> HistoryPage:
    rows = await repository.history(
        connection,
        statement,
        scope.environment,
        scope.org_id,
        subject_id,
        before_seq=None if cursor is None else decode_cursor(cursor),
        limit=limit + 1,
    )
    page = rows[:limit]
    items = [
        HistoryItem(
            transaction_id=row["id"],
            user_id=row["user_id"],
            request_id=row["request_id"],
            rule_id=row["rule_id"],
            type=row["type"],
            amount=row["amount"],
            status=row["status"],
            reason=row["reason"],
            created_at=row["created_at"],
        )
        for row in page
    ]
    next_cursor = encode_cursor(page[-1]["seq"]) if len(rows) > limit else None
    return HistoryPage(items=items, next_cursor=next_cursor)


@dataclass(frozen=True)
class RuleTotals:
    """Points one rule moved in one environment, for the console."""

    rule_id: str
    environment: str
    earned: int
    redeemed: int
    reversed_earned: int
    """Points taken back from members by reversals of this rule's earns."""
    reversed_redeemed: int
    """Points given back to members by reversals of this rule's redeems."""
    uncovered: int
    """Points reversals did not move back: of earns, those that had expired (counted in
    ``expired`` too) or the members had already spent; of redeems, those taken from lots
    whose expiry passed since."""
    expired: int
    """Points of the rule's earns that expired before their members spent them."""
    net: int
    """Points this rule put in members' hands and they still hold."""
    transactions: int
    """Every transaction recorded for the rule: applied, rejected, reversals and expiries."""
    rejected: int

    @property
    def reversed(self) -> int:
        return self.reversed_earned + self.reversed_redeemed


async def rule_totals(connection: asyncpg.Connection, scope: ReadScope, rule_id: str) -> RuleTotals:
    """What ``rule_id`` moved so far; zeros for a rule the ledger has never seen."""
    row = await repository.rule_totals(connection, scope.environment, scope.org_id, rule_id)
    earned, redeemed = int(row["earned"]), int(row["redeemed"])
    reversed_earned, reversed_redeemed = int(row["reversed_earned"]), int(row["reversed_redeemed"])
    return RuleTotals(
        rule_id=rule_id,
        environment=scope.environment,
        earned=earned,
        redeemed=redeemed,
        reversed_earned=reversed_earned,
        reversed_redeemed=reversed_redeemed,
        uncovered=int(row["uncovered"]),
        expired=int(row["expired"]),
        net=earned - redeemed - reversed_earned + reversed_redeemed - int(row["expired"]),
        transactions=int(row["applied"]) + int(row["rejected"]),
        rejected=int(row["rejected"]),
    )

"""Reversing an applied earn or redeem with compensating entries.

Like applying, a reversal runs in the caller's transaction: the HTTP handler
(or the test) owns it, so the reversal's rows and its outbox event commit together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import cast
from uuid import UUID

import asyncpg

from contracts import Environment, PointsResult, PointsResultEvent
from infra import outbox
from infra.logging import get_logger
from infra.problems import Problem
from infra.tokens import Principal
from services.ledger import activity, lots_repository, repository
from services.ledger.access import require_editor
from services.ledger.applying import BALANCE_LIMIT_EXCEEDED, refusal
from services.ledger.lots import MemberLots
from services.ledger.repository import Account, AccountKey

log = get_logger(__name__)


class TransactionNotFound(Problem):
    status = 404
    code = "TRANSACTION_NOT_FOUND"


class NotReversible(Problem):
    status = 409
    code = "NOT_REVERSIBLE"


class ReversalIdInUse(Problem):
    status = 409
    code = "REVERSAL_ID_IN_USE"


class ReversalPastLimit(Problem):
    status = 409
    code = BALANCE_LIMIT_EXCEEDED


@dataclass(frozen=True)
class ReversalOutcome:
    """What a reversal did; a repeated call returns the first call's outcome."""

    reversal_id: UUID
    transaction_id: UUID
    """The transaction reversed."""
    environment: str
    user_id: str
    rule_id: str
    type: str
    """The reversed transaction's type: ``earn`` or ``redeem``."""
    amount: int
    """The reversed transaction's amount."""
    reversed: int
    """Points moved back: all of ``amount``, or for an earn what the member could cover."""
    uncovered: int
    """Points not moved back (``amount - reversed``): of an earn, those that expired from its
    lot (the expiry moved them back already) and those the member no longer had, so stayed
    with them; of a redeem, those it took from lots whose expiry passed since."""
    balance: int
    """The member's balance once the reversal was applied."""
    reason: str
    actor: str
    created_at: datetime
    replayed: bool = False
    """True when an earlier call had already reversed the transaction; nothing changed."""


REVERSAL_REASON_MAX_LENGTH = 500


async def reverse_transaction(
    connection: asyncpg.Connection,
    *,
    environment: str,
    org_id: str,
    transaction_id: UUID,
    reversal_id: UUID,
    reason: str,
    actor: str,
    correlation_id: str | None = None,
) -> ReversalOutcome:
    """Reverse an applied earn or redeem with compensating entries, in the caller's transaction.

    Reversing a redeem gives the member the points back, into the lots it took
    them from; points it took from lots whose expiry has passed since are not
    given back and are reported as ``uncovered``. Reversing an earn takes back
    what the member's balance can cover of what did not expire of it, never below
    zero: from its own lot first, then the member's other lots soonest first, then
    points without expiry. Points of lots due by now, its own or others, are never
    taken: they are the expiry process's, whether or not it has run yet, so the result
    does not depend on when it runs. It reports the rest, with what expired or is
    due of its own lot, as ``uncovered``;
    what is taken back returns to the rule's pool. An original is reversed at most
    once: any later call, with this or another ``reversal_id``, returns the first
    outcome and changes nothing. Raises
    :class:`TransactionNotFound`, :class:`NotReversible` (rejected transactions,
    reversals and expiries), :class:`ReversalIdInUse` or :class:`ReversalPastLimit`
    (the member's or the pool's balance would pass its limit, see
    :mod:`contracts.limits`).
    """
    assert connection.is_in_transaction(), (
        "reverse_transaction must run in the caller's transaction"
    )
    if not reason.strip():
        raise Problem("a reversal needs a reason", code="REVERSAL_REASON_REQUIRED")
    original = await repository.transaction(connection, transaction_id)
    if original is None or (original["environment"], original["org_id"]) != (environment, org_id):
        raise TransactionNotFound(f"no transaction {transaction_id} in {environment}")
    if original["type"] == "reversal":
        raise NotReversible(
            f"transaction {transaction_id} is itself a reversal", code="REVERSAL_NOT_REVERSIBLE"
        )
    if original["type"] == "expiry":
        raise NotReversible(
            f"transaction {transaction_id} is the expiry of an earn's points",
            code="EXPIRY_NOT_REVERSIBLE",
        )
    if original["status"] != "applied":
        raise NotReversible(
            f"transaction {transaction_id} was rejected and moved no points",
            code="REJECTED_NOT_REVERSIBLE",
        )
    member = AccountKey(environment, org_id, "member", original["user_id"])
    pool = AccountKey(environment, org_id, "pool", original["rule_id"])
    # Same lock order as apply_batch, and taken before looking for an earlier
    # reversal: a concurrent reversal of the same original has committed by then.
    accounts = await repository.lock_accounts(connection, sorted((member, pool)))
    earlier = await repository.reversal_of(connection, transaction_id)
    if earlier is not None:
        return _reversal_outcome(earlier, original, replayed=True)
    if await repository.transaction(connection, reversal_id) is not None:
        raise ReversalIdInUse(f"{reversal_id} already names another transaction")
    amount = int(original["amount"])
    balance = accounts[member].balance
    now = datetime.now(UTC)
    # To the member: back what a redeem took, less what it took from lots now expired;
    # back from an earn what the member can cover of it, less what of it expired: the
    # expiry moved that back to the pool already.
    if original["type"] == "redeem":
        moves = await _redeem_given_back(connection, transaction_id, now)
        to_member = amount - moves.uncovered
    else:
        # Points of lots due by now are no longer the member's, whether or not the
        # expiry process has run yet: the reversal leaves them all to the process, so
        # each expires once, to its own rule. What of the earn's own lot is due is
        # uncovered, like what of it expired.
        held = await _open_lots(connection, accounts[member])
        own_due = sum(
            lot.remaining for lot in held.lots if lot.id == transaction_id and lot.expires_at <= now
        )
        expired = await lots_repository.expired_of_lot(connection, transaction_id)
        to_member = -min(amount - expired - own_due, balance - held.due(now))
        moves = _earn_taken_back(held, transaction_id, -to_member, now)
    if refusal(balance + to_member, accounts[pool].balance - to_member) is not None:
        raise ReversalPastLimit(
            f"reversing transaction {transaction_id} would take the member's or the rule's "
            "balance past its limit; nothing was changed"
        )
    row = repository.ReversalRow(
        id=reversal_id,
        environment=environment,
        org_id=org_id,
        user_id=original["user_id"],
        request_id=original["request_id"],
        client_id=original["client_id"],
        rule_id=original["rule_id"],
        rule_version=original["rule_version"],
        correlation_id=correlation_id or str(reversal_id),
        amount=amount,
        created_at=now,
        reverses=transaction_id,
        reversal_reason=reason,
        reversed_by=actor,
        uncovered=amount - abs(to_member),
        balance_after=balance + to_member,
    )
    try:
        await repository.insert_reversal(connection, row)
    except asyncpg.UniqueViolationError as error:
        # Another reversal with this id, of another transaction (whose accounts' locks
        # are not ours), committed after the check above.
        if error.constraint_name != "transactions_pkey":
            raise
        raise ReversalIdInUse(f"{reversal_id} already names another transaction") from error
    if to_member:
        entries = {accounts[member].id: to_member, accounts[pool].id: -to_member}
        await repository.insert_entries(
            connection, [(reversal_id, account, moved) for account, moved in entries.items()]
        )
        await _record_lot_moves(connection, reversal_id, moves)
        await repository.add_to_balances(connection, entries, {accounts[member].id: moves.in_lots})
    movement = activity.Movement(org_id, environment, row.rule_id, "reversed", abs(to_member))
    await activity.record(connection, [movement], now)
    # The gateway and the rules service release the rule's cap usage from this event.
    await outbox.enqueue(connection, _reversal_event(row, original))
    log.info(
        "points.transaction.reversed",
        transaction_id=str(transaction_id),
        reversal_id=str(reversal_id),
        reversed=abs(to_member),
        uncovered=row.uncovered,
        actor=actor,
    )
    recorded = await repository.reversal_of(connection, transaction_id)
    assert recorded is not None
    return _reversal_outcome(recorded, original)


@dataclass
class LotMoves:
    """What a reversal does to the member's lots."""

    uses: list[tuple[UUID, int]] = field(default_factory=list)
    """``(lot id, signed amount)``: taken from (positive) or given back to (negative)."""
    remaining: list[tuple[UUID, int]] = field(default_factory=list)
    """``(lot id, remaining)`` of each lot changed."""
    in_lots: int = 0
    """The change of the member's points in open lots."""
    uncovered: int = 0
    """Of a redeem: points it took from lots whose expiry has passed, not given back."""


async def _redeem_given_back(
    connection: asyncpg.Connection, redeem_id: UUID, now: datetime
) -> LotMoves:
    """Give back into each lot the redeem took from what it took, unless the lot's expiry
    has passed: those points would have expired, so stay uncovered."""
    moves = LotMoves()
    for row in await lots_repository.uses_of(connection, redeem_id):
        used = int(row["amount"])
        if row["expired_by"] is not None or row["expires_at"] <= now:
            moves.uncovered += used
            continue
        moves.uses.append((row["lot_id"], -used))
        moves.remaining.append((row["lot_id"], int(row["remaining"]) + used))
        moves.in_lots += used
    return moves


async def _open_lots(connection: asyncpg.Connection, member: Account) -> MemberLots:
    """The (locked) member's open lots; none read when they hold no points in lots."""
    if not member.lots_remaining:
        return MemberLots()
    return (await lots_repository.open_lots(connection, [member.id]))[member.id]


def _earn_taken_back(held: MemberLots, earn_id: UUID, amount: int, now: datetime) -> LotMoves:
    """Take ``amount`` back from the earn's own lot first, then the member's other lots
    soonest first (never from lots due by ``now``); what they do not cover comes from
    points without expiry."""
    taken = held.take(amount, now=now, first=earn_id)
    left = {lot.id: lot.remaining for lot in held.lots}
    return LotMoves(
        uses=taken,
        remaining=[(lot_id, left[lot_id]) for lot_id, _ in taken],
        in_lots=-sum(share for _, share in taken),
    )


async def _record_lot_moves(
    connection: asyncpg.Connection, reversal_id: UUID, moves: LotMoves
) -> None:
    if moves.uses:
        await lots_repository.set_remaining(connection, moves.remaining)
        await lots_repository.insert_uses(
            connection, [(reversal_id, lot_id, amount) for lot_id, amount in moves.uses]
        )


def _reversal_event(
    reversal: repository.ReversalRow, original: asyncpg.Record
) -> PointsResultEvent:
    return PointsResultEvent.new_event(
        data=PointsResult(
            request_id=reversal.request_id,
            transaction_id=reversal.reverses,
            client_id=reversal.client_id,
            rule_id=reversal.rule_id,
            user_id=reversal.user_id,
            type=original["type"],
            amount=reversal.amount,
            status="reversed",
            balance=reversal.balance_after,
            processed_at=reversal.created_at,
            reversal_id=reversal.id,
            reversed_amount=reversal.amount - reversal.uncovered,
            uncovered_amount=reversal.uncovered,
        ),
        environment=cast("Environment", reversal.environment),
        org_id=reversal.org_id,
        correlation_id=reversal.correlation_id,
    )


def _reversal_outcome(
    reversal: asyncpg.Record, original: asyncpg.Record, *, replayed: bool = False
) -> ReversalOutcome:
    return ReversalOutcome(
        reversal_id=reversal["id"],
        transaction_id=original["id"],
        environment=original["environment"],
        user_id=original["user_id"],
        rule_id=original["rule_id"],
        type=original["type"],
        amount=original["amount"],
        reversed=reversal["amount"] - reversal["uncovered"],
        uncovered=reversal["uncovered"],
        balance=reversal["balance_after"],
        reason=reversal["reversal_reason"],
        actor=reversal["reversed_by"],
        created_at=reversal["created_at"],
        replayed=replayed,
    )


async def reverse_for_operator(
    connection: asyncpg.Connection,
    principal: Principal,
    *,
    transaction_id: UUID,
    reversal_id: UUID,
    reason: str,
    correlation_id: str | None = None,
) -> ReversalOutcome:
    """:func:`reverse_transaction` for a business user of the transaction's organisation."""
    require_editor(principal)
    original = await repository.transaction(connection, transaction_id)
    if original is None or original["org_id"] != principal.org_id:
        raise TransactionNotFound(f"no transaction {transaction_id} in this organisation")
    return await reverse_transaction(
        connection,
        environment=original["environment"],
        org_id=principal.org_id,
        transaction_id=transaction_id,
        reversal_id=reversal_id,
        reason=reason,
        actor=principal.subject,
        correlation_id=correlation_id,
    )

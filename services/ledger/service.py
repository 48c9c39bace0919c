"""The ledger's logic: applying points requests as double-entry transactions.

Nothing here opens or commits a transaction: the message handler (or the
test, or the CLI) owns it, so a batch's inbox claims, ledger rows and outbox
events commit together or not at all.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, cast, get_args
from uuid import UUID, uuid4

import asyncpg
import pydantic_core

from contracts import (
    POINTS_REQUESTED,
    Environment,
    PointsRequestedEvent,
    PointsResult,
    PointsResultEvent,
    member_key,
)
from contracts.limits import MAX_MEMBER_BALANCE, MAX_POOL_BALANCE
from infra import inbox, outbox
from infra.consumers import is_transient
from infra.logging import get_logger
from infra.problems import Problem
from infra.storable import BIGINT_MAX
from infra.tokens import Principal
from services.ledger import repository
from services.ledger.repository import Account, AccountKey, TransactionRow

log = get_logger(__name__)

INSUFFICIENT_BALANCE = "INSUFFICIENT_BALANCE"
#: The reason of a request that would take an account past its limit (contracts.limits).
BALANCE_LIMIT_EXCEEDED = "BALANCE_LIMIT_EXCEEDED"
#: The reason of a request the ledger could not process and quarantined.
PROCESSING_FAILED = "PROCESSING_FAILED"
ENVIRONMENTS: tuple[str, ...] = get_args(Environment)
#: How many offending rows each invariant check reports at most.
VIOLATIONS_REPORTED_PER_CHECK = 100


class UnknownEnvironment(Problem):
    status = 400
    code = "UNKNOWN_ENVIRONMENT"
    title = "Unknown environment"


class EnvironmentForbidden(Problem):
    status = 403
    code = "ENVIRONMENT_FORBIDDEN"
    title = "Forbidden"


class InvalidCursor(Problem):
    status = 400
    code = "INVALID_CURSOR"
    title = "Invalid cursor"


# -- applying points requests ------------------------------------------------


def member_account(event: PointsRequestedEvent) -> AccountKey:
    return AccountKey(event.environment, event.org_id, "member", event.data.user_id)


def pool_account(event: PointsRequestedEvent) -> AccountKey:
    """The account of the rule's points: debited on earn, credited on redeem."""
    return AccountKey(event.environment, event.org_id, "pool", event.data.rule_id)


@dataclass(frozen=True)
class Outcome:
    """What the ledger decided for one request."""

    event: PointsRequestedEvent
    status: Literal["applied", "rejected"]
    reason: str | None
    member_balance: int
    """The member's balance after this request (unchanged when rejected)."""
    entries: tuple[tuple[AccountKey, int], ...]


def decide(
    events: Sequence[PointsRequestedEvent], balances: dict[AccountKey, int]
) -> list[Outcome]:
    """Apply ``events`` in order to ``balances`` (updated in place), deciding each.

    Earn moves points from the rule's pool to the member; redeem moves them
    back, and is rejected when the member's balance cannot cover it. Either is
    rejected when it would take the member or the pool past its limit.
    """
    outcomes = []
    for event in events:
        member, pool = member_account(event), pool_account(event)
        amount = event.data.amount
        signed = amount if event.data.type == "earn" else -amount
        reason = refusal(balances[member] + signed, balances[pool] - signed)
        if reason is not None:
            outcomes.append(Outcome(event, "rejected", reason, balances[member], entries=()))
            continue
        balances[member] += signed
        balances[pool] -= signed
        outcomes.append(
            Outcome(event, "applied", None, balances[member], ((pool, -signed), (member, signed)))
        )
    return outcomes


def refusal(member_balance: int, pool_balance: int) -> str | None:
    """Why a movement that leaves these balances is refused, or None when it may be applied.

    A balance already past its limit (written before the limits existed) takes
    only a movement that ends within it, as the database's constraints do.
    """
    if member_balance < 0:
        return INSUFFICIENT_BALANCE
    if member_balance > MAX_MEMBER_BALANCE or abs(pool_balance) > MAX_POOL_BALANCE:
        return BALANCE_LIMIT_EXCEEDED
    return None


#: Fewest requests worth a part of their own: below that a transaction's fixed cost
#: (a commit and a handful of statements) outweighs what working side by side saves,
#: so the small batches of steady traffic are applied whole.
LEAST_PART = 500


def members_apart(
    events: Sequence[PointsRequestedEvent], parts: int
) -> list[list[PointsRequestedEvent]]:
    """Cut ``events`` into at most ``parts`` non-empty lists (fewer when there are less than
    :data:`LEAST_PART` requests for each) with no member in common, each in the batch's
    order: they can be applied concurrently without waiting for each other's member
    locks, and a member's requests are still decided in order."""
    parts = max(1, min(parts, len(events) // LEAST_PART))
    split: list[list[PointsRequestedEvent]] = [[] for _ in range(parts)]
    for event in events:
        split[hash(member_account(event)) % parts].append(event)
    return [part for part in split if part]


async def apply_batch(
    connection: asyncpg.Connection, events: Sequence[PointsRequestedEvent]
) -> list[Outcome]:
    """Apply a batch of points requests in the caller's transaction; return what was decided.

    Redeliveries (an event id already in the inbox) and requests already
    recorded (same transaction id, or same client and request id) change
    nothing and produce no outcome. Each outcome's result is staged in the outbox.
    """
    assert connection.is_in_transaction(), "apply_batch must run in the caller's transaction"
    fresh = await inbox.claim_new(connection, events, POINTS_REQUESTED)
    if not fresh:
        return []
    keys = sorted({key for event in fresh for key in (member_account(event), pool_account(event))})
    await repository.create_missing_accounts(connection, keys)
    accounts = await repository.lock_accounts(connection, keys)
    fresh = await _not_yet_recorded(connection, fresh)
    outcomes = decide(fresh, {key: account.balance for key, account in accounts.items()})
    await _record(connection, outcomes, accounts)
    log.info(
        "points.batch.applied",
        received=len(events),
        applied=sum(outcome.status == "applied" for outcome in outcomes),
        rejected=sum(outcome.status == "rejected" for outcome in outcomes),
    )
    return outcomes


async def fail_quarantined_request(
    connection: asyncpg.Connection, event: PointsRequestedEvent
) -> str | None:
    """Settle a request the ledger could not apply, and quarantined, as failed
    (``PROCESSING_FAILED``), in the quarantine's transaction: its result frees the
    gateway's cap reservation and tells the developer, so nothing stays pending.

    The request is recorded as a rejected transaction, so a redelivery, or a
    replay, cannot apply it after the developer was told it failed. Should the
    database refuse even that row, the result alone is sent. Returns the
    quarantine's resolution, ``"failed"``.
    """
    if not await inbox.claim(connection, event.event_id, POINTS_REQUESTED):
        return None  # applied or settled already: the quarantine changes nothing
    if not await _not_yet_recorded(connection, [event]):
        return None
    balance = await repository.member_balance(
        connection, event.environment, event.org_id, event.data.user_id
    )
    outcome = Outcome(event, "rejected", PROCESSING_FAILED, balance or 0, entries=())
    now = datetime.now(UTC)
    try:
        async with connection.transaction():
            await repository.insert_transactions(connection, [_transaction_row(outcome, now)])
    except Exception as error:
        if is_transient(error):
            raise
        log.error(
            "points.request.unrecordable",
            transaction_id=str(event.data.transaction_id),
            error=str(error),
        )
    await outbox.enqueue_rows(connection, [result_row(outcome, now)])
    log.warning(
        "points.request.failed",
        transaction_id=str(event.data.transaction_id),
        reason=PROCESSING_FAILED,
    )
    return "failed"


async def _not_yet_recorded(
    connection: asyncpg.Connection, events: list[PointsRequestedEvent]
) -> list[PointsRequestedEvent]:
    # Runs after the member accounts are locked, so a concurrent batch with the
    # same request has either committed (and is seen here) or waits for us.
    recorded_ids, recorded_requests = await repository.recorded_transactions(
        connection,
        [event.data.transaction_id for event in events],
        [(event.data.client_id, event.data.request_id) for event in events],
    )
    fresh = []
    for event in events:
        request = (event.data.client_id, event.data.request_id)
        if event.data.transaction_id in recorded_ids or request in recorded_requests:
            log.warning(
                "points.request.already_recorded",
                event_id=str(event.event_id),
                transaction_id=str(event.data.transaction_id),
                request_id=event.data.request_id,
            )
            continue
        recorded_ids.add(event.data.transaction_id)
        recorded_requests.add(request)
        fresh.append(event)
    return fresh


async def _record(
    connection: asyncpg.Connection,
    outcomes: list[Outcome],
    accounts: dict[AccountKey, Account],
) -> None:
    now = datetime.now(UTC)
    entries = [
        (outcome.event.data.transaction_id, accounts[key].id, amount)
        for outcome in outcomes
        for key, amount in outcome.entries
    ]
    changes: dict[int, int] = {}
    for _, account_id, amount in entries:
        changes[account_id] = changes.get(account_id, 0) + amount
    await repository.insert_transactions(
        connection, [_transaction_row(outcome, now) for outcome in outcomes]
    )
    await repository.insert_entries(connection, entries)
    if outcomes:
        await outbox.enqueue_rows(connection, [result_row(outcome, now) for outcome in outcomes])
    await repository.add_to_balances(connection, changes)  # last: it locks the pools


def _transaction_row(outcome: Outcome, created_at: datetime) -> TransactionRow:
    event, data = outcome.event, outcome.event.data
    return TransactionRow(
        id=data.transaction_id,
        environment=event.environment,
        org_id=event.org_id,
        user_id=data.user_id,
        request_id=data.request_id,
        client_id=data.client_id,
        rule_id=data.rule_id,
        rule_version=data.rule_version,
        correlation_id=event.correlation_id,
        type=data.type,
        amount=data.amount,
        status=outcome.status,
        reason=outcome.reason,
        created_at=created_at,
    )


def result_row(outcome: Outcome, processed_at: datetime) -> outbox.OutboxRow:
    """The outbox row of ``outcome``'s ``points.results.v1`` event, serialised directly.

    Building a :class:`PointsResultEvent` validates every field again, which cost
    three times as much as this per request (about a sixth of the ledger's time
    when catching up), though each value comes from a request already validated
    against its contract. The dictionary holds the contract's fields in its
    order; a unit test checks these bytes are the ones the validated model writes.
    """
    event, data = outcome.event, outcome.event.data
    event_type = f"points.{outcome.status}"
    payload = pydantic_core.to_json(
        {
            "event_id": uuid4(),
            "type": event_type,
            "version": PointsResultEvent.VERSION,
            "occurred_at": processed_at,
            "environment": event.environment,
            "org_id": event.org_id,
            "correlation_id": event.correlation_id,
            "data": {
                "request_id": data.request_id,
                "transaction_id": data.transaction_id,
                "client_id": data.client_id,
                "rule_id": data.rule_id,
                "user_id": data.user_id,
                "type": data.type,
                "amount": data.amount,
                "status": outcome.status,
                "reason": outcome.reason,
                "balance": outcome.member_balance,
                "callback_url": data.callback_url,
                "processed_at": processed_at,
                "reversal_id": None,
                "reversed_amount": None,
                "uncovered_amount": None,
            },
        }
    )
    key = member_key(event.environment, event.org_id, data.user_id)
    headers = outbox.outbox_headers(event_type, event.correlation_id)
    return PointsResultEvent.TOPIC, key, payload, headers


# -- reversals -----------------------------------------------------------------


class TransactionNotFound(Problem):
    status = 404
    code = "TRANSACTION_NOT_FOUND"
    title = "Transaction not found"


class NotReversible(Problem):
    status = 409
    code = "NOT_REVERSIBLE"
    title = "Transaction cannot be reversed"


class ReversalIdInUse(Problem):
    status = 409
    code = "REVERSAL_ID_IN_USE"
    title = "Reversal id already used"


class ReversalPastLimit(Problem):
    status = 409
    code = BALANCE_LIMIT_EXCEEDED
    title = "Reversal would pass a balance limit"


class RoleForbidden(Problem):
    status = 403
    code = "FORBIDDEN"
    title = "Forbidden"


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
    """Points of an earn the member no longer had, so stayed with them (``amount - reversed``)."""
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

    Reversing a redeem gives the member the points back. Reversing an earn
    takes back what the member's balance can cover, never below zero, and
    reports the rest as ``uncovered``; what is taken back returns to the
    rule's pool. An original is reversed at most once: any later call, with
    this or another ``reversal_id``, returns the first outcome and changes
    nothing. Raises :class:`TransactionNotFound`, :class:`NotReversible`
    (rejected transactions and reversals), :class:`ReversalIdInUse` or
    :class:`ReversalPastLimit` (the member's or the pool's balance would pass its
    limit, see :mod:`contracts.limits`).
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
    # To the member: back what a redeem took; back from an earn what is left of it.
    to_member = amount if original["type"] == "redeem" else -min(amount, balance)
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
        created_at=datetime.now(UTC),
        reverses=transaction_id,
        reversal_reason=reason,
        reversed_by=actor,
        uncovered=amount - abs(to_member),
        balance_after=balance + to_member,
    )
    await repository.insert_reversal(connection, row)
    if to_member:
        entries = {accounts[member].id: to_member, accounts[pool].id: -to_member}
        await repository.insert_entries(
            connection, [(reversal_id, account, moved) for account, moved in entries.items()]
        )
        await repository.add_to_balances(connection, entries)
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


def require_editor(principal: Principal) -> None:
    """Only an organisation's admins and editors may change its points by hand."""
    if principal.kind != "user":
        raise RoleForbidden("only a business user of the organisation may do this")
    if principal.role not in ("admin", "editor"):
        raise RoleForbidden("viewers cannot change anything", code="READ_ONLY_ROLE")


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


# -- reads -------------------------------------------------------------------


@dataclass(frozen=True)
class ReadScope:
    """The organisation and environment a caller's read is confined to."""

    org_id: str
    environment: Environment


def read_scope(principal: Principal, environment: str) -> ReadScope:
    """Where ``principal`` may read members' points in ``environment``, or a problem.

    A client reads its own organisation in its own environment only; a
    business user reads its own organisation in either environment.
    """
    if environment not in ENVIRONMENTS:
        raise UnknownEnvironment(
            f"environment must be one of {', '.join(ENVIRONMENTS)}, not {environment!r}"
        )
    if principal.kind == "client" and principal.environment != environment:
        raise EnvironmentForbidden(
            f"this client belongs to the {principal.environment} environment, not {environment}"
        )
    return ReadScope(org_id=principal.org_id, environment=cast("Environment", environment))


async def member_balance(connection: asyncpg.Connection, scope: ReadScope, user_id: str) -> int:
    """The member's balance; 0 for a member the ledger has never seen."""
    balance = await repository.member_balance(connection, scope.environment, scope.org_id, user_id)
    return balance or 0


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
    """Points of reversed earns the members had already spent."""
    net: int
    """Points this rule put in members' hands and they still hold."""
    transactions: int
    """Every transaction recorded for the rule: applied, rejected and reversals."""
    rejected: int

    @property
    def reversed(self) -> int:
        return self.reversed_earned + self.reversed_redeemed


def totals_scope(principal: Principal, environment: str) -> ReadScope:
    """Rule totals are for the console: a business user of the organisation only."""
    if principal.kind != "user":
        raise RoleForbidden("rule totals are for business users of the organisation")
    return read_scope(principal, environment)


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
        net=earned - redeemed - reversed_earned + reversed_redeemed,
        transactions=int(row["applied"]) + int(row["rejected"]),
        rejected=int(row["rejected"]),
    )


# -- verification --------------------------------------------------------------


async def verify_ledger(connection: asyncpg.Connection) -> list[str]:
    """Check the ledger's invariants; each violation found, as a sentence.

    An empty list means: every transaction's entries sum to zero, every
    account's balance equals the sum of its entries, no member balance is
    negative, every applied transaction has entries and no rejected one has
    (a reversal that recovered nothing has none), and every reversal moves
    back its original's entries, scaled to what it recovered.
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
    return violations

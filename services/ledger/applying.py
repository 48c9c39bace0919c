"""Applying batches of points requests as double-entry transactions.

Nothing here opens or commits a transaction: the message handler (or the
test, or the CLI) owns it, so a batch's inbox claims, ledger rows and outbox
events commit together or not at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal
from uuid import UUID, uuid5

import asyncpg
import pydantic_core

from contracts import (
    POINTS_REQUESTED,
    PointsRequestedEvent,
    PointsResultEvent,
    member_key,
)
from contracts.limits import MAX_MEMBER_BALANCE, MAX_POOL_BALANCE
from infra import inbox, outbox
from infra.errors import is_transient
from infra.logging import get_logger
from services.ledger import activity, lots_repository, repository
from services.ledger.lots import Lot, MemberLots, changed_lots
from services.ledger.repository import Account, AccountKey, Recorded, TransactionRow

log = get_logger(__name__)

INSUFFICIENT_BALANCE = "INSUFFICIENT_BALANCE"
#: The reason of every request for a member the business blocked (members.lifecycle.v1).
MEMBER_BLOCKED = "MEMBER_BLOCKED"
#: The reason of a request that would take an account past its limit (contracts.limits).
BALANCE_LIMIT_EXCEEDED = "BALANCE_LIMIT_EXCEEDED"
#: The reason of a request the ledger could not process and quarantined.
PROCESSING_FAILED = "PROCESSING_FAILED"
#: The reason of a request whose client used its requestId before, for another
#: transaction: the gateway forgets a requestId after its retention, the ledger never.
REQUEST_ID_REUSED = "REQUEST_ID_REUSED"
#: Results' event ids are derived from the transaction and its status in this
#: namespace, so a result published again is the same event to every consumer.
RESULT_EVENT_IDS = UUID("5d0c3f5e-2b8e-4c1e-9a57-7f0e3c1b9a21")


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
    lot_uses: tuple[tuple[UUID, int], ...] = ()
    """What an applied redeem took from which of the member's lots."""


def decide(
    events: Sequence[PointsRequestedEvent],
    balances: dict[AccountKey, int],
    *,
    held: dict[AccountKey, MemberLots] | None = None,
    blocked: frozenset[AccountKey] = frozenset(),
    now: datetime | None = None,
) -> list[Outcome]:
    """Apply ``events`` in order to ``balances`` and the members' lots ``held`` (both
    updated in place), deciding each.

    Earn moves points from the rule's pool to the member, into a new lot when they
    expire; redeem moves them back, from the lots that expire soonest first, then from
    points without expiry, and is rejected when the member's balance, less the points
    whose expiry passed by ``now``, cannot cover it. Either is rejected when it would
    take the member or the pool past its limit, and every request of a ``blocked``
    member is rejected. ``held`` must hold the open lots of every member with lots
    who redeems.
    """
    held = {} if held is None else held
    now = now or datetime.now(UTC)
    outcomes = []
    for event in events:
        member, pool = member_account(event), pool_account(event)
        if member in blocked:
            outcomes.append(Outcome(event, "rejected", MEMBER_BLOCKED, balances[member], ()))
            continue
        data = event.data
        lots = held.get(member)
        signed = data.amount if data.type == "earn" else -data.amount
        due = 0 if lots is None or data.type == "earn" else lots.due(now)
        reason = refusal(balances[member] + signed - due, balances[pool] - signed)
        if reason is not None:
            outcomes.append(Outcome(event, "rejected", reason, balances[member], entries=()))
            continue
        balances[member] += signed
        balances[pool] -= signed
        uses: list[tuple[UUID, int]] = []
        if data.expires_at is not None:
            lot = Lot(data.transaction_id, data.expires_at, data.amount, data.amount, new=True)
            held.setdefault(member, MemberLots()).add(lot)
        elif lots is not None and data.type == "redeem":
            uses = lots.take(data.amount, now=now)
        outcomes.append(
            Outcome(
                event,
                "applied",
                None,
                balances[member],
                ((pool, -signed), (member, signed)),
                tuple(uses),
            )
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

    Redeliveries (an event id already in the inbox) change nothing and produce no
    outcome. A request settled before gets its result published again, and one
    whose requestId its client used before is rejected, ``REQUEST_ID_REUSED``
    (see :func:`_set_apart_settled`); neither changes a balance. Each outcome's
    result is staged in the outbox.
    """
    assert connection.is_in_transaction(), "apply_batch must run in the caller's transaction"
    fresh = await inbox.claim_new(connection, events, POINTS_REQUESTED)
    if not fresh:
        return []
    keys = sorted({key for event in fresh for key in (member_account(event), pool_account(event))})
    await repository.create_missing_accounts(connection, keys)
    accounts = await repository.lock_accounts(connection, keys)
    fresh, settled = await _set_apart_settled(connection, fresh)
    now = datetime.now(UTC)
    held = await _lots_of_redeeming_members(connection, fresh, accounts)
    before = {lot.id: lot.remaining for member in held.values() for lot in member.lots}
    blocked = frozenset(key for key, account in accounts.items() if account.blocked)
    outcomes = decide(
        fresh,
        {key: account.balance for key, account in accounts.items()},
        held=held,
        blocked=blocked,
        now=now,
    )
    await _record(connection, outcomes, accounts, changed_lots(held.values(), before))
    again = [
        Outcome(
            event, recorded.status, recorded.reason, accounts[member_account(event)].balance, ()
        )
        for event, recorded in settled
    ]
    if again:
        await outbox.enqueue_rows(connection, [result_row(outcome, now) for outcome in again])
    log.info(
        "points.batch.applied",
        received=len(events),
        applied=sum(outcome.status == "applied" for outcome in outcomes),
        rejected=sum(outcome.status == "rejected" for outcome in outcomes),
        settled_before=len(again),
    )
    return outcomes + again


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
    fresh, _ = await _set_apart_settled(connection, [event])
    if not fresh:
        return None
    balance = await repository.member_balance(
        connection, event.environment, event.org_id, event.data.user_id
    )
    outcome = Outcome(event, "rejected", PROCESSING_FAILED, balance or 0, entries=())
    now = datetime.now(UTC)
    try:
        # A savepoint in the quarantine's transaction: if the row is refused, the
        # result below is still sent.
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


async def _set_apart_settled(
    connection: asyncpg.Connection, events: list[PointsRequestedEvent]
) -> tuple[list[PointsRequestedEvent], list[tuple[PointsRequestedEvent, Recorded]]]:
    """The requests to decide now, and those settled before with how they were.

    - A transaction already recorded keeps its outcome: its request came again
      because the gateway publishes a request again while its result is late
      (lost, or quarantined), so the same result is published again.
    - A requestId its client used before for another transaction (the gateway
      remembers requestIds for its retention, the ledger for ever) is rejected
      with ``REQUEST_ID_REUSED`` and not recorded: a requestId moves points once.

    A second copy of one transaction in the same batch is dropped.
    """
    # Runs after the member accounts are locked, so a concurrent batch with the
    # same request has either committed (and is seen here) or waits for us.
    recorded, recorded_requests = await repository.recorded_transactions(
        connection,
        [event.data.transaction_id for event in events],
        [(event.data.client_id, event.data.request_id) for event in events],
    )
    fresh, settled, seen = [], [], set()
    for event in events:
        transaction_id, request = (
            event.data.transaction_id,
            (event.data.client_id, event.data.request_id),
        )
        before = recorded.get(transaction_id)
        if transaction_id in seen:
            continue
        seen.add(transaction_id)
        if before is None and request in recorded_requests:
            before = Recorded("rejected", REQUEST_ID_REUSED)
        if before is not None:
            log.warning(
                "points.request.settled_before",
                event_id=str(event.event_id),
                transaction_id=str(transaction_id),
                request_id=event.data.request_id,
                status=before.status,
                reason=before.reason,
            )
            settled.append((event, before))
            continue
        recorded_requests.add(request)
        fresh.append(event)
    return fresh, settled


async def _lots_of_redeeming_members(
    connection: asyncpg.Connection,
    events: Sequence[PointsRequestedEvent],
    accounts: dict[AccountKey, Account],
) -> dict[AccountKey, MemberLots]:
    """The open lots of the members who redeem in this batch and hold lots: a batch
    without any reads nothing (the account lock says how many points are in lots)."""
    wanted = {
        member_account(event)
        for event in events
        if event.data.type == "redeem" and accounts[member_account(event)].lots_remaining
    }
    if not wanted:
        return {}
    by_id = {accounts[key].id: key for key in wanted}
    held = await lots_repository.open_lots(connection, list(by_id))
    return {key: held[account_id] for account_id, key in by_id.items()}


async def _record(
    connection: asyncpg.Connection,
    outcomes: list[Outcome],
    accounts: dict[AccountKey, Account],
    lots: tuple[list[Lot], list[tuple[UUID, int]]] = ([], []),
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
    in_lots = await _record_lots(connection, outcomes, accounts, *lots)
    if outcomes:
        await outbox.enqueue_rows(connection, [result_row(outcome, now) for outcome in outcomes])
    # last: it locks the pools, then the rules' activity rows
    await repository.add_to_balances(connection, changes, in_lots)
    await activity.record(
        connection,
        (
            activity.Movement(
                outcome.event.org_id,
                outcome.event.environment,
                outcome.event.data.rule_id,
                activity.KIND_OF_TYPE[outcome.event.data.type],
                outcome.event.data.amount,
            )
            for outcome in outcomes
            if outcome.status == "applied"
        ),
        now,
    )


async def _record_lots(
    connection: asyncpg.Connection,
    outcomes: list[Outcome],
    accounts: dict[AccountKey, Account],
    new: list[Lot],
    changed: list[tuple[UUID, int]],
) -> dict[int, int]:
    """Write the batch's new lots, what its redeems took from lots and the lots' new
    remaining, one statement each; the change of each member's points in lots."""
    in_lots: dict[int, int] = {}
    if not new and not changed:
        return in_lots
    uses = []
    for outcome in outcomes:
        data = outcome.event.data
        account_id = accounts[member_account(outcome.event)].id
        if outcome.status == "applied" and data.expires_at is not None:
            in_lots[account_id] = in_lots.get(account_id, 0) + data.amount
        for lot_id, taken in outcome.lot_uses:
            uses.append((data.transaction_id, lot_id, taken))
            in_lots[account_id] = in_lots.get(account_id, 0) - taken
    awards = {outcome.event.data.transaction_id: outcome.event for outcome in outcomes}
    if new:
        await lots_repository.insert_lots(
            connection,
            [
                (lot, accounts[member_account(awards[lot.id])].id, awards[lot.id].data.rule_id)
                for lot in new
            ],
        )
    if changed:
        await lots_repository.set_remaining(connection, changed)
    if uses:
        await lots_repository.insert_uses(connection, uses)
    return in_lots


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
            "event_id": uuid5(RESULT_EVENT_IDS, f"{data.transaction_id}:{outcome.status}"),
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
                "expiry_id": None,
                "expired_amount": None,
                "expires_at": None,
            },
        }
    )
    key = member_key(event.environment, event.org_id, data.user_id)
    headers = outbox.outbox_headers(event_type, event.correlation_id)
    return PointsResultEvent.TOPIC, key, payload, headers

"""Settling requests with the ledger's outcomes, and freeing what they reserved."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

from contracts import PointsResult, PointsResultEvent
from infra.db import PLAN_FOR_THESE_VALUES
from infra.logging import get_logger
from services.trigger import repository

log = get_logger(__name__)


@dataclass
class CapReleases:
    """Reservations a batch of results frees, applied together at the end in one fixed
    order (rules, then members, each sorted): two replicas settling batches at once
    then never wait on each other's cap rows in opposite orders, so cannot deadlock."""

    rules: Counter[str] = field(default_factory=Counter)
    members: Counter[tuple[str, str]] = field(default_factory=Counter)

    def add(self, settled: asyncpg.Record, at_most: int | None = None) -> None:
        """Free what a request reserved (and nothing it did not), up to ``at_most`` points."""
        cap, member_cap = settled["cap_reserved"], settled["member_cap_reserved"]
        if at_most is not None:
            cap, member_cap = min(cap, at_most), min(member_cap, at_most)
        if cap:
            self.rules[settled["rule_id"]] += cap
        if member_cap:
            self.members[settled["rule_id"], settled["user_id"]] += member_cap

    async def apply(self, connection: asyncpg.Connection) -> None:
        for rule_id in sorted(self.rules):
            await repository.release_cap(connection, rule_id, self.rules[rule_id])
        for rule_id, user_id in sorted(self.members):
            await repository.release_member_cap(
                connection, rule_id, user_id, self.members[rule_id, user_id]
            )


async def settle_results(
    connection: asyncpg.Connection, events: Sequence[PointsResultEvent]
) -> None:
    """Settle requests with the ledger's outcomes, in the caller's transaction; a
    rejection frees its reservations. An expiry settles nothing and frees nothing.

    Outcomes are written in one statement, then any reversals. A reversal
    leaves its request ``succeeded``, records what it moved back and frees that
    much of the request's reservations: the points are no longer spent against
    the rule's caps. Reservations are freed last, all together, in a fixed order.

    No inbox: every effect is guarded by the request's own row (an outcome
    settles only a ``pending`` request, a reversal only one not yet reversed,
    and only what changed is freed), so an event delivered again, under its
    own id or another, changes nothing.
    """
    releases = CapReleases()
    outcomes: dict[tuple[str, str], PointsResult] = {}
    reversals = []
    for event in events:
        result = event.data
        if result.status == "reversed":
            reversals.append(result)
        elif result.status == "expired":
            # Points of an applied earn reached their expiry: the request stays
            # succeeded, and what it reserved stays spent against the rule's caps.
            continue
        else:
            # A request's first outcome settles it; a later copy would find it settled.
            outcomes.setdefault((result.client_id, result.request_id), result)
    if outcomes:
        rows = [
            (
                result.client_id,
                result.request_id,
                "succeeded" if result.status == "applied" else "failed",
                result.reason,
                result.balance,
            )
            for result in outcomes.values()
        ]
        await connection.execute(PLAN_FOR_THESE_VALUES)
        settled = await repository.record_results(connection, rows)
        for request in settled:
            if request["status"] == "failed":
                releases.add(request)
    # After the outcomes: a reversal needs its request settled, perhaps by this batch.
    for result in reversals:
        await _record_reversal(connection, result, releases)
    await releases.apply(connection)


async def _record_reversal(
    connection: asyncpg.Connection, result: PointsResult, releases: CapReleases
) -> None:
    reversed_amount = result.reversed_amount or 0
    assert result.reversal_id is not None  # the contract requires one on a reversal
    reversed_request = await repository.record_reversal(
        connection,
        result.client_id,
        result.request_id,
        reversal_id=result.reversal_id,
        reversed_amount=reversed_amount,
        uncovered_amount=result.uncovered_amount,
        reversed_at=result.processed_at,
    )
    if reversed_request is None:
        # Purged after its retention (or never seen): what it reserved is not
        # known, and releasing a guess could let a cap be exceeded.
        log.warning(
            "points.reversal.request_unknown",
            client_id=result.client_id,
            request_id=result.request_id,
            reversed=reversed_amount,
        )
        return
    releases.add(reversed_request, at_most=reversed_amount)
    log.info(
        "points.request.reversed",
        client_id=result.client_id,
        request_id=result.request_id,
        reversed=reversed_amount,
    )

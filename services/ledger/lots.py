"""Which lots a member's points come from: the points of each award that expires.

A member's balance is the points of their open lots plus points that never
expire. A redemption may spend neither points whose expiry has passed (the
expiry process takes those) nor more than the rest; it takes from the lots
that expire soonest first, then from points without expiry. An earn's reversal
takes back from its own lot first, then from the other lots soonest first, then
from points without expiry. Neither takes points whose expiry has passed: they are
the expiry process's, whether or not it has run yet.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID


@dataclass
class Lot:
    """What is left of one award whose points expire; its id is the earn's transaction id."""

    id: UUID
    expires_at: datetime
    remaining: int
    amount: int
    new: bool = False
    """Awarded by the batch being decided, so inserted rather than updated."""


@dataclass
class MemberLots:
    """One member's open lots, kept soonest expiry first."""

    lots: list[Lot] = field(default_factory=list)

    def add(self, lot: Lot) -> None:
        self.lots.append(lot)
        self.lots.sort(key=lambda held: (held.expires_at, held.id))

    def due(self, now: datetime) -> int:
        """Points of lots whose expiry has passed: no longer the member's to spend."""
        return sum(lot.remaining for lot in self.lots if lot.expires_at <= now)

    def total(self) -> int:
        return sum(lot.remaining for lot in self.lots)

    def take(
        self, amount: int, *, now: datetime, first: UUID | None = None
    ) -> list[tuple[UUID, int]]:
        """Take up to ``amount`` points from the lots not due by ``now``, ``first`` (an
        earn's own lot) before the others soonest first. Lots due by ``now`` are no longer
        the member's: neither a redemption nor a reversal takes them; the expiry process
        does. Returns what was taken from which lot; the rest of ``amount`` comes from
        points without expiry."""
        order = sorted(self.lots, key=lambda lot: lot.id != first)  # stable: soonest next
        return _take_from([lot for lot in order if lot.expires_at > now], amount)


def _take_from(lots: Iterable[Lot], amount: int) -> list[tuple[UUID, int]]:
    taken = []
    for lot in lots:
        share = min(amount, lot.remaining)
        if share:
            lot.remaining -= share
            amount -= share
            taken.append((lot.id, share))
    return taken


def changed_lots(
    held: Iterable[MemberLots], before: dict[UUID, int]
) -> tuple[list[Lot], list[tuple[UUID, int]]]:
    """The lots a batch awarded, to insert, and ``(lot id, remaining)`` of the lots it
    changed that existed before (``before``: their remaining when read)."""
    new, changed = [], []
    for member in held:
        for lot in member.lots:
            if lot.new:
                new.append(lot)
            elif before.get(lot.id) != lot.remaining:
                changed.append((lot.id, lot.remaining))
    return new, changed

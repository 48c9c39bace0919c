"""Fair shares of the delivery workers: how many deliveries each organisation has in flight.

A pool's claimer asks the database for as many due deliveries as the pool has
room for, none of an organisation (or a host) past its limit, the organisation
with the fewest deliveries in flight in this process first (oldest first among
equals). So an organisation whose receivers hang holds at most its limit of
workers, and the others' deliveries go ahead of its queue rather than behind it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)


class SlotCounter(Generic[Key]):
    """Deliveries in flight per key (an organisation, or an organisation's receiving
    host), at most ``limit`` each.

    One claimer per pool claims and takes the slots before it claims again, so
    the limit holds exactly within a process; ``on_slot_freed`` wakes the
    claimer when a key that was full has room again.
    """

    def __init__(self, limit: int, on_slot_freed: Callable[[], None]) -> None:
        self.limit = limit
        self._on_slot_freed = on_slot_freed
        self._in_flight: dict[Key, int] = {}

    def in_flight(self) -> dict[Key, int]:
        return dict(self._in_flight)

    def has_room(self, key: Key) -> bool:
        return self._in_flight.get(key, 0) < self.limit

    def take(self, key: Key) -> None:
        self._in_flight[key] = self._in_flight.get(key, 0) + 1

    def give_back(self, key: Key) -> None:
        was_full = self._in_flight[key] >= self.limit
        self._in_flight[key] -= 1
        if not self._in_flight[key]:
            del self._in_flight[key]
        if was_full:
            self._on_slot_freed()


def organisation_limit(per_organisation: int, workers: int) -> int:
    """An organisation's share of ``workers``: never all of them while there are two."""
    return max(1, min(per_organisation, workers - 1))


@dataclass
class WorkerPool:
    """One kind of delivery's workers, with the organisations' (and receiving hosts') slots.

    Callbacks and e-mails each have a pool, so a hanging callback receiver never
    delays a share e-mail and a slow SMTP conversation never delays a callback.
    ``wake`` tells the pool's claimer that a claim may find more than its last:
    a delivery was queued, or a full pool, organisation or host has room again.
    """

    kind: str
    workers: int
    per_organisation: int
    per_host: int | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    organisations: SlotCounter[str] = field(init=False)
    hosts: SlotCounter[tuple[str, str]] | None = field(init=False)
    running: int = field(default=0, init=False)
    #: A claim is on its way to the database with the counts as they were; a slot
    #: freed meanwhile may let the next claim take more.
    claiming: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        limit = organisation_limit(self.per_organisation, self.workers)
        self.organisations = SlotCounter(limit, self.wake.set)
        # A host is counted per organisation: one organisation's traffic to a shared
        # receiving host must not hold back another's.
        self.hosts = None if self.per_host is None else SlotCounter(self.per_host, self.wake.set)

    def room(self) -> int:
        """How many more deliveries the pool's workers can take on now."""
        return self.workers - self.running

    def hosts_in_flight(self) -> dict[tuple[str, str], int]:
        return {} if self.hosts is None else self.hosts.in_flight()

    def host_limit(self) -> int:
        """Most deliveries to one (organisation, host); an organisation's limit when hosts
        are not counted."""
        return self.organisations.limit if self.hosts is None else self.hosts.limit

    def has_room(self, org_id: str, host: str | None) -> bool:
        """Whether the organisation (and its host) could take another delivery now."""
        if self.hosts is not None and host is not None and not self.hosts.has_room((org_id, host)):
            return False
        return self.organisations.has_room(org_id)

    def take(self, org_id: str, host: str | None) -> None:
        """Count a claimed delivery against the workers and its organisation (and host)."""
        self.running += 1
        self.organisations.take(org_id)
        if self.hosts is not None and host is not None:
            self.hosts.take((org_id, host))

    def give_back(self, org_id: str, host: str | None) -> None:
        """The delivery's attempt is over: free its slots."""
        if self.hosts is not None and host is not None:
            self.hosts.give_back((org_id, host))
        self.organisations.give_back(org_id)
        self.running -= 1
        if self.running == self.workers - 1 or self.claiming:
            self.wake.set()

"""Throttling of sign-in attempts: business users' logins and API clients' token requests.

Attempts are counted by who tries from where: an address with the e-mail
address or client id it tries, and the address alone with a larger allowance.
So a stranger guessing a known e-mail address slows down only their own
attempts at it, never the user's from anywhere else, while one address
guessing many accounts is slowed down too. Each key has a few free attempts;
after those, each attempt must wait twice as long after the one before (1 s,
2 s, 4 s, ...) up to a longest wait, and a key left alone for that long starts
afresh. An attempt is counted *before* its secret is checked, under the key's
row lock, so guesses sent at once on several replicas cannot slip past.

The address is the peer's, or the one a trusted proxy names
(``TRUSTED_PROXIES``); behind a proxy that is not trusted, every attempt seems
to come from the proxy and shares its allowance.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import asyncpg

from services.rules import sign_in_repository

#: How many idle keys a new key's first attempt clears away, keeping the table small.
PURGED_PER_NEW_KEY = 100
#: The suffix of the scopes that count an address alone (``login-ip``, ``token-ip``).
ADDRESS_SCOPE = "-ip"


@dataclass(frozen=True)
class Throttle:
    """How many attempts a key gets freely, and the longest any attempt waits."""

    free_attempts: int
    longest_wait_seconds: float

    def wait_after(self, attempts: int) -> float:
        """Seconds the next attempt must wait after the last of ``attempts``."""
        beyond = attempts - self.free_attempts
        if beyond < 0:
            return 0.0
        return min(2.0 ** min(beyond, 62), self.longest_wait_seconds)


@dataclass(frozen=True)
class Key:
    """One counter: its scope (``login``, ``login-ip``, ``token``, ``token-ip``), its key
    within the scope and the throttle that applies to it."""

    scope: str
    key: str
    throttle: Throttle


class Waiting:
    """The addresses this process told to wait, and until when, so that their next
    attempts are refused before any database work.

    Under a flood of wrong secrets from one address every refusal was still a
    transaction on its throttle row, and 40 callers kept the pool and the event
    loop busy enough to stall the JWKS for seconds. The database stays the judge:
    this only repeats sooner a refusal it gave, until the wait it named is over.
    Only address-alone keys are kept, never an address with an account: that one
    starts afresh when its user signs in, possibly on another replica.
    """

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._until: dict[tuple[str, str], float] = {}

    def must_wait(self, scope: str, address: str | None) -> int | None:
        """The whole seconds the address must still wait in ``scope``, or None."""
        until = self._until.get((scope, address or "unknown"))
        if until is None:
            return None
        left = until - time.monotonic()
        if left <= 0:
            del self._until[scope, address or "unknown"]
            return None
        return max(1, math.ceil(left))

    def note(self, key: Key, seconds: float) -> None:
        if len(self._until) >= self.limit:
            now = time.monotonic()
            self._until = {k: until for k, until in self._until.items() if until > now}
            if len(self._until) >= self.limit:
                self._until.clear()
        self._until[key.scope, key.key] = time.monotonic() + seconds


async def take_attempt(
    connection: asyncpg.Connection, keys: list[Key], waiting: Waiting | None = None
) -> int | None:
    """Count one attempt against every key, in one transaction; None when it may go
    ahead, else the whole seconds to wait (and nothing is counted). Address-alone
    keys told to wait are noted in ``waiting``.

    Its own transaction, not the caller's: the attempt must count even when the sign-in
    it is for then fails (see ``accounts.log_in``)."""
    async with connection.transaction():
        counts: list[int] = []
        waits: list[float] = []
        for key in keys:
            if await sign_in_repository.add_sign_in_key(connection, key.scope, key.key):
                await sign_in_repository.purge_idle_sign_in_keys(
                    connection, key.throttle.longest_wait_seconds
                )
            counter = await sign_in_repository.sign_in_key_for_update(
                connection, key.scope, key.key
            )
            idle = counter.idle_seconds
            attempts = 0 if idle >= key.throttle.longest_wait_seconds else counter.attempts
            waits.append(key.throttle.wait_after(attempts) - idle)
            counts.append(attempts + 1)
        wait = max(waits)
        if wait > 0:
            if waiting is not None:
                for key, key_wait in zip(keys, waits, strict=True):
                    if key.scope.endswith(ADDRESS_SCOPE) and key_wait > 0:
                        waiting.note(key, key_wait)
            return max(1, math.ceil(wait))
        for key, count in zip(keys, counts, strict=True):
            await sign_in_repository.count_sign_in_attempt(connection, key.scope, key.key, count)
    return None


async def succeeded(connection: asyncpg.Connection, keys: list[Key]) -> None:
    """After a successful sign-in: the tried account's key starts afresh, and the
    address alone gets its attempt back (colleagues behind one address share it)."""
    personal, *address = keys
    await sign_in_repository.forget_sign_in_key(connection, personal.scope, personal.key)
    for key in address:
        await sign_in_repository.give_back_sign_in_attempt(connection, key.scope, key.key)


def keys_for(
    kind: str, address: str | None, subject: str, personal: Throttle, per_address: Throttle
) -> list[Key]:
    """The counters of one attempt of ``kind`` (``login`` or ``token``) at ``subject``
    (an e-mail address, lower case, or a client id) from ``address``."""
    where = address or "unknown"
    return [
        Key(kind, f"{where} {subject}", personal),
        Key(f"{kind}{ADDRESS_SCOPE}", where, per_address),
    ]

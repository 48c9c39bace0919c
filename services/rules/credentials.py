"""Secrets and passwords: argon2 hashes, checked off the event loop, and the throttles
that business users' logins and API clients' token requests count against."""

from __future__ import annotations

import asyncio
import os
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import asyncpg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from infra.logging import get_logger
from infra.problems import Problem
from services.rules import throttle
from services.rules.settings import RulesSettings
from services.rules.throttle import Throttle

log = get_logger(__name__)

hasher = PasswordHasher()  # argon2id with the library's current recommended cost


class TooManySignInAttempts(Problem):
    status = 429
    code = "TOO_MANY_LOGIN_ATTEMPTS"

    def __init__(self, retry_after: int, what: str) -> None:
        super().__init__(
            f"too many failed {what} from this address; try again in {retry_after} seconds",
            headers={"Retry-After": str(retry_after)},
            retryAfter=retry_after,
        )
        self.retry_after = retry_after


#: Argon2 checks run in these threads (argon2 releases the GIL), never on the event
#: loop: a flood of wrong secrets queues here while the JWKS, the console and
#: every other request are still served. At most this many are checked at once.
_HASH_CHECKS = ThreadPoolExecutor(
    max_workers=max(2, (os.cpu_count() or 2) // 2), thread_name_prefix="argon2"
)


def _verify_hash(hash_: str | None, secret: str) -> bool:
    if not hash_:
        return False
    try:
        return hasher.verify(hash_, secret)
    except (VerificationError, InvalidHashError):
        return False


async def verify_secret(hash_: str | None, secret: str) -> bool:
    """Whether ``secret`` matches ``hash_``, checked off the event loop."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_HASH_CHECKS, _verify_hash, hash_, secret)


#: What an unknown account's secret is checked against, so the answer takes as long.
DUMMY_HASH = hasher.hash(secrets.token_urlsafe(16))


@dataclass(frozen=True)
class SignInThrottles:
    """The throttles of business users' logins and API clients' token requests: one
    for an address trying one account, one for the address alone; and the addresses
    this process told to wait."""

    login: Throttle
    login_address: Throttle
    token: Throttle
    token_address: Throttle
    waiting: throttle.Waiting = field(default_factory=throttle.Waiting)

    def refuse_if_waiting(self, kind: str, address: str | None, what: str) -> None:
        """Refuse an attempt of ``kind`` (``login`` or ``token``) at once, before any
        database work, while its address must still wait."""
        wait = self.waiting.must_wait(f"{kind}{throttle.ADDRESS_SCOPE}", address)
        if wait is not None:
            raise TooManySignInAttempts(wait, what)

    @classmethod
    def of(
        cls, settings: RulesSettings, waiting: throttle.Waiting | None = None
    ) -> SignInThrottles:
        longest = float(settings.login_throttle_window_seconds)
        return cls(
            Throttle(settings.login_max_attempts_per_email, longest),
            Throttle(settings.login_max_attempts_per_ip, longest),
            Throttle(settings.token_max_attempts_per_client, longest),
            Throttle(settings.token_max_attempts_per_ip, longest),
            waiting or throttle.Waiting(),
        )


async def count_or_refuse_attempt(
    connection: asyncpg.Connection,
    keys: list[throttle.Key],
    throttles: SignInThrottles,
    what: str,
    event: str,
    **logged: str | None,
) -> None:
    """Count a sign-in attempt, or log ``event`` and refuse it when it must wait."""
    wait = await throttle.take_attempt(connection, keys, throttles.waiting)
    if wait is not None:
        log.info(event, **logged)
        raise TooManySignInAttempts(wait, what)

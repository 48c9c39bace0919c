"""Rate limits: each client's token bucket, kept in PostgreSQL so that it holds across
replicas (see :mod:`services.trigger.admission`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import asyncpg

from infra.problems import Problem
from services.trigger import repository


class RateLimited(Problem):
    status = 429
    code = "RATE_LIMITED"


@dataclass(frozen=True)
class RateLimit:
    """The outcome of taking a token from a client's bucket, and the bucket after it."""

    granted: bool
    tokens: float
    per_second: float
    burst: int

    @property
    def remaining(self) -> int:
        return max(0, math.floor(self.tokens))

    @property
    def reset_seconds(self) -> int:
        """Seconds until the bucket is full again."""
        return max(0, math.ceil((self.burst - self.tokens) / self.per_second))

    @property
    def retry_after_seconds(self) -> int:
        """Seconds until the next token (at least 1, as Retry-After counts whole seconds)."""
        return max(1, math.ceil((1 - self.tokens) / self.per_second))


def rate_limit_headers(limit: RateLimit) -> dict[str, str]:
    return {
        "RateLimit-Limit": str(limit.burst),
        "RateLimit-Remaining": str(limit.remaining),
        "RateLimit-Reset": str(limit.reset_seconds),
    }


async def set_client_rate_limit(
    connection: asyncpg.Connection, client_id: str, *, per_second: float, burst: int
) -> None:
    """Give one client its own limit instead of the settings' default; applies at once."""
    if per_second <= 0 or burst < 1:
        raise ValueError("a rate limit needs per_second > 0 and burst >= 1")
    await repository.set_client_rate_limit(connection, client_id, per_second, burst)

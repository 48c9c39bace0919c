"""Rate limits: each client's token bucket, kept in PostgreSQL so that it holds across
replicas (see :mod:`services.trigger.admission`), and what an answer tells the client
about it.

The fields follow draft-ietf-httpapi-ratelimit-headers (its working group's text
as of -10; -12 is the current draft). ``RateLimit-Policy`` names a quota policy
as a Structured Field (RFC 9651) List of Items: a String with an Integer quota
``q`` and window ``w`` in seconds. ``RateLimit`` gives the same policy's state:
``r`` quota units remaining and ``t`` seconds until more quota is made
available. Requests are the quota unit, the draft's default, so ``qu`` is left
out; and a client's own bucket is the partition, so no ``pk`` is needed.

A token bucket has no window: it refills continuously at ``per_second`` tokens a
second up to ``burst``. What maps onto the draft's terms without overstating
anything:

- ``q`` is the burst: the requests a full bucket lets through at once.
- ``w`` is the time an empty bucket takes to fill, ``burst / per_second``,
  rounded up to whole seconds (at least 1, since the draft has no shorter
  window). ``q / w`` is then the refill rate or a little under it, so a client
  that never sends more than ``q`` requests in any ``w`` seconds is never
  refused for its rate.
- ``r`` is the whole tokens left, and ``t`` the seconds until the next whole
  token (rounded up; 0 when the bucket is full). It is not the time until the
  bucket is full, because the draft's ``t`` is when *additional* quota comes,
  and because a 429's ``Retry-After`` (the next token) must not come earlier
  than ``t``: on a 429 the two are equal.

The early drafts' ``RateLimit-Limit`` (the burst), ``RateLimit-Remaining`` (as
``r``) and ``RateLimit-Reset`` (seconds until the bucket is full) are still sent
for clients written against them; they are deprecated and go in release 0.2.0.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import asyncpg

from infra.problems import Problem
from services.trigger import repository

#: The one quota policy a client's answers describe: its bucket.
POLICY = "burst"

#: The largest Integer a Structured Field may carry (RFC 9651 §3.3.1: 15 digits).
LARGEST_SF_INTEGER = 999_999_999_999_999


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
        return whole_seconds((self.burst - self.tokens) / self.per_second)

    @property
    def retry_after_seconds(self) -> int:
        """Seconds until the next token (at least 1, as Retry-After counts whole seconds)."""
        return max(1, whole_seconds((1 - self.tokens) / self.per_second))

    @property
    def window_seconds(self) -> int:
        """The policy's window: seconds an empty bucket takes to fill (at least 1)."""
        return max(1, whole_seconds(self.burst / self.per_second))

    @property
    def next_token_seconds(self) -> int:
        """Seconds until the bucket holds one more whole token; 0 when it is full."""
        if self.tokens >= self.burst:
            return 0
        return whole_seconds((self.remaining + 1 - self.tokens) / self.per_second)


def whole_seconds(seconds: float) -> int:
    """``seconds`` rounded up, never negative and never past what a field can carry."""
    return math.ceil(min(max(0.0, seconds), LARGEST_SF_INTEGER))


def rate_limit_headers(limit: RateLimit) -> dict[str, str]:
    """The fields an answer carries about the token its request took (module docstring)."""
    return {
        "RateLimit-Policy": sf_item(POLICY, q=limit.burst, w=limit.window_seconds),
        "RateLimit": sf_item(POLICY, r=limit.remaining, t=limit.next_token_seconds),
        # Deprecated: the early drafts' fields, sent until release 0.2.0.
        "RateLimit-Limit": str(limit.burst),
        "RateLimit-Remaining": str(limit.remaining),
        "RateLimit-Reset": str(limit.reset_seconds),
    }


# Structured Fields (RFC 9651), only as much as the fields above need: an Item
# whose value is a String and whose parameters are Integers.
SF_KEY = re.compile(r"[a-z*][a-z0-9_.*-]*")


def sf_item(value: str, **parameters: int) -> str:
    """A String Item with Integer parameters, in the order given (§4.1.3)."""
    return sf_string(value) + "".join(
        f";{sf_key(key)}={sf_integer(number)}" for key, number in parameters.items()
    )


def sf_string(value: str) -> str:
    """A String (§4.1.6): printable ASCII only, in quotes, with ``"`` and ``\\`` escaped."""
    if not all(" " <= character <= "~" for character in value):
        raise ValueError(f"a Structured Field String holds printable ASCII only: {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def sf_integer(value: int) -> str:
    """An Integer (§4.1.4): at most 15 digits."""
    if isinstance(value, bool) or not -LARGEST_SF_INTEGER <= value <= LARGEST_SF_INTEGER:
        raise ValueError(f"not a Structured Field Integer: {value!r}")
    return str(value)


def sf_key(key: str) -> str:
    """A parameter's key (§4.1.1.3): a lowercase letter or ``*``, then a-z 0-9 _ - . *."""
    if not SF_KEY.fullmatch(key):
        raise ValueError(f"not a Structured Field key: {key!r}")
    return key


async def set_client_rate_limit(
    connection: asyncpg.Connection, client_id: str, *, per_second: float, burst: int
) -> None:
    """Give one client its own limit instead of the settings' default; applies at once."""
    if per_second <= 0 or burst < 1:
        raise ValueError("a rate limit needs per_second > 0 and burst >= 1")
    await repository.set_client_rate_limit(connection, client_id, per_second, burst)

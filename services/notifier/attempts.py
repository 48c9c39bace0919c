"""One delivery attempt: what it came to, and when the next one is due."""

from __future__ import annotations

import random
from dataclasses import dataclass

JITTER = 0.1


@dataclass(frozen=True)
class AttemptOutcome:
    """What one attempt came to: an HTTP status or SMTP reply code, and what went wrong.

    Both protocols say success with a 2xx code. ``permanent`` failures are
    never retried.
    """

    status_code: int | None
    error: str | None
    permanent: bool = False

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def retry_delay(schedule: tuple[float, ...], attempts_made: int) -> float | None:
    """Seconds until the next attempt after ``attempts_made`` failed ones; None to park.

    Each delay is jittered by ±10% so that callbacks failing together (a
    receiver's outage) do not all come back in the same instant.
    """
    if attempts_made > len(schedule):
        return None
    delay = schedule[attempts_made - 1]
    return delay * random.uniform(1 - JITTER, 1 + JITTER)

"""What every area of the rules service shares: the environments, new ids, the
clock, and the problems a missing or clashing record gives.

The service's logic lives in one module per area: ``accounts`` (organisations and
business users), ``credentials`` (hashed secrets and sign-in throttles), ``clients``
(API clients), ``tokens`` (the token issuer), ``rules``, ``sharing`` and ``audit``.
Their functions take an open asyncpg connection; the caller (an HTTP route or a CLI
command) owns the transaction, so a state change, its audit line and its outbox event
commit together or not at all.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from infra.problems import Problem

ENVIRONMENTS = ("staging", "production")


class NotFound(Problem):
    status = 404
    code = "NOT_FOUND"


class Conflict(Problem):
    status = 409
    code = "CONFLICT"


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def now() -> datetime:
    return datetime.now(UTC)

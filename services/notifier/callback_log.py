"""A business's callback log: its organisation's callbacks, and replaying parked ones.

Operators see every organisation's deliveries (``operator_actions``); a business
user sees only its own organisation's callbacks, so that it and its partners can
find out why callbacks fail, and its admins and editors may send a parked one
again once the receiver is fixed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from infra.logging import get_logger
from infra.problems import Problem
from infra.storable import BIGINT_MAX
from infra.tokens import Principal
from services.notifier import repository

log = get_logger(__name__)

#: Every status a callback can have; the log shows these unless asked for fewer.
CALLBACK_STATUSES = ("pending", "delivered", "parked", "failed")


class Forbidden(Problem):
    status = 403
    code = "FORBIDDEN"


@dataclass(frozen=True)
class CallbackPage:
    """A page of callbacks, newest first; ``next_before`` is where the next one starts."""

    items: list[dict[str, Any]]
    next_before: int | None


def require_business_user(principal: Principal) -> None:
    """The callback log is read by the organisation's business users, not its API clients."""
    if principal.kind != "user":
        raise Forbidden("the callback log is for the organisation's business users")


def require_editor(principal: Principal) -> None:
    """Only the organisation's admins and editors may send a callback again."""
    require_business_user(principal)
    if principal.role not in ("admin", "editor"):
        raise Forbidden("viewers cannot replay callbacks", code="READ_ONLY_ROLE")


async def list_callbacks(
    executor: repository.Executor,
    principal: Principal,
    *,
    kind: str | None = None,
    client_id: str | None,
    status: str | None,
    before: int | None,
    limit: int,
) -> CallbackPage:
    """The principal's organisation's callbacks (``client_id``'s only, when given; another
    organisation's client has none here), newest first, ``limit`` at a time. The log
    holds callbacks only: asked for another ``kind``, it is empty."""
    require_business_user(principal)
    if kind not in (None, "callback"):
        return CallbackPage(items=[], next_before=None)
    rows = await repository.callback_log(
        executor,
        principal.org_id,
        client_id=client_id,
        statuses=CALLBACK_STATUSES if status is None else (status,),
        before_id=BIGINT_MAX if before is None else before,
        limit=limit + 1,
    )
    page = rows[:limit]
    return CallbackPage(
        # The URL stays with the operators: its query may hold the receiver's credentials.
        items=[{**row, "url": None, "notification_id": None, "recipients": None} for row in page],
        next_before=page[-1]["id"] if len(rows) > limit else None,
    )


async def replay_parked_callback(
    executor: repository.Executor, principal: Principal, delivery_id: int
) -> bool:
    """Queue the organisation's parked callback again with a fresh schedule; False when
    the organisation has no parked callback of that id."""
    require_editor(principal)
    replayed = await repository.replay_parked_callback_of_organisation(
        executor, delivery_id, principal.org_id
    )
    if replayed:
        log.info(
            "delivery.replayed",
            delivery_id=delivery_id,
            org_id=principal.org_id,
            user_id=principal.subject,
            role=principal.role,
        )
    return replayed

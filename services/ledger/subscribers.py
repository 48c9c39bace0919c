"""Kafka handlers of the ledger: thin, they parse and hand over to applying and clients."""

from __future__ import annotations

import asyncio

from contracts import (
    CLIENTS_LIFECYCLE,
    LEDGER_MEMBERS_GROUP,
    LEDGER_USERS_GROUP,
    MEMBERS_LIFECYCLE,
    POINTS_REQUESTED,
    USERS_LIFECYCLE,
    ClientLifecycleEvent,
    MemberLifecycleEvent,
    PointsRequestedEvent,
    UserLifecycleEvent,
)
from infra.consumers import environment_from_member_key
from infra.runtime import ServiceRuntime
from infra.user_standing import project_users
from services.ledger.applying import apply_batch, fail_quarantined_request, members_apart
from services.ledger.clients import project_clients
from services.ledger.members import project_members
from services.ledger.settings import LedgerSettings

GROUP = "ledger"
CLIENTS_GROUP = "ledger.clients"
MEMBERS_GROUP = LEDGER_MEMBERS_GROUP
USERS_GROUP = LEDGER_USERS_GROUP


def register_subscribers(runtime: ServiceRuntime, settings: LedgerSettings) -> None:
    """Attach the ledger's handlers to the runtime's broker, a consumer group per environment."""

    async def apply_points_requests(events: list[PointsRequestedEvent]) -> None:
        """Apply a batch of points requests; offsets are committed only after it commits.

        Its parts (``batch_parts``, no member in common) are applied at the same time,
        each in its own transaction; every part is waited for, and if one failed the
        batch fails: the parts that committed are then known to the inbox and change
        nothing when the batch, or a part of it, is applied again.
        """
        parts = members_apart(events, settings.batch_parts)
        outcomes = await asyncio.gather(
            *(runtime.in_transaction(apply_batch, part) for part in parts),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    runtime.consume(
        {POINTS_REQUESTED: PointsRequestedEvent},
        group_id=GROUP,
        handler=apply_points_requests,
        environment_of=environment_from_member_key,
        on_quarantine=fail_quarantined_request,
        max_records=settings.batch_max_records,
        session_timeout_ms=settings.consumer_session_timeout_ms
        or settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=settings.consumer_heartbeat_interval_ms
        or settings.kafka_heartbeat_interval_ms,
        description="Applies accepted earn and redeem requests to the ledger, one "
        "PostgreSQL transaction per part of a batch (parts have no member in common); "
        "results go out through the outbox. A request that cannot be applied is "
        "quarantined and settled as failed (`PROCESSING_FAILED`).",
    )

    runtime.consume(
        {CLIENTS_LIFECYCLE: ClientLifecycleEvent},
        group_id=CLIENTS_GROUP,
        handler=runtime.transactional(project_clients),
        by_environment=False,
        description="Keeps which API clients are revoked, so the read API refuses a revoked "
        "client's token at once rather than when it expires.",
    )

    runtime.consume(
        {MEMBERS_LIFECYCLE: MemberLifecycleEvent},
        group_id=MEMBERS_GROUP,
        handler=runtime.transactional(project_members),
        environment_of=environment_from_member_key,
        description="Keeps which members their business blocked, on the members' accounts, so "
        "every request for a blocked member applied from then on is rejected (`MEMBER_BLOCKED`).",
    )

    runtime.consume(
        {USERS_LIFECYCLE: UserLifecycleEvent},
        group_id=USERS_GROUP,
        handler=runtime.transactional(project_users),
        by_environment=False,
        description="Keeps which business users were removed, and each one's role now, so the "
        "read API refuses a removed user's token at once and judges a demoted one by the new "
        "role rather than the token's.",
    )

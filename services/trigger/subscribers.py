"""Kafka handlers of the trigger gateway: thin, one transaction per batch."""

from __future__ import annotations

import asyncpg

from contracts import (
    CLIENTS_LIFECYCLE,
    GATEWAY_PROJECTED_TOPICS,
    GATEWAY_PROJECTION_GROUP,
    MEMBERS_LIFECYCLE,
    POINTS_RESULTS,
    RULES_LIFECYCLE,
    ClientLifecycleEvent,
    MemberLifecycleEvent,
    PointsResultEvent,
    RuleLifecycleEvent,
)
from infra.consumers import environment_from_member_key
from infra.runtime import ServiceRuntime
from services.trigger import settlement
from services.trigger.projections import LifecycleEvent, project

PROJECTION_GROUP = GATEWAY_PROJECTION_GROUP
RESULTS_GROUP = "trigger.results"
PROJECTED_TOPICS = GATEWAY_PROJECTED_TOPICS


def register_subscribers(runtime: ServiceRuntime) -> None:
    """Attach the gateway's handlers to the runtime's broker."""

    async def project_lifecycle(
        connection: asyncpg.Connection, events: list[LifecycleEvent]
    ) -> None:
        for event in events:
            await project(connection, event)

    projected: dict[str, type[LifecycleEvent]] = {
        RULES_LIFECYCLE: RuleLifecycleEvent,
        CLIENTS_LIFECYCLE: ClientLifecycleEvent,
        MEMBERS_LIFECYCLE: MemberLifecycleEvent,
    }
    assert set(projected) == set(PROJECTED_TOPICS)  # the rules service waits on all of them
    runtime.consume(
        projected,
        group_id=PROJECTION_GROUP,
        handler=runtime.transactional(project_lifecycle),
        # One projection for both environments: /readyz waits for it, and its traffic
        # is what business users and operators do, not what partners send.
        by_environment=False,
        description="Keeps the gateway's rule, client and member-standing projections. "
        "Upserts are versioned, so a replay from the beginning is safe; a revoked client and "
        "a blocked member are refused at once.",
    )

    async def settle_results(
        connection: asyncpg.Connection, events: list[PointsResultEvent]
    ) -> None:
        await settlement.settle_results(connection, events)

    runtime.consume(
        {POINTS_RESULTS: PointsResultEvent},
        group_id=RESULTS_GROUP,
        handler=runtime.transactional(settle_results),
        environment_of=environment_from_member_key,
        description="Settles requests with the ledger's outcome; frees caps on rejection, and "
        "what a reversal moved back. An expiry (`points.expired`) is ignored: it settles "
        "nothing and frees no cap. One transaction per batch.",
    )

"""Kafka handlers of the rules service: thin, one transaction per batch."""

from __future__ import annotations

from contracts import POINTS_RESULTS, PointsResultEvent
from infra.consumers import environment_from_member_key
from infra.runtime import ServiceRuntime
from services.rules import rules

USAGE_GROUP = "rules.usage"


def register_subscribers(runtime: ServiceRuntime) -> None:
    """Subscribe the rules service to points results, a consumer group per environment."""
    runtime.consume(
        {POINTS_RESULTS: PointsResultEvent},
        group_id=USAGE_GROUP,
        handler=runtime.transactional(rules.record_usages),
        environment_of=environment_from_member_key,
        description="Counts the points each rule has moved (applied, less what reversals "
        "moved back), so its cap cannot be lowered below them. De-duplicated through the inbox; "
        "one transaction per batch.",
    )

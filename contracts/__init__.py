"""Every Kafka topic name and event schema of the points platform.

Services import their messages from here and nowhere else, so a change to a
message is a change to this package, seen in review and caught by the schema
drift check (`python -m contracts.export --check`).
"""

from typing import Any

from contracts.clients_lifecycle import (
    ClientLifecycleEvent,
    ClientLifecycleType,
    ClientRateLimit,
    ClientSnapshot,
    ClientStatus,
)
from contracts.envelope import ContractModel, Environment, EventEnvelope
from contracts.invitations_requested import (
    InvitationEmailRequested,
    InvitationEmailRequestedEvent,
    InvitationEmailRequestedType,
)
from contracts.members_lifecycle import (
    MemberLifecycleEvent,
    MemberLifecycleType,
    MemberStanding,
)
from contracts.notifications_requested import (
    EmailAddress,
    ShareEmailRequested,
    ShareEmailRequestedEvent,
    ShareEmailRequestedType,
)
from contracts.points_requested import (
    PointsRequested,
    PointsRequestedEvent,
    PointsRequestedType,
    member_key,
)
from contracts.points_results import (
    PointsResult,
    PointsResultEvent,
    PointsResultStatus,
    PointsResultType,
)
from contracts.rules_lifecycle import (
    RuleLifecycleEvent,
    RuleLifecycleType,
    RuleSnapshot,
    RuleStatus,
    RuleType,
)
from contracts.topics import (
    ALL_TOPICS,
    CLIENTS_LIFECYCLE,
    DEAD_LETTER_TOPICS,
    GATEWAY_PROJECTED_TOPICS,
    GATEWAY_PROJECTION_GROUP,
    INVITATIONS_REQUESTED,
    LEDGER_MEMBERS_GROUP,
    LEDGER_USERS_GROUP,
    MEMBERS_LIFECYCLE,
    NOTIFICATIONS_REQUESTED,
    NOTIFIER_USERS_GROUP,
    POINTS_REQUESTED,
    POINTS_RESULTS,
    RULES_LIFECYCLE,
    TOPICS_TO_CREATE,
    USERS_LIFECYCLE,
    TopicSpec,
    dead_letter_topic,
    environment_group,
)
from contracts.users_lifecycle import (
    USERS_ENVIRONMENT,
    UserLifecycleEvent,
    UserLifecycleType,
    UserRole,
    UserStanding,
)

# Topic name -> the one event class its messages parse into.
EVENT_TYPES: dict[str, type[EventEnvelope[Any]]] = {
    event.TOPIC: event
    for event in (
        RuleLifecycleEvent,
        ClientLifecycleEvent,
        MemberLifecycleEvent,
        PointsRequestedEvent,
        PointsResultEvent,
        ShareEmailRequestedEvent,
        UserLifecycleEvent,
        InvitationEmailRequestedEvent,
    )
}

__all__ = [
    "ALL_TOPICS",
    "CLIENTS_LIFECYCLE",
    "DEAD_LETTER_TOPICS",
    "EVENT_TYPES",
    "GATEWAY_PROJECTED_TOPICS",
    "GATEWAY_PROJECTION_GROUP",
    "INVITATIONS_REQUESTED",
    "LEDGER_MEMBERS_GROUP",
    "LEDGER_USERS_GROUP",
    "MEMBERS_LIFECYCLE",
    "NOTIFICATIONS_REQUESTED",
    "NOTIFIER_USERS_GROUP",
    "POINTS_REQUESTED",
    "POINTS_RESULTS",
    "RULES_LIFECYCLE",
    "TOPICS_TO_CREATE",
    "USERS_ENVIRONMENT",
    "USERS_LIFECYCLE",
    "ClientLifecycleEvent",
    "ClientLifecycleType",
    "ClientRateLimit",
    "ClientSnapshot",
    "ClientStatus",
    "ContractModel",
    "EmailAddress",
    "Environment",
    "EventEnvelope",
    "InvitationEmailRequested",
    "InvitationEmailRequestedEvent",
    "InvitationEmailRequestedType",
    "MemberLifecycleEvent",
    "MemberLifecycleType",
    "MemberStanding",
    "PointsRequested",
    "PointsRequestedEvent",
    "PointsRequestedType",
    "PointsResult",
    "PointsResultEvent",
    "PointsResultStatus",
    "PointsResultType",
    "RuleLifecycleEvent",
    "RuleLifecycleType",
    "RuleSnapshot",
    "RuleStatus",
    "RuleType",
    "ShareEmailRequested",
    "ShareEmailRequestedEvent",
    "ShareEmailRequestedType",
    "TopicSpec",
    "UserLifecycleEvent",
    "UserLifecycleType",
    "UserRole",
    "UserStanding",
    "dead_letter_topic",
    "environment_group",
    "member_key",
]

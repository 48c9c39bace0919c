"""Every Kafka topic of the platform, with its key and how it is laid out."""

from dataclasses import dataclass

RULES_LIFECYCLE = "rules.lifecycle.v1"
CLIENTS_LIFECYCLE = "clients.lifecycle.v1"
MEMBERS_LIFECYCLE = "members.lifecycle.v1"
POINTS_REQUESTED = "points.requested.v1"
POINTS_RESULTS = "points.results.v1"
NOTIFICATIONS_REQUESTED = "notifications.requested.v1"
USERS_LIFECYCLE = "users.lifecycle.v1"
INVITATIONS_REQUESTED = "notifications.invitations.v1"

DEAD_LETTER_SUFFIX = ".dlq"

#: The trigger gateway's consumer group for the two lifecycle topics. The rules service
#: answers a change once this group has consumed it, so a trigger sent next is judged
#: on it (read your writes); that makes the name part of the contract between them.
GATEWAY_PROJECTION_GROUP = "trigger.projection"
#: The topics that group projects: a change on any of them is answered once it has them.
GATEWAY_PROJECTED_TOPICS = (RULES_LIFECYCLE, CLIENTS_LIFECYCLE, MEMBERS_LIFECYCLE)
#: The ledger's consumer group for ``members.lifecycle.v1``, one per environment
#: (``ledger.members.<environment>``). The ledger rejects a blocked member's requests on
#: what it consumed, so the rules service answers a block or an unblock once this group
#: has it too: a trigger accepted right after an unblock is not then failed by the ledger.
LEDGER_MEMBERS_GROUP = "ledger.members"
#: The ledger's consumer group for ``users.lifecycle.v1``. The ledger refuses a removed
#: business user's tokens on what it consumed, so the rules service answers a removal
#: (or a change of role) once this group has it.
LEDGER_USERS_GROUP = "ledger.users"
#: The notifier's, for the same reason: it lets business users read their callback log.
NOTIFIER_USERS_GROUP = "notifier.users"


def environment_group(group_id: str, environment: str | None) -> str:
    """The consumer group that consumes ``environment``'s messages for ``group_id``
    (``<group_id>.<environment>``); ``group_id`` itself for every environment (None)."""
    return group_id if environment is None else f"{group_id}.{environment}"


def dead_letter_topic(topic: str) -> str:
    """The topic where copies of ``topic``'s quarantined messages go: ``<topic>.dlq``."""
    return f"{topic}{DEAD_LETTER_SUFFIX}"


@dataclass(frozen=True)
class TopicSpec:
    """How one topic is keyed, partitioned and retained."""

    name: str
    key: str
    """What the message key is; it decides which messages keep their order."""
    partitions: int
    compacted: bool
    """Compacted topics keep the latest message per key, so consumers can rebuild by replay."""
    description: str
    retention_ms: int | None = None
    """How long messages are kept; None for the broker's default."""
    segment_ms: int | None = None
    """How long a log segment stays open; None for the broker's default (7 days). Kafka
    deletes whole segments, so a message can outlive ``retention_ms`` by this much: the
    consumers' inboxes keep their rows as long (see ``infra/retention.py``)."""

    def config(self) -> dict[str, str]:
        """Topic-level Kafka configuration to create the topic with."""
        config = {"cleanup.policy": "compact" if self.compacted else "delete"}
        if self.retention_ms is not None:
            config["retention.ms"] = str(self.retention_ms)
        if self.segment_ms is not None:
            config["segment.ms"] = str(self.segment_ms)
        return config


#: How long the event topics (those not compacted) keep a message: seven days, Kafka's
#: own default, said explicitly so that no broker default decides how long the
#: consumers' inboxes must remember an event (decision 0022).
EVENT_RETENTION_MS = 7 * 24 * 3600 * 1000
#: How long their log segments stay open: a message is deleted at most this long after
#: its retention passed, rather than Kafka's default of seven days more.
EVENT_SEGMENT_MS = 24 * 3600 * 1000


#: The topics events are published on, each with its event schema.
ALL_TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(
        name=RULES_LIFECYCLE,
        key="rule id",
        partitions=3,
        compacted=True,
        description=(
            "Full rule snapshot whenever a rule is created, updated, activated, paused or"
            " archived; the trigger gateway rebuilds its rule projection by replaying it."
        ),
    ),
    TopicSpec(
        name=CLIENTS_LIFECYCLE,
        key="client id",
        partitions=3,
        compacted=True,
        description=(
            "API client registered, revoked or its secret rotated; never carries a secret"
            " or a hash of one."
        ),
    ),
    TopicSpec(
        name=MEMBERS_LIFECYCLE,
        key="environment:org id:user id",
        partitions=3,
        compacted=True,
        description=(
            "A member blocked or unblocked by a business user; the trigger gateway refuses"
            " a blocked member's triggers and the ledger rejects their pending requests."
        ),
    ),
    TopicSpec(
        name=POINTS_REQUESTED,
        key="environment:org id:user id",
        partitions=12,
        compacted=False,
        retention_ms=EVENT_RETENTION_MS,
        segment_ms=EVENT_SEGMENT_MS,
        description=(
            "Earn or redeem request accepted by the trigger gateway, for the ledger to apply;"
            " keyed by member so one member's requests stay in order."
        ),
    ),
    TopicSpec(
        name=POINTS_RESULTS,
        key="environment:org id:user id",
        partitions=12,
        compacted=False,
        retention_ms=EVENT_RETENTION_MS,
        segment_ms=EVENT_SEGMENT_MS,
        description=(
            "Outcome of a points request: applied with the balance after, or rejected with"
            " a reason; later, reversed by an operator, or expired. The gateway releases cap"
            " reservations on rejection and reversal; the notifier sends callbacks for"
            " applied and rejected, and for expired to clients that opted in."
        ),
    ),
    TopicSpec(
        name=NOTIFICATIONS_REQUESTED,
        key="rule id",
        partitions=3,
        compacted=False,
        retention_ms=EVENT_RETENTION_MS,
        segment_ms=EVENT_SEGMENT_MS,
        description="Request to email a rule's integration details to third-party developers.",
    ),
    TopicSpec(
        name=USERS_LIFECYCLE,
        key="user id",
        partitions=3,
        compacted=True,
        description=(
            "A business user joined (accepted an invitation), changed role or was removed;"
            " services that accept business users' tokens refuse a removed user's at once."
        ),
    ),
    TopicSpec(
        name=INVITATIONS_REQUESTED,
        key="user id",
        partitions=3,
        compacted=False,
        retention_ms=EVENT_RETENTION_MS,
        segment_ms=EVENT_SEGMENT_MS,
        description=(
            "Request to e-mail an invitation to the console; the link's token travels sealed."
        ),
    ),
)


#: Thirty days: long enough for an operator to notice, fix and replay.
DEAD_LETTER_RETENTION_MS = 30 * 24 * 3600 * 1000


def _dead_letters(source: TopicSpec) -> TopicSpec:
    return TopicSpec(
        name=dead_letter_topic(source.name),
        key=source.key,
        partitions=1,
        compacted=False,
        retention_ms=DEAD_LETTER_RETENTION_MS,
        segment_ms=EVENT_SEGMENT_MS,
        description=(
            f"Copies of the {source.name} messages a consumer quarantined, each with its"
            " original key, bytes and headers and an `x-quarantine` header (consumer,"
            " partition, offset, error). The consuming service's database keeps the same;"
            " `points quarantine replay` sends a message back to its topic."
        ),
    )


#: Dead-letter topics, one per source topic: few messages, kept for operators.
DEAD_LETTER_TOPICS: tuple[TopicSpec, ...] = tuple(map(_dead_letters, ALL_TOPICS))
#: Every topic the platform needs created.
TOPICS_TO_CREATE: tuple[TopicSpec, ...] = ALL_TOPICS + DEAD_LETTER_TOPICS

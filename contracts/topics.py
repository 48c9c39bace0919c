"""Every Kafka topic of the platform, with its key and how it is laid out."""

from dataclasses import dataclass

RULES_LIFECYCLE = "rules.lifecycle.v1"
CLIENTS_LIFECYCLE = "clients.lifecycle.v1"
POINTS_REQUESTED = "points.requested.v1"
POINTS_RESULTS = "points.results.v1"
NOTIFICATIONS_REQUESTED = "notifications.requested.v1"


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

    @property
    def key_description(self) -> str:
        """The same as ``key``: a description of the message key, not a key itself."""
        return self.key

    def config(self) -> dict[str, str]:
        """Topic-level Kafka configuration to create the topic with."""
        return {"cleanup.policy": "compact" if self.compacted else "delete"}


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
        name=POINTS_REQUESTED,
        key="environment:org id:user id",
        partitions=12,
        compacted=False,
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
        description=(
            "Outcome of a points request: applied with the balance after, or rejected with"
            " a reason; later, reversed by an operator. The gateway releases cap reservations"
            " on rejection and reversal; the notifier sends callbacks for applied and rejected."
        ),
    ),
    TopicSpec(
        name=NOTIFICATIONS_REQUESTED,
        key="rule id",
        partitions=3,
        compacted=False,
        description="Request to email a rule's integration details to third-party developers.",
    ),
)

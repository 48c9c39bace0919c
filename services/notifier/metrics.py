"""Delivery metrics, registered into the notifier runtime's Prometheus registry.

Attempts and their send time are counted in this process as they happen.
How many deliveries stand in each status, and how long the oldest pending one
has waited, are read from PostgreSQL when Prometheus scrapes, so every replica
reports the same, true numbers, before and after a restart.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from infra.logging import get_logger
from services.notifier import repository

log = get_logger(__name__)

DeliveryKind = Literal["callback", "email"]
#: ``retry``: the attempt failed and another is scheduled; ``failed``: refused for good.
AttemptOutcomeLabel = Literal["delivered", "retry", "parked", "failed"]

KINDS: tuple[DeliveryKind, ...] = ("callback", "email")
STATUSES = ("pending", "delivered", "parked", "failed")
#: Callbacks time out after ``total_timeout`` (15 s), e-mails after ``smtp_timeout`` (30 s).
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0)


@dataclass(frozen=True)
class DeliveryState:
    """Deliveries by kind and status, and the age of the oldest pending one."""

    counts: dict[tuple[str, str], int]
    oldest_pending_age_seconds: float


class DeliveryStateCollector(Collector):
    """Yields the gauges of the last :class:`DeliveryState` read from the database."""

    def __init__(self) -> None:
        self.state: DeliveryState | None = None

    def collect(self) -> Iterator[Metric]:
        state = self.state
        if state is None:  # the database did not answer this scrape
            return
        deliveries = GaugeMetricFamily(
            "points_notifier_deliveries",
            "Deliveries by kind and status, across all notifier replicas.",
            labels=["kind", "status"],
        )
        for kind in KINDS:
            for status in STATUSES:
                deliveries.add_metric([kind, status], state.counts.get((kind, status), 0))
        yield deliveries
        yield GaugeMetricFamily(
            "points_notifier_oldest_pending_delivery_age_seconds",
            "Seconds since the oldest pending delivery was queued; 0 when none is pending.",
            value=state.oldest_pending_age_seconds,
        )


class DeliveryMetrics:
    """The notifier's delivery metrics, in ``registry`` (the runtime's) or a new one."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._attempts = Counter(
            "points_notifier_delivery_attempts",
            "Delivery attempts by kind and what came of them.",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "points_notifier_delivery_latency_seconds",
            "Time one attempt took to send a callback or an e-mail.",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._state = DeliveryStateCollector()
        self.registry.register(self._state)
        # Series at zero from the start, so a rate() over them needs no first event.
        for kind in KINDS:
            self._latency.labels(kind=kind)
            for outcome in ("delivered", "retry", "parked", "failed"):
                self._attempts.labels(kind=kind, outcome=outcome)

    def count_attempt(self, kind: DeliveryKind, outcome: AttemptOutcomeLabel) -> None:
        self._attempts.labels(kind=kind, outcome=outcome).inc()

    def observe_send(self, kind: DeliveryKind, seconds: float) -> None:
        self._latency.labels(kind=kind).observe(seconds)

    async def refresh(self, pool: asyncpg.Pool) -> None:
        """Read the delivery gauges from the database, before a scrape renders them."""
        try:
            self._state.state = await read_delivery_state(pool)
        except (OSError, asyncpg.PostgresError) as error:
            log.warning("metrics.delivery_state_unavailable", error=str(error))
            self._state.state = None


async def read_delivery_state(pool: asyncpg.Pool) -> DeliveryState:
    counts, oldest = await repository.delivery_state(pool)
    return DeliveryState(counts=counts, oldest_pending_age_seconds=oldest)

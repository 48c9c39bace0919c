"""The Prometheus metrics every service serves at ``GET /metrics``.

Each :class:`ServiceMetrics` has a registry of its own (never the process-wide
default), so several services or test apps in one process keep their counts
apart. Labels are bounded sets: the service, the HTTP method, the route
*template* and the status, the consumer group and the topic.

Some values live elsewhere (the outbox backlog in PostgreSQL, consumer lag in
Kafka) and take network calls to read. Prometheus collectors are synchronous,
so those values are read by async *scrape hooks* that the ``/metrics`` handler
awaits just before it renders, and that store them into gauges.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from infra.catchup import Lag

ScrapeHook = Callable[[], Awaitable[None]]

#: The route label of a request that matched no route (a 404), so unknown paths add no series.
UNMATCHED_ROUTE = "unmatched"


class ServiceMetrics:
    """The metrics of one service process, in a registry of their own."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        self._requests = Counter(
            "points_http_requests",
            "HTTP requests answered, by route template and status.",
            ["service", "method", "route", "status"],
            registry=self.registry,
        )
        self._request_duration = Histogram(
            "points_http_request_duration_seconds",
            "Time from receiving an HTTP request to its response, by route template.",
            ["service", "method", "route"],
            registry=self.registry,
        )
        self._outbox_backlog = Gauge(
            "points_outbox_backlog",
            "Outbox rows committed but not yet published to Kafka (read at scrape time).",
            ["service"],
            registry=self.registry,
        )
        self._outbox_published = Counter(
            "points_outbox_published",
            "Outbox rows this process's relay published to Kafka.",
            ["service"],
            registry=self.registry,
        )
        self._consumer_lag = Gauge(
            "points_consumer_lag",
            "Records on the topic that the consumer group has not committed yet.",
            ["service", "group", "topic"],
            registry=self.registry,
        )
        self._quarantined = Counter(
            "points_quarantined_messages",
            "Messages this process's consumers quarantined (kept with their error for an "
            "operator, and copied to the topic's dead-letter topic), by source topic.",
            ["service", "topic"],
            registry=self.registry,
        )
        self._table_rows = Gauge(
            "points_table_rows",
            "Estimated rows of each table of the service's schema (pg_class.reltuples, as of "
            "the last ANALYZE; read at most every few seconds).",
            ["service", "table"],
            registry=self.registry,
        )
        self._table_bytes = Gauge(
            "points_table_bytes",
            "On-disk size of each table of the service's schema, with its indexes and TOAST "
            "(pg_total_relation_size; read at most every few seconds).",
            ["service", "table"],
            registry=self.registry,
        )
        self._purged = Counter(
            "points_purged_rows",
            "Rows this process's retention purges deleted, by purge (infra/retention.py).",
            ["service", "purge"],
            registry=self.registry,
        )
        self._scrape_hooks: list[ScrapeHook] = []

    def before_scrape(self, hook: ScrapeHook) -> None:
        """Await ``hook`` before each rendering, to read values that live elsewhere.

        A hook that cannot read its value should leave its series out rather
        than raise: one unreachable source must not fail the whole scrape.
        """
        self._scrape_hooks.append(hook)

    async def render(self) -> bytes:
        """The Prometheus text exposition, with the scrape-time values read now."""
        for hook in self._scrape_hooks:
            await hook()
        return generate_latest(self.registry)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self._requests.labels(self.service, method, route, str(status)).inc()
        self._request_duration.labels(self.service, method, route).observe(seconds)

    def start_counting_published(self) -> None:
        """Show the published counter at zero from the start, so rate() needs no first event."""
        self._outbox_published.labels(self.service)

    def count_published(self, rows: int) -> None:
        self._outbox_published.labels(self.service).inc(rows)

    def start_counting_quarantined(self, topic: str) -> None:
        """Show a consumed topic's quarantine counter at zero from the start."""
        self._quarantined.labels(self.service, topic)

    def count_quarantined(self, topic: str) -> None:
        self._quarantined.labels(self.service, topic).inc()

    def set_outbox_backlog(self, rows: int | None) -> None:
        """Record the backlog, or leave the series out when the database did not answer."""
        if rows is None:
            self._outbox_backlog.clear()
        else:
            self._outbox_backlog.labels(self.service).set(rows)

    def set_consumer_lag(self, lag: Lag | None) -> None:
        """Record each group's lag per topic, or leave them out when Kafka did not answer."""
        self._consumer_lag.clear()
        for (group, topic), records in (lag or {}).items():
            self._consumer_lag.labels(self.service, group, topic).set(records)

    def count_purged(self, purge: str, rows: int) -> None:
        self._purged.labels(self.service, purge).inc(rows)

    def set_table_sizes(self, sizes: dict[str, tuple[int, int]] | None) -> None:
        """Record each table's (estimated rows, bytes), or leave them out when the database
        did not answer."""
        self._table_rows.clear()
        self._table_bytes.clear()
        for table, (rows, size) in (sizes or {}).items():
            self._table_rows.labels(self.service, table).set(rows)
            self._table_bytes.labels(self.service, table).set(size)

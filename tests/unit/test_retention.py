"""How long an inbox row must be kept, and where a consumer says its events were read."""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

from aiokafka import ConsumerRecord

from contracts import ALL_TOPICS, RULES_LIFECYCLE, RuleLifecycleEvent
from infra import inbox
from infra.consumers import Consumer
from infra.inbox_retention import (
    LogTime,
    inbox_retention,
    log_time_from_configs,
    planned_log_time,
)
from infra.settings import ServiceSettings
from tests.integration.test_metrics import rule_events

HOUR_MS = 3_600_000
SPECS = {spec.name: spec for spec in ServiceSettings().topics()}


def settings(**values: float) -> ServiceSettings:
    return ServiceSettings(**values)  # type: ignore[arg-type]


class TestTheInboxRetention:
    def test_is_the_topics_log_time_plus_the_outbox_retention_plus_the_margin(self) -> None:
        log_time = LogTime(retention_ms=168 * HOUR_MS, segment_ms=24 * HOUR_MS)

        keep = inbox_retention(
            log_time, settings(outbox_retention_hours=24, inbox_retention_margin_hours=6)
        )

        assert keep == timedelta(hours=168 + 24 + 24 + 6)

    def test_is_for_ever_on_a_compacted_topic(self) -> None:
        assert planned_log_time(SPECS[RULES_LIFECYCLE]).most is None

    def test_is_for_ever_when_the_broker_keeps_messages_for_ever(self) -> None:
        planned = planned_log_time(SPECS["points.requested.v1"])

        read = log_time_from_configs(planned, {"retention.ms": "-1"})

        assert inbox_retention(read, settings()) is None

    def test_follows_what_the_broker_says_over_the_plan(self) -> None:
        planned = planned_log_time(SPECS["points.requested.v1"])

        read = log_time_from_configs(planned, {"retention.ms": str(48 * HOUR_MS)})

        assert read == LogTime(48 * HOUR_MS, 24 * HOUR_MS)

    def test_every_event_topic_has_an_explicit_retention_and_segment_time(self) -> None:
        event_topics = [spec for spec in ALL_TOPICS if not spec.compacted]

        assert all(spec.retention_ms and spec.segment_ms for spec in event_topics)

    def test_the_topic_retention_setting_shortens_the_event_topics_only(self) -> None:
        topics = {spec.name: spec for spec in settings(kafka_topic_retention_hours=1).topics()}

        assert topics["points.results.v1"].config()["retention.ms"] == str(HOUR_MS)
        assert topics["points.results.v1.dlq"].retention_ms == 30 * 24 * HOUR_MS
        assert "retention.ms" not in topics[RULES_LIFECYCLE].config()


class TestAConsumersClaims:
    async def test_know_the_partition_and_offset_each_event_was_read_at(self) -> None:
        events = rule_events(2)
        seen: dict[UUID, tuple[int | None, int | None]] = {}

        async def handler(batch: list[RuleLifecycleEvent]) -> None:
            seen.update({event.event_id: inbox.position_of(event.event_id) for event in batch})

        consumer = Consumer(
            group_id="test",
            models={RULES_LIFECYCLE: RuleLifecycleEvent},
            handler=handler,
            pool=lambda: None,  # type: ignore[arg-type,return-value]
        )

        await consumer.process([record(event, 40 + n) for n, event in enumerate(events)])

        assert seen == {events[0].event_id: (2, 40), events[1].event_id: (2, 41)}
        assert inbox.position_of(events[0].event_id) == (None, None)


def record(event: RuleLifecycleEvent, offset: int) -> ConsumerRecord[bytes, bytes]:
    value = event.model_dump_json().encode()
    return ConsumerRecord(
        topic=RULES_LIFECYCLE,
        partition=2,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=b"rule",
        value=value,
        checksum=None,
        serialized_key_size=4,
        serialized_value_size=len(value),
        headers=[],
    )

"""The hours and days of an activity read (infra.activity)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from infra.activity import (
    MAX_BUCKETS,
    ActivityRangeTooLarge,
    DateWithoutOffset,
    InvalidActivityRange,
    UnknownTimezone,
    activity_window,
    bucket_of,
)

NOON = datetime(2026, 6, 10, 12, 7, tzinfo=UTC)


class TestBucketOf:
    def test_is_the_quarter_hour_of_utc_holding_the_instant(self) -> None:
        assert bucket_of(NOON) == datetime(2026, 6, 10, 12, 0, tzinfo=UTC)
        assert bucket_of(NOON + timedelta(minutes=40)) == datetime(2026, 6, 10, 12, 45, tzinfo=UTC)


class TestActivityWindow:
    def test_by_hour_defaults_to_the_last_24_hours_and_the_current_one(self) -> None:
        window = activity_window(start=None, end=None, granularity="hour", timezone="UTC", now=NOON)

        assert len(window.starts) == 25
        assert window.starts[-1] == datetime(2026, 6, 10, 12, tzinfo=UTC)
        assert window.end == datetime(2026, 6, 10, 13, tzinfo=UTC)

    def test_by_day_starts_at_local_midnight(self) -> None:
        window = activity_window(
            start=NOON, end=NOON + timedelta(days=1), granularity="day", timezone="Europe/Paris"
        )

        assert window.start == datetime(2026, 6, 9, 22, tzinfo=UTC)
        assert len(window.starts) == 2

    def test_a_day_when_daylight_saving_starts_lasts_23_hours(self) -> None:
        window = activity_window(
            start=datetime(2026, 3, 29, 12, tzinfo=UTC),
            end=datetime(2026, 3, 29, 13, tzinfo=UTC),
            granularity="day",
            timezone="Europe/Paris",
        )

        assert window.end - window.start == timedelta(hours=23)

    def test_refuses_an_unknown_timezone(self) -> None:
        with pytest.raises(UnknownTimezone):
            activity_window(start=None, end=None, granularity="day", timezone="Mars/Olympus")

    def test_refuses_a_timezone_name_that_walks_the_file_system(self) -> None:
        with pytest.raises(UnknownTimezone):
            activity_window(start=None, end=None, granularity="day", timezone="../../etc/passwd")

    def test_refuses_an_instant_without_offset(self) -> None:
        with pytest.raises(DateWithoutOffset):
            activity_window(start=datetime(2026, 6, 1), end=None, granularity="day", timezone="UTC")

    def test_refuses_a_range_that_ends_before_it_starts(self) -> None:
        with pytest.raises(InvalidActivityRange):
            activity_window(start=NOON, end=NOON, granularity="day", timezone="UTC")

    def test_refuses_an_instant_far_from_any_activity(self) -> None:
        with pytest.raises(InvalidActivityRange):
            activity_window(
                start=datetime(1, 1, 1, tzinfo=UTC), end=None, granularity="day", timezone="UTC"
            )

    def test_refuses_more_buckets_than_one_read_answers(self) -> None:
        with pytest.raises(ActivityRangeTooLarge):
            activity_window(
                start=NOON - timedelta(hours=MAX_BUCKETS + 1),
                end=NOON,
                granularity="hour",
                timezone="UTC",
            )

    def test_answers_the_largest_range_allowed(self) -> None:
        window = activity_window(
            start=NOON - timedelta(days=MAX_BUCKETS - 1),
            end=NOON,
            granularity="day",
            timezone="UTC",
        )

        assert len(window.starts) == MAX_BUCKETS

"""Activity over time: the hours or days of a chart, in a timezone, over stored 15-minute
buckets.

The ledger and the gateway count what happens per 15-minute bucket in UTC (a rollup
row per bucket, never a row per request). Every timezone offset in use is a whole
multiple of 15 minutes, so those buckets regroup exactly into the hours and days of
any timezone, daylight-saving changes included. The bucket starts of a window are
computed here, with the IANA database Python ships (``zoneinfo``); the database is
handed them and groups its rows by which one they fall in (``width_bucket``), so it
never needs to know the timezone.

See docs/decisions/0024-activity-rollups.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from infra.problems import Problem

#: What one stored rollup row covers, aligned on the quarter-hours of UTC.
BUCKET = timedelta(minutes=15)
#: The most hours or days one read may answer: 30 days by hour is 720.
MAX_BUCKETS = 1000
#: The longest IANA timezone name is 32 characters.
TIMEZONE_MAX_LENGTH = 64
#: What a window covers when the caller names no start.
DEFAULT_SPAN = {"hour": timedelta(hours=24), "day": timedelta(days=7)}
#: Instants outside these are no activity anyone recorded (and near datetime's own
#: limits, arithmetic on them would overflow).
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)

Granularity = Literal["hour", "day"]


class UnknownTimezone(Problem):
    status = 400
    code = "UNKNOWN_TIMEZONE"


class InvalidActivityRange(Problem):
    status = 400
    code = "INVALID_ACTIVITY_RANGE"


class ActivityRangeTooLarge(Problem):
    status = 400
    code = "ACTIVITY_RANGE_TOO_LARGE"


class DateWithoutOffset(Problem):
    status = 400
    code = "INVALID_DATE"


#: The problems an activity read may answer with besides the service's own.
ACTIVITY_PROBLEMS = [
    "INVALID_DATE",
    "UNKNOWN_TIMEZONE",
    "INVALID_ACTIVITY_RANGE",
    "ACTIVITY_RANGE_TOO_LARGE",
]


def bucket_of(instant: datetime) -> datetime:
    """The start, in UTC, of the 15-minute bucket ``instant`` falls in."""
    instant = instant.astimezone(UTC)
    return instant.replace(minute=instant.minute - instant.minute % 15, second=0, microsecond=0)


def zone(name: str) -> ZoneInfo:
    """The IANA timezone ``name``, or a problem."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as error:
        raise UnknownTimezone(
            f"{name!r} is not an IANA timezone name such as Europe/Paris or UTC"
        ) from error


@dataclass(frozen=True)
class ActivityWindow:
    """The buckets of one read: consecutive hours or days of ``timezone``."""

    granularity: Granularity
    timezone: str
    starts: tuple[datetime, ...]
    """Each bucket's first instant, in UTC, ascending."""
    end: datetime
    """The first instant after the last bucket."""

    @property
    def start(self) -> datetime:
        return self.starts[0]

    def index_of(self, slot: int) -> int:
        """The bucket of a ``width_bucket(bucket, starts)`` answer (1-based) as an index."""
        return slot - 1


@dataclass(frozen=True)
class ActivityRange:
    """What a caller asked for: an instant range and a bucket size."""

    start: datetime | None
    end: datetime | None
    granularity: Granularity

    def window(self, timezone: str) -> ActivityWindow:
        """The hours or days of ``timezone`` it covers, or a problem."""
        return activity_window(
            start=self.start, end=self.end, granularity=self.granularity, timezone=timezone
        )


def activity_window(
    *,
    start: datetime | None,
    end: datetime | None,
    granularity: Granularity,
    timezone: str,
    now: datetime | None = None,
) -> ActivityWindow:
    """The hours or days of ``timezone`` from the one holding ``start`` to the one holding
    the instant just before ``end`` (default: now, and a day or a week before it), or a
    problem: an unknown timezone, an instant without offset, an empty or reversed range,
    or more than :data:`MAX_BUCKETS` buckets."""
    tz = zone(timezone)
    end = _instant("to", end) if end is not None else (now or datetime.now(UTC))
    start = _instant("from", start) if start is not None else end - DEFAULT_SPAN[granularity]
    if start >= end:
        raise InvalidActivityRange("`from` must come before `to`")
    nominal = timedelta(hours=1) if granularity == "hour" else timedelta(days=1)
    if (end - start) / nominal > MAX_BUCKETS + 1:
        raise _too_large(granularity)
    starts = _hours(start, end, tz) if granularity == "hour" else _days(start, end, tz)
    if len(starts) - 1 > MAX_BUCKETS:
        raise _too_large(granularity)
    return ActivityWindow(granularity, timezone, tuple(starts[:-1]), starts[-1])


def _instant(name: str, value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise DateWithoutOffset(f"`{name}` must carry a timezone offset, as 2027-01-31T23:00:00Z")
    if not EARLIEST <= value <= LATEST:
        raise InvalidActivityRange(f"`{name}` must lie between 1970 and 2200")
    return value.astimezone(UTC)


def _too_large(granularity: Granularity) -> ActivityRangeTooLarge:
    return ActivityRangeTooLarge(
        f"one read answers at most {MAX_BUCKETS} {granularity}s; narrow the range or "
        "choose a larger bucket"
    )


def _hours(start: datetime, end: datetime, tz: ZoneInfo) -> list[datetime]:
    """Starts of the local hours from the one holding ``start``, and the one after the last
    that begins before ``end``. Stepping by the 15-minute bucket finds every local hour
    whatever the offsets (half-hour zones, a 30-minute daylight-saving change)."""
    instant = bucket_of(start)
    while instant.astimezone(tz).minute != 0:
        instant -= BUCKET
    starts = [instant]
    while starts[-1] < end:
        instant += BUCKET
        if instant.astimezone(tz).minute == 0:
            starts.append(instant)
    return starts


def _days(start: datetime, end: datetime, tz: ZoneInfo) -> list[datetime]:
    """Starts of the local days from the one holding ``start``, and of the one after the
    last that begins before ``end``; a day with a daylight-saving change lasts 23 or 25
    hours."""
    day = start.astimezone(tz).date()
    starts = [_midnight(day, tz)]
    while starts[-1] < end:
        day += timedelta(days=1)
        starts.append(_midnight(day, tz))
    return starts


def _midnight(day: date, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, time(), tzinfo=tz).astimezone(UTC)

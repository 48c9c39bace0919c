"""The query parameters every activity read takes, as a FastAPI dependency."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, cast, get_args

from fastapi import Depends, Query

from contracts import Environment
from contracts.text import Text
from infra.activity import TIMEZONE_MAX_LENGTH, ActivityRange, Granularity
from infra.problems import Problem
from infra.tokens import Principal

ENVIRONMENTS: tuple[str, ...] = get_args(Environment)


def activity_range(
    start: Annotated[
        datetime | None,
        Query(
            alias="from",
            description="An instant with its offset; the range starts with the hour or day "
            "holding it. Default: a day (by hour) or a week (by day) before `to`.",
        ),
    ] = None,
    end: Annotated[
        datetime | None,
        Query(
            alias="to",
            description="An instant with its offset; the range ends with the hour or day "
            "holding the instant just before it. Default: now.",
        ),
    ] = None,
    bucket: Annotated[
        Granularity, Query(description="`hour` or `day`, in the range's timezone.")
    ] = "day",
) -> ActivityRange:
    return ActivityRange(start, end, bucket)


RangeQuery = Annotated[ActivityRange, Depends(activity_range)]
TimezoneQuery = Annotated[
    Text,
    Query(
        max_length=TIMEZONE_MAX_LENGTH,
        description="The IANA timezone whose hours and days the buckets are, e.g. `Europe/Paris`.",
    ),
]


class UnknownEnvironment(Problem):
    status = 400
    code = "UNKNOWN_ENVIRONMENT"


class BusinessUsersOnly(Problem):
    status = 403
    code = "FORBIDDEN"


def business_user_scope(principal: Principal, environment: str) -> tuple[str, Environment]:
    """The organisation and environment a business user's activity read covers: activity
    is for the console, so an API client's token is refused."""
    if environment not in ENVIRONMENTS:
        raise UnknownEnvironment(
            f"environment must be one of {', '.join(ENVIRONMENTS)}, not {environment!r}"
        )
    if principal.kind != "user":
        raise BusinessUsersOnly("activity is for business users of the organisation")
    return principal.org_id, cast("Environment", environment)

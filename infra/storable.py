"""What an API accepts must be what PostgreSQL stores: the bounds of its column types.

A number past ``bigint`` or a time that leaves Python's range once converted
to UTC passes pydantic but fails in asyncpg (``value out of int64 range``,
``OverflowError: date value out of range``), which the caller would see as a
500. These bounds and types let the edge refuse them with a 422 instead.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime

#: The largest value of a PostgreSQL ``bigint`` (and ``bigserial`` id).
BIGINT_MAX = 2**63 - 1


def _convertible_to_utc(value: datetime) -> datetime:
    # asyncpg sends a timestamptz as UTC: 0001-01-01T00:00+01:00 has no UTC time in Python.
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValueError("time is out of range once converted to UTC") from None
    return value


#: A time with its offset, that PostgreSQL's ``timestamptz`` (through asyncpg) can store.
StorableDatetime = Annotated[AwareDatetime, AfterValidator(_convertible_to_utc)]

"""A rule's (or an organisation's) activity at a glance: the ledger's points and the
gateway's answers, per hour or day of the organisation's timezone, in one answer.

The ledger and the gateway each keep their own rollups; this service asks both over
HTTP, as the signed-in user, and lays their buckets side by side. A part that cannot
be read (the service is away, slow, or answers anything but 200) is named in
``missing`` and its figures are null: the chart shows what there is rather than
nothing, and the answer is never a 5xx for that (docs/console.md).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from urllib.parse import quote

import asyncpg
import httpx

from infra.activity import ActivityRange, ActivityWindow
from infra.logging import get_logger
from services.rules.readers import LedgerReader
from services.rules.settings import RulesSettings

log = get_logger(__name__)

Part = Literal["ledger", "gateway"]
#: How long one part may take before the answer goes without it.
PART_TIMEOUT_SECONDS = 3.0
LEDGER_FIGURES = ("earned", "redeemed", "reversed", "expired")


@dataclass(frozen=True)
class Bucket:
    start: datetime
    ledger: dict[str, int] | None = None
    accepted: int | None = None
    refused: dict[str, int] | None = None


@dataclass(frozen=True)
class Activity:
    window: ActivityWindow
    environment: str
    buckets: list[Bucket]
    missing: list[Part] = field(default_factory=list)


@dataclass(frozen=True)
class Reader:
    """Who reads, and how: the user's ids, the service's pool and settings, the reader."""

    reader: LedgerReader
    pool: asyncpg.Pool
    settings: RulesSettings
    org_id: str
    user_id: str


async def activity(
    reader: Reader,
    environment: str,
    span: ActivityRange,
    timezone: str,
    rule_id: str | None = None,
) -> Activity:
    """The activity of ``rule_id`` (None: of every rule of the organisation) in
    ``environment`` over ``span``, in ``timezone``: the window is checked first (a
    problem refuses it), then the ledger and the environment's gateway are read at once."""
    window = span.window(timezone)
    path = "/v1/activity" if rule_id is None else f"/v1/rules/{quote(rule_id, safe='')}/activity"
    params = {
        "environment": environment,
        "from": window.start.isoformat(),
        "to": window.end.isoformat(),
        "bucket": window.granularity,
        "timezone": window.timezone,
    }
    ledger, gateway = await asyncio.gather(
        _read(reader, "ledger", reader.settings.ledger_url, path, params),
        _read(reader, "gateway", reader.settings.trigger_url(environment), path, params),
    )
    by_start: dict[datetime, dict[str, Any]] = {start: {} for start in window.starts}
    parts: tuple[tuple[Part, dict[str, Any] | None], ...] = (
        ("ledger", ledger),
        ("gateway", gateway),
    )
    for part, answer in parts:
        for bucket in (answer or {}).get("buckets", []):
            start = datetime.fromisoformat(bucket["start"])
            if start in by_start:
                by_start[start][part] = bucket
    missing: list[Part] = []
    if ledger is None:
        missing.append("ledger")
    if gateway is None:
        missing.append("gateway")
    return Activity(
        window=window,
        environment=environment,
        buckets=[_bucket(start, parts, missing) for start, parts in by_start.items()],
        missing=missing,
    )


def _bucket(start: datetime, parts: dict[str, Any], missing: list[Part]) -> Bucket:
    ledger = parts.get("ledger", {})
    gateway = parts.get("gateway", {})
    return Bucket(
        start=start,
        ledger=None
        if "ledger" in missing
        else {name: int(ledger.get(name, 0)) for name in LEDGER_FIGURES},
        accepted=None if "gateway" in missing else int(gateway.get("accepted", 0)),
        refused=None if "gateway" in missing else dict(gateway.get("refused", {})),
    )


async def _read(
    reader: Reader, part: Part, base_url: str, path: str, params: dict[str, str]
) -> dict[str, Any] | None:
    """A part's answer, or None when it cannot be had."""
    try:
        answer = await reader.reader.get_as(
            reader.pool,
            reader.org_id,
            reader.user_id,
            base_url.rstrip("/") + path,
            params,
            timeout=PART_TIMEOUT_SECONDS,
        )
    except httpx.HTTPError as error:
        log.warning("activity.part_unreachable", part=part, error=type(error).__name__)
        return None
    if answer.status_code != 200:
        log.warning("activity.part_refused", part=part, status=answer.status_code)
        return None
    try:
        body: dict[str, Any] = answer.json()
    except ValueError:
        log.warning("activity.part_unreadable", part=part)
        return None
    return body

"""Business users' routes for activity at a glance: a rule's, or the organisation's, points
and triggers per hour or day of the organisation's timezone."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import asyncpg
from fastapi import APIRouter, Depends, Query, Request
from pydantic import Field

from contracts.text import Text
from infra.activity import ACTIVITY_PROBLEMS
from infra.activity_http import RangeQuery
from infra.openapi import problems
from services.rules import accounts, activity, rules
from services.rules.api import BusinessUser, Context, RulesContext, User
from services.rules.readers import LedgerReader
from services.rules.schemas import CamelModel

router = APIRouter(tags=["activity"])


class ActivityBucketView(CamelModel):
    start: datetime = Field(description="The bucket's first instant.")
    earned: int | None = Field(description="Points applied by earns (null: ledger missing).")
    redeemed: int | None = Field(description="Points applied by redeems.")
    reversed: int | None = Field(description="Points reversals moved back, either way.")
    expired: int | None = Field(description="Points of earns that expired unspent.")
    accepted: int | None = Field(
        description="Triggers the gateway answered 202 (null: gateway missing)."
    )
    refused: dict[str, int] | None = Field(description="Triggers the gateway refused, by code.")


class ActivityView(CamelModel):
    rule_id: str | None = Field(description="The rule; null for the whole organisation.")
    rule_type: Literal["earn", "redeem"] | None = Field(description="The rule's type.")
    environment: str
    timezone: str = Field(
        description="The organisation's timezone, whose hours and days these are."
    )
    bucket: Literal["hour", "day"]
    start: datetime = Field(alias="from", description="The first bucket's first instant.")
    end: datetime = Field(alias="to", description="The first instant after the last bucket.")
    cap_max: int | None = Field(description="The rule's cap, if it has one.")
    cap_used: int | None = Field(description="Points the rule has moved so far, against its cap.")
    missing: list[Literal["ledger", "gateway"]] = Field(
        description="Parts that could not be read just now; their figures are null."
    )
    buckets: list[ActivityBucketView]


async def reads(request: Request) -> LedgerReader:
    reader: LedgerReader = request.app.state.console_ledger
    return reader


Reads = Annotated[LedgerReader, Depends(reads)]
ACTIVITY_ANSWERS = problems({400: ACTIVITY_PROBLEMS})


@router.get(
    "/v1/rules/{rule_id}/activity",
    responses=problems({400: ACTIVITY_PROBLEMS, 404: ["RULE_NOT_FOUND"]}),
)
async def get_rule_activity(
    rule_id: Text, user: User, ctx: Context, reader: Reads, span: RangeQuery
) -> ActivityView:
    """Points the rule earned, redeemed, reversed and expired, and triggers the gateway
    accepted and refused (by code), per hour or day of the organisation's timezone; for any
    business user of the organisation."""
    async with ctx.pool.acquire() as connection:
        rule = await rules.get_rule(connection, user.org_id, rule_id)
        timezone = await _timezone(connection, user.org_id)
    found = await activity.activity(
        _reader(ctx, reader, user), rule["environment"], span, timezone, rule_id=rule_id
    )
    return _view(
        found, rule_id=rule_id, rule_type=rule["type"], cap=rule["cap_max"], used=rule["cap_used"]
    )


@router.get("/v1/activity", responses=ACTIVITY_ANSWERS)
async def get_organisation_activity(
    user: User,
    ctx: Context,
    reader: Reads,
    span: RangeQuery,
    environment: Annotated[
        Literal["staging", "production"], Query(description="`staging` or `production`.")
    ],
) -> ActivityView:
    """Points every rule of the organisation moved, and triggers its clients sent, in one
    environment, per hour or day of the organisation's timezone."""
    async with ctx.pool.acquire() as connection:
        timezone = await _timezone(connection, user.org_id)
    found = await activity.activity(_reader(ctx, reader, user), environment, span, timezone)
    return _view(found)


async def _timezone(connection: asyncpg.Connection, org_id: str) -> str:
    organisation = await accounts.require_organisation(connection, org_id)
    return str(organisation["timezone"])


def _reader(ctx: RulesContext, reader: LedgerReader, user: BusinessUser) -> activity.Reader:
    return activity.Reader(reader, ctx.pool, ctx.settings, user.org_id, user.id)


def _view(
    found: activity.Activity,
    *,
    rule_id: str | None = None,
    rule_type: str | None = None,
    cap: int | None = None,
    used: int | None = None,
) -> ActivityView:
    window = found.window
    return ActivityView.model_validate(
        {
            "ruleId": rule_id,
            "ruleType": rule_type,
            "environment": found.environment,
            "timezone": window.timezone,
            "bucket": window.granularity,
            "from": window.start,
            "to": window.end,
            "capMax": cap,
            "capUsed": used,
            "missing": found.missing,
            "buckets": [
                {
                    "start": bucket.start,
                    **(bucket.ledger or dict.fromkeys(activity.LEDGER_FIGURES)),
                    "accepted": bucket.accepted,
                    "refused": bucket.refused,
                }
                for bucket in found.buckets
            ],
        }
    )

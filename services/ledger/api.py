"""HTTP API of the ledger: members' balances and history, rule totals, reversals."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from contracts.text import MultilineText, Text
from infra.activity import ACTIVITY_PROBLEMS, ActivityWindow
from infra.activity_http import RangeQuery, TimezoneQuery
from infra.http import ServiceContext, Unauthorized, authenticate
from infra.openapi import problems
from infra.tokens import JwksVerifier, Principal
from infra.user_standing import as_it_stands
from services.ledger import access, activity, clients, reads, reversals
from services.ledger.settings import LedgerSettings


@dataclass(frozen=True)
class LedgerContext(ServiceContext):
    """What the routes need, put on ``app.state.ledger`` by the app factory."""

    settings: LedgerSettings
    verifier: JwksVerifier


async def context(request: Request) -> LedgerContext:
    ctx: LedgerContext = request.app.state.ledger
    return ctx


Context = Annotated[LedgerContext, Depends(context)]


async def transaction(ctx: Context) -> AsyncIterator[asyncpg.Connection]:
    """The request's transaction: committed when the route returns, rolled back on error."""
    async with ctx.pool.acquire() as connection, connection.transaction():
        yield connection


# scope="function": the transaction commits before the response is sent, not after.
Tx = Annotated[asyncpg.Connection, Depends(transaction, scope="function")]


class CamelModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class Expiring(CamelModel):
    amount: int = Field(description="Points that expire at `expiresAt`.")
    expires_at: datetime = Field(description="When they expire.")


class Balance(CamelModel):
    user_id: str
    environment: str
    balance: int
    expiring: list[Expiring] = Field(
        description="The member's points that expire, by instant, the next 5, soonest first; "
        "an instant already past lists points the ledger is about to take."
    )


class TransactionView(CamelModel):
    transaction_id: UUID
    user_id: str
    request_id: str
    rule_id: str
    type: str
    amount: int
    status: str
    reason: str | None
    created_at: datetime


class TransactionPage(CamelModel):
    items: list[TransactionView]
    next_cursor: str | None


async def _principal(request: Request, ctx: Context) -> Principal:
    """Who the bearer token speaks for; a revoked client is refused at once."""
    principal = await authenticate(ctx.verifier, request)
    if principal.kind == "client" and await clients.is_revoked(ctx.pool, principal.client_id):
        raise Unauthorized("this client has been revoked")
    return await as_it_stands(ctx.pool, principal)


PrincipalDep = Annotated[Principal, Depends(_principal)]
EnvironmentQuery = Annotated[Text, Query(description="`staging` or `production`.")]

#: What reading a member or a rule in an environment may answer besides the token check.
READ_PROBLEMS = {400: ["UNKNOWN_ENVIRONMENT"], 403: ["ENVIRONMENT_FORBIDDEN"]}
PAGE_PROBLEMS = {400: ["UNKNOWN_ENVIRONMENT", "INVALID_CURSOR"], 403: ["ENVIRONMENT_FORBIDDEN"]}
#: Rule totals and history are for business users only.
RULE_READ_PROBLEMS = {400: ["UNKNOWN_ENVIRONMENT"], 403: ["FORBIDDEN"]}

members_router = APIRouter(prefix="/v1/members", tags=["members"])


@members_router.get("/{user_id}/balance", responses=problems(READ_PROBLEMS))
async def get_balance(
    user_id: Text, environment: EnvironmentQuery, principal: PrincipalDep, ctx: Context
) -> Balance:
    """The member's points balance in one environment (0 for a member never seen), and the
    points of it that expire soonest."""
    scope = access.read_scope(principal, environment)
    async with (
        ctx.pool.acquire() as connection,
        connection.transaction(isolation="repeatable_read"),
    ):
        balance = await reads.member_balance(connection, scope, user_id)
        expiring = await reads.member_expiring(connection, scope, user_id)
    return Balance(
        user_id=user_id,
        environment=scope.environment,
        balance=balance,
        expiring=[Expiring(amount=amount, expires_at=at) for at, amount in expiring],
    )


LimitQuery = Annotated[int, Query(ge=1, le=200)]
CursorQuery = Annotated[Text | None, Query(description="`nextCursor` of the previous page.")]


def _transaction_page(page: reads.HistoryPage) -> TransactionPage:
    return TransactionPage(
        items=[
            TransactionView(
                transaction_id=item.transaction_id,
                user_id=item.user_id,
                request_id=item.request_id,
                rule_id=item.rule_id,
                type=item.type,
                amount=item.amount,
                status=item.status,
                reason=item.reason,
                created_at=item.created_at,
            )
            for item in page.items
        ],
        next_cursor=page.next_cursor,
    )


@members_router.get("/{user_id}/transactions", responses=problems(PAGE_PROBLEMS))
async def list_transactions(
    user_id: Text,
    environment: EnvironmentQuery,
    principal: PrincipalDep,
    ctx: Context,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
) -> TransactionPage:
    """The member's transactions, newest first; follow `nextCursor` for older ones."""
    scope = access.read_scope(principal, environment)
    async with ctx.pool.acquire() as connection:
        page = await reads.member_history(connection, scope, user_id, limit=limit, cursor=cursor)
    return _transaction_page(page)


class RuleTotalsView(CamelModel):
    rule_id: str
    environment: str
    earned: int = Field(description="Points applied by the rule's earns.")
    redeemed: int = Field(description="Points applied by the rule's redeems.")
    reversed: int = Field(description="Points moved back by reversals, either way.")
    reversed_earned: int = Field(description="Points taken back from members by reversals.")
    reversed_redeemed: int = Field(description="Points given back to members by reversals.")
    uncovered: int = Field(
        description="Points reversals did not move back: of earns, those members had already "
        "spent or that expired (or were due to); of redeems, those taken from lots that "
        "expired since."
    )
    expired: int = Field(description="Points of the rule's earns that expired unspent.")
    net: int = Field(description="Points the rule put in members' hands, net of all the above.")
    transactions: int = Field(
        description="Transactions recorded: applied, rejected, reversals and expiries."
    )
    rejected: int = Field(description="Requests the ledger rejected.")


rules_router = APIRouter(prefix="/v1/rules", tags=["rules"])


@rules_router.get("/{rule_id}/totals", responses=problems(RULE_READ_PROBLEMS))
async def get_rule_totals(
    rule_id: Text, environment: EnvironmentQuery, principal: PrincipalDep, ctx: Context
) -> RuleTotalsView:
    """What one rule moved in one environment, for a business user of its organisation."""
    scope = access.totals_scope(principal, environment)
    async with ctx.pool.acquire() as connection:
        totals = await reads.rule_totals(connection, scope, rule_id)
    return RuleTotalsView.model_validate(totals, from_attributes=True)


@rules_router.get(
    "/{rule_id}/transactions",
    responses=problems({**RULE_READ_PROBLEMS, 400: ["UNKNOWN_ENVIRONMENT", "INVALID_CURSOR"]}),
)
async def list_rule_transactions(
    rule_id: Text,
    environment: EnvironmentQuery,
    principal: PrincipalDep,
    ctx: Context,
    limit: LimitQuery = 20,
    cursor: CursorQuery = None,
) -> TransactionPage:
    """One rule's transactions across its members, newest first, for a business user of its
    organisation; follow `nextCursor` for older ones."""
    scope = access.totals_scope(principal, environment)
    async with ctx.pool.acquire() as connection:
        page = await reads.rule_history(connection, scope, rule_id, limit=limit, cursor=cursor)
    return _transaction_page(page)


class LedgerActivityBucket(CamelModel):
    start: datetime = Field(description="The bucket's first instant.")
    earned: int = Field(description="Points applied by earns.")
    redeemed: int = Field(description="Points applied by redeems.")
    reversed: int = Field(description="Points reversals moved back, either way.")
    expired: int = Field(description="Points of earns that expired unspent.")
    transactions: int = Field(description="Applied transactions of any of these kinds.")


class LedgerActivity(CamelModel):
    rule_id: str | None = Field(description="The rule; null for the whole organisation.")
    environment: str
    timezone: str
    bucket: Literal["hour", "day"]
    start: datetime = Field(alias="from", description="The first bucket's first instant.")
    end: datetime = Field(alias="to", description="The first instant after the last bucket.")
    buckets: list[LedgerActivityBucket]


ACTIVITY_READ_PROBLEMS = {400: ["UNKNOWN_ENVIRONMENT", *ACTIVITY_PROBLEMS], 403: ["FORBIDDEN"]}


def _activity_view(
    rule_id: str | None,
    scope: access.ReadScope,
    window: ActivityWindow,
    buckets: list[activity.ActivityBucket],
) -> LedgerActivity:
    return LedgerActivity(
        rule_id=rule_id,
        environment=scope.environment,
        timezone=window.timezone,
        bucket=window.granularity,
        start=window.start,
        end=window.end,
        buckets=[LedgerActivityBucket.model_validate(b, from_attributes=True) for b in buckets],
    )


@rules_router.get("/{rule_id}/activity", responses=problems(ACTIVITY_READ_PROBLEMS))
async def get_rule_activity(
    rule_id: Text,
    environment: EnvironmentQuery,
    principal: PrincipalDep,
    ctx: Context,
    span: RangeQuery,
    timezone: TimezoneQuery = "UTC",
) -> LedgerActivity:
    """Points one rule earned, redeemed, reversed and expired per hour or day of a
    timezone, for a business user of its organisation."""
    scope = access.totals_scope(principal, environment)
    window = span.window(timezone)
    async with ctx.pool.acquire() as connection:
        buckets = await activity.rule_activity(connection, scope, rule_id, window)
    return _activity_view(rule_id, scope, window, buckets)


activity_router = APIRouter(prefix="/v1/activity", tags=["rules"])


@activity_router.get("", responses=problems(ACTIVITY_READ_PROBLEMS))
async def get_organisation_activity(
    environment: EnvironmentQuery,
    principal: PrincipalDep,
    ctx: Context,
    span: RangeQuery,
    timezone: TimezoneQuery = "UTC",
) -> LedgerActivity:
    """Points every rule of the organisation moved in one environment, per hour or day of a
    timezone, for a business user of the organisation."""
    scope = access.totals_scope(principal, environment)
    window = span.window(timezone)
    async with ctx.pool.acquire() as connection:
        buckets = await activity.organisation_activity(connection, scope, window)
    return _activity_view(None, scope, window, buckets)


class ReversalRequest(CamelModel):
    reversal_id: UUID = Field(
        description="The caller's idempotency key; a retry with it returns the same outcome."
    )
    reason: MultilineText = Field(
        min_length=1,
        max_length=reversals.REVERSAL_REASON_MAX_LENGTH,
        description="Why the transaction is reversed (a refund, a mistaken award).",
    )


class ReversalView(CamelModel):
    reversal_id: UUID
    transaction_id: UUID = Field(description="The transaction reversed.")
    environment: str
    user_id: str
    rule_id: str
    type: str = Field(description="Type of the transaction reversed: `earn` or `redeem`.")
    amount: int = Field(description="Amount of the transaction reversed.")
    reversed: int = Field(description="Points moved back.")
    uncovered: int = Field(
        description="Points not moved back: of an earn, those the member had already spent "
        "or that expired (or were due to); of a redeem, those taken from lots that expired "
        "since."
    )
    balance: int = Field(description="The member's balance once the reversal was applied.")
    reason: str
    actor: str = Field(description="The business user who reversed the transaction.")
    created_at: datetime


transactions_router = APIRouter(prefix="/v1/transactions", tags=["transactions"])


@transactions_router.post(
    "/{transaction_id}/reversal",
    status_code=201,
    responses={
        200: {
            "model": ReversalView,
            "description": "Already reversed: the first reversal's outcome.",
        },
        **problems(
            {
                400: ["REVERSAL_REASON_REQUIRED"],
                403: ["FORBIDDEN", "READ_ONLY_ROLE"],
                404: ["TRANSACTION_NOT_FOUND"],
                409: [
                    "REVERSAL_NOT_REVERSIBLE",
                    "EXPIRY_NOT_REVERSIBLE",
                    "REJECTED_NOT_REVERSIBLE",
                    "REVERSAL_ID_IN_USE",
                    "BALANCE_LIMIT_EXCEEDED",
                ],
            }
        ),
    },
)
async def reverse_transaction(
    transaction_id: UUID,
    body: ReversalRequest,
    request: Request,
    response: Response,
    principal: PrincipalDep,
    tx: Tx,
) -> ReversalView:
    """Reverse an applied earn or redeem (admin or editor of its organisation).

    Idempotent: once a transaction is reversed, every later call answers 200
    with that first reversal, whatever its `reversalId`.
    """
    outcome = await reversals.reverse_for_operator(
        tx,
        principal,
        transaction_id=transaction_id,
        reversal_id=body.reversal_id,
        reason=body.reason,
        correlation_id=getattr(request.state, "correlation_id", None),
    )
    if outcome.replayed:
        response.status_code = 200
    return ReversalView(
        reversal_id=outcome.reversal_id,
        transaction_id=outcome.transaction_id,
        environment=outcome.environment,
        user_id=outcome.user_id,
        rule_id=outcome.rule_id,
        type=outcome.type,
        amount=outcome.amount,
        reversed=outcome.reversed,
        uncovered=outcome.uncovered,
        balance=outcome.balance,
        reason=outcome.reason,
        actor=outcome.actor,
        created_at=outcome.created_at,
    )


#: Every route of the ledger, for the app factory.
router = APIRouter()
for area in (members_router, rules_router, activity_router, transactions_router):
    router.include_router(area)

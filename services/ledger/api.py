"""HTTP reads of the ledger: a member's balance and transaction history."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from infra.http import authenticate
from infra.runtime import ServiceRuntime
from infra.tokens import JwksVerifier, Principal
from services.ledger import service


class CamelModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class Balance(CamelModel):
    user_id: str
    environment: str
    balance: int


class TransactionView(CamelModel):
    transaction_id: UUID
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


async def _principal(request: Request) -> Principal:
    verifier: JwksVerifier = request.app.state.verifier
    return await authenticate(verifier, request)


def _pool(request: Request) -> asyncpg.Pool:
    runtime: ServiceRuntime = request.app.state.runtime
    return runtime.pool


PrincipalDep = Annotated[Principal, Depends(_principal)]
PoolDep = Annotated[asyncpg.Pool, Depends(_pool)]
EnvironmentQuery = Annotated[str, Query(description="`staging` or `production`.")]

router = APIRouter(prefix="/v1/members", tags=["members"])


@router.get("/{user_id}/balance")
async def get_balance(
    user_id: str, environment: EnvironmentQuery, principal: PrincipalDep, pool: PoolDep
) -> Balance:
    """The member's points balance in one environment (0 for a member never seen)."""
    scope = service.read_scope(principal, environment)
    async with pool.acquire() as connection:
        balance = await service.member_balance(connection, scope, user_id)
    return Balance(user_id=user_id, environment=scope.environment, balance=balance)


@router.get("/{user_id}/transactions")
async def list_transactions(
    user_id: str,
    environment: EnvironmentQuery,
    principal: PrincipalDep,
    pool: PoolDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(description="`nextCursor` of the previous page.")] = None,
) -> TransactionPage:
    """The member's transactions, newest first; follow `nextCursor` for older ones."""
    scope = service.read_scope(principal, environment)
    async with pool.acquire() as connection:
        page = await service.member_history(connection, scope, user_id, limit=limit, cursor=cursor)
    return TransactionPage(
        items=[
            TransactionView(
                transaction_id=item.transaction_id,
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

"""HTTP routes of the trigger gateway: the developer-facing API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from infra.http import Unauthorized, authenticate
from infra.logging import get_logger
from infra.tokens import JwksVerifier
from services.trigger import service

log = get_logger(__name__)


@dataclass(frozen=True)
class TriggerContext:
    verifier: JwksVerifier
    pool_of: Any

    @property
    def pool(self) -> asyncpg.Pool:
        pool: asyncpg.Pool = self.pool_of()
        return pool


def context(request: Request) -> TriggerContext:
    ctx: TriggerContext = request.app.state.trigger
    return ctx


Context = Annotated[TriggerContext, Depends(context)]


async def current_client(request: Request, ctx: Context) -> service.Caller:
    principal = await authenticate(ctx.verifier, request)
    if principal.kind != "client" or principal.environment is None:
        raise Unauthorized("an API client's token is required")
    if "points:trigger" not in principal.scopes:
        raise Unauthorized("the token lacks the points:trigger scope")
    if await service.client_revoked(ctx.pool, principal.client_id):
        raise Unauthorized("this client has been revoked")
    return service.Caller(principal.client_id, principal.org_id, principal.environment)


Client = Annotated[service.Caller, Depends(current_client)]


class TriggerRequest(BaseModel):
    """A trigger; userId and amount are checked by the gateway with their own error codes."""

    model_config = ConfigDict(extra="forbid")

    user_id: Any = Field(alias="userId", description="The member's id in your system.")
    rule_id: str = Field(alias="ruleId", min_length=1, max_length=100)
    amount: Any = Field(description="Points to earn or redeem: a positive integer.")
    request_id: str = Field(
        alias="requestId", min_length=1, max_length=128, description="Your idempotency key."
    )
    callback_url: str | None = Field(
        default=None,
        alias="callbackUrl",
        max_length=2048,
        pattern=r"^https?://",
        description="Where the outcome is POSTed.",
    )


router = APIRouter(tags=["points"])


@router.post("/v1/points/requests", status_code=202)
async def trigger_points(
    body: TriggerRequest, caller: Client, ctx: Context, request: Request
) -> JSONResponse:
    """Ask for points to be earned or redeemed under a rule; 202 once recorded."""
    trigger = service.Trigger(
        body.user_id, body.rule_id, body.amount, body.request_id, body.callback_url
    )
    async with ctx.pool.acquire() as connection, connection.transaction():
        accepted = await service.accept_trigger(
            connection, caller, trigger, request.state.correlation_id
        )
    log.info(
        "points.request.accepted",
        client_id=caller.client_id,
        request_id=body.request_id,
        rule_id=body.rule_id,
        transaction_id=accepted["transactionId"],
    )
    return JSONResponse(accepted, status_code=202)


@router.get("/v1/points/requests/{request_id}")
async def get_points_request(request_id: str, caller: Client, ctx: Context) -> dict[str, Any]:
    """Where a request stands: pending, succeeded or failed (with a reason)."""
    async with ctx.pool.acquire() as connection:
        return await service.request_status(connection, caller, request_id)

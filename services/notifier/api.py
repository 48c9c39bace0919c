"""The notifier's operator endpoints: see deliveries that gave up, and replay them."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from infra.http import Forbidden, ServiceContext, bearer_token
from infra.openapi import problems
from infra.problems import Problem
from infra.storable import BIGINT_MAX
from services.notifier import operator_actions
from services.notifier.dispatch import DeliveryDispatcher
from services.notifier.settings import NotifierSettings

DeliveryStatus = Literal["pending", "delivered", "parked", "failed"]
DeliveryKind = Literal["callback", "email"]


class DeliveryNotParked(Problem):
    status = 404
    code = "DELIVERY_NOT_PARKED"


class Delivery(BaseModel):
    """One callback or e-mail and where its delivery stands (the body is not shown)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    id: int
    kind: DeliveryKind
    event_id: UUID
    org_id: str
    environment: str
    client_id: str | None = Field(description="Callbacks: the API client it reports to.")
    request_id: str | None = Field(description="Callbacks: the developer's request id.")
    transaction_id: UUID | None = Field(description="Callbacks: the ledger transaction.")
    url: str | None = Field(description="Callbacks: where it is posted.")
    notification_id: UUID | None = Field(description="E-mails: the share request's id.")
    recipients: list[str] | None = Field(description="E-mails: who it is sent to.")
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime
    last_status_code: int | None = Field(
        description="HTTP status (callbacks) or SMTP reply code (e-mails) of the last attempt."
    )
    last_error: str | None = Field(description="What went wrong last, such as the SMTP reply.")
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None


class DeliveryList(BaseModel):
    items: list[Delivery] = Field(description="Newest change first.")


@dataclass(frozen=True)
class NotifierContext(ServiceContext):
    """What the routes need, put on ``app.state.notifier`` by the app factory."""

    settings: NotifierSettings
    dispatcher: DeliveryDispatcher


async def context(request: Request) -> NotifierContext:
    ctx: NotifierContext = request.app.state.notifier
    return ctx


Context = Annotated[NotifierContext, Depends(context)]


def require_operator(request: Request, ctx: Context) -> None:
    settings = ctx.settings
    if not settings.operator_token:
        if settings.is_development:
            return
        raise Forbidden("operator endpoints are off: set NOTIFIER_OPERATOR_TOKEN")
    if not hmac.compare_digest(
        bearer_token(request).encode(), settings.operator_token.encode()
    ):  # bytes: a str that is not ASCII would raise
        raise Forbidden("not an operator token")


router = APIRouter(
    prefix="/v1/deliveries", tags=["deliveries"], dependencies=[Depends(require_operator)]
)


@router.get("", response_model=DeliveryList, response_model_by_alias=True)
async def list_deliveries(
    ctx: Context,
    status: DeliveryStatus | None = None,
    kind: DeliveryKind | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Deliveries by status and kind, such as `?kind=email&status=failed`."""
    rows = await operator_actions.list_deliveries(ctx.pool, status=status, kind=kind, limit=limit)
    return {"items": rows}


class ReplayAccepted(BaseModel):
    id: int
    status: Literal["pending"] = Field(description="Queued again, with a fresh retry schedule.")


@router.post(
    "/{delivery_id}/replay",
    status_code=202,
    response_model=ReplayAccepted,
    responses=problems({404: ["DELIVERY_NOT_PARKED"]}),
)
async def replay_delivery(
    delivery_id: Annotated[int, Path(ge=1, le=BIGINT_MAX)], ctx: Context
) -> dict[str, Any]:
    """Send a parked or failed delivery again, with a fresh retry schedule."""
    if not await operator_actions.replay_delivery(ctx.pool, delivery_id):
        raise DeliveryNotParked(
            f"delivery {delivery_id} does not exist or is neither parked nor failed"
        )
    ctx.dispatcher.wake()
    return {"id": delivery_id, "status": "pending"}

"""The notifier's operator endpoints: see callbacks that were parked, and replay them."""

from __future__ import annotations

import hmac
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from infra.http import Forbidden, bearer_token
from infra.problems import Problem
from infra.runtime import ServiceRuntime
from services.notifier import repository
from services.notifier.service import CallbackDispatcher
from services.notifier.settings import NotifierSettings

DeliveryStatus = Literal["pending", "delivered", "parked"]


class DeliveryNotParked(Problem):
    status = 404
    code = "DELIVERY_NOT_PARKED"
    title = "No such parked delivery"


class Delivery(BaseModel):
    """One callback and where its delivery stands (the body is not shown)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    id: int
    event_id: UUID
    client_id: str
    org_id: str
    environment: str
    request_id: str
    transaction_id: UUID
    url: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None


class DeliveryList(BaseModel):
    items: list[Delivery] = Field(description="Newest change first.")


def deliveries_router(
    settings: NotifierSettings, runtime: ServiceRuntime, dispatcher: CallbackDispatcher
) -> APIRouter:
    def require_operator(request: Request) -> None:
        if not settings.operator_token:
            if settings.is_development:
                return
            raise Forbidden("operator endpoints are off: set NOTIFIER_OPERATOR_TOKEN")
        if not hmac.compare_digest(bearer_token(request), settings.operator_token):
            raise Forbidden("not an operator token")

    router = APIRouter(
        prefix="/v1/deliveries", tags=["deliveries"], dependencies=[Depends(require_operator)]
    )

    @router.get("", response_model=DeliveryList, response_model_by_alias=True)
    async def list_deliveries(
        status: DeliveryStatus | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        """Callbacks by status, such as `?status=parked` for those that gave up."""
        rows = await repository.list_deliveries(runtime.pool, status=status, limit=limit)
        return {"items": rows}

    @router.post("/{delivery_id}/replay", status_code=202)
    async def replay_delivery(delivery_id: int) -> dict[str, Any]:
        """Send a parked callback again, with a fresh retry schedule."""
        if not await repository.replay_parked(runtime.pool, delivery_id):
            raise DeliveryNotParked(f"delivery {delivery_id} does not exist or is not parked")
        dispatcher.wake()
        return {"id": delivery_id, "status": "pending"}

    return router

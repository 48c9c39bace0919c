"""The notifier's endpoints: deliveries and where they stand, and replaying those that
gave up. Operators (the operator token) see every organisation's deliveries; a business
user (a token from the rules service) sees its own organisation's callbacks."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from contracts.text import Text
from infra.http import ServiceContext, authenticate, bearer_token
from infra.openapi import problems
from infra.problems import Problem
from infra.storable import BIGINT_MAX
from infra.tokens import JwksVerifier, Principal
from infra.user_standing import as_it_stands
from services.notifier import callback_log, operator_actions
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
    url: str | None = Field(
        description="Callbacks: where it is posted; shown to operators only (its query may "
        "hold the receiver's own credentials)."
    )
    host: str | None = Field(description="Callbacks: the host of the URL it is posted to.")
    notification_id: UUID | None = Field(description="E-mails: the share request's id.")
    recipients: list[str] | None = Field(description="E-mails: who it is sent to.")
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime
    last_status_code: int | None = Field(
        description="HTTP status (callbacks) or SMTP reply code (e-mails) of the last attempt."
    )
    last_error: str | None = Field(description="What went wrong last, such as the SMTP reply.")
    last_attempt_at: datetime | None = Field(
        description="When the last attempt was answered or gave up; null before the first, "
        "and for deliveries last tried before this was recorded."
    )
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None


class DeliveryList(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    items: list[Delivery] = Field(
        description="Operators: most recently changed first. A business user: newest first."
    )
    next_cursor: str | None = Field(
        default=None,
        description="A business user's list: pass as `cursor` for the next, older page; "
        "null on the last page (and always for operators).",
    )


@dataclass(frozen=True)
class NotifierContext(ServiceContext):
    """What the routes need, put on ``app.state.notifier`` by the app factory."""

    settings: NotifierSettings
    dispatcher: DeliveryDispatcher
    verifier: JwksVerifier


async def context(request: Request) -> NotifierContext:
    ctx: NotifierContext = request.app.state.notifier
    return ctx


Context = Annotated[NotifierContext, Depends(context)]


#: Who calls: None for the operator, or the business user a token speaks for.
Caller = Principal | None


async def caller(request: Request, ctx: Context) -> Caller:
    """The operator (the operator token; in development without one set, a request with no
    token), or the principal of a token from the rules service: 401 when it is neither."""
    settings = ctx.settings
    unlocked = settings.is_development and not settings.operator_token
    if unlocked and "Authorization" not in request.headers:
        return None
    token = bearer_token(request)
    if settings.operator_token and hmac.compare_digest(
        token.encode(), settings.operator_token.encode()
    ):  # bytes: a str that is not ASCII would raise
        return None
    # A removed user's token is refused at once, and a replay judged by the role now.
    return await as_it_stands(ctx.pool, await authenticate(ctx.verifier, request))


CallerDep = Annotated[Caller, Depends(caller)]

router = APIRouter(prefix="/v1/deliveries", tags=["deliveries"])


@router.get("", response_model=DeliveryList, response_model_by_alias=True)
async def list_deliveries(
    ctx: Context,
    who: CallerDep,
    status: DeliveryStatus | None = None,
    kind: DeliveryKind | None = None,
    client_id: Annotated[
        Text | None, Query(alias="clientId", max_length=200, description="One API client's.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[
        int | None,
        Query(ge=1, le=BIGINT_MAX, description="`nextCursor` of the previous page."),
    ] = None,
) -> dict[str, Any]:
    """Deliveries by status, kind and client, such as `?kind=email&status=failed`.

    With the operator token: every organisation's, most recently changed first. With a
    business user's token: the user's organisation's callbacks, newest first, a page at
    a time (another organisation's client has none)."""
    if who is None:
        rows = await operator_actions.list_deliveries(
            ctx.pool, status=status, kind=kind, client_id=client_id, limit=limit
        )
        return {"items": rows}
    page = await callback_log.list_callbacks(
        ctx.pool, who, kind=kind, client_id=client_id, status=status, before=cursor, limit=limit
    )
    next_cursor = None if page.next_before is None else str(page.next_before)
    return {"items": page.items, "next_cursor": next_cursor}


class ReplayAccepted(BaseModel):
    id: int
    status: Literal["pending"] = Field(description="Queued again, with a fresh retry schedule.")


@router.post(
    "/{delivery_id}/replay",
    status_code=202,
    response_model=ReplayAccepted,
    responses=problems({403: ["READ_ONLY_ROLE"], 404: ["DELIVERY_NOT_PARKED"]}),
)
async def replay_delivery(
    delivery_id: Annotated[int, Path(ge=1, le=BIGINT_MAX)], ctx: Context, who: CallerDep
) -> dict[str, Any]:
    """Send a parked or failed delivery again, with a fresh retry schedule. A business
    user: an admin or editor, for a parked callback of the organisation."""
    if who is None:
        replayed = await operator_actions.replay_delivery(ctx.pool, delivery_id)
    else:
        replayed = await callback_log.replay_parked_callback(ctx.pool, who, delivery_id)
    if not replayed:
        raise DeliveryNotParked(
            f"delivery {delivery_id} does not exist or is neither parked nor failed"
        )
    ctx.dispatcher.wake()
    return {"id": delivery_id, "status": "pending"}

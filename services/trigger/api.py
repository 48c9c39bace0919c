"""HTTP routes of the trigger gateway: the developer-facing API. A trigger is translated
into :meth:`services.trigger.admission.Gateway.accept` and its receipt into a 202."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts.text import Text
from infra.http import ServiceContext, Unauthorized, authenticate
from infra.openapi import problems
from infra.request_signing import SIGNATURE_HEADER, TIMESTAMP_HEADER
from infra.tokens import JwksVerifier, Principal
from services.trigger.admission import Gateway, client_access
from services.trigger.checks import MAX_AMOUNT, USER_ID, Caller, Trigger
from services.trigger.rate_limits import rate_limit_headers
from services.trigger.reads import ResultsConsumed, request_status
from services.trigger.settings import TriggerSettings
from services.trigger.signatures import SignedRequest


@dataclass(frozen=True)
class TriggerContext(ServiceContext):
    """What the routes need, put on ``app.state.trigger`` by the app factory."""

    settings: TriggerSettings
    verifier: JwksVerifier
    gateway: Gateway
    results_consumed: ResultsConsumed


async def context(request: Request) -> TriggerContext:
    ctx: TriggerContext = request.app.state.trigger
    return ctx


Context = Annotated[TriggerContext, Depends(context)]


async def verified_client(request: Request, ctx: Context) -> Principal:
    """The API client a valid bearer token speaks for (no database involved)."""
    principal = await authenticate(ctx.verifier, request)
    if principal.kind != "client" or principal.environment is None:
        raise Unauthorized("an API client's token is required")
    if "points:trigger" not in principal.scopes:
        raise Unauthorized("the token lacks the points:trigger scope")
    return principal


VerifiedClient = Annotated[Principal, Depends(verified_client)]


def caller_of(principal: Principal) -> Caller:
    assert principal.environment is not None
    return Caller(principal.client_id, principal.org_id, principal.environment)


async def current_client(request: Request, ctx: Context) -> Caller:
    """The API client behind the request: token verified, not revoked, signature checked."""
    principal = await verified_client(request, ctx)
    access = await client_access(ctx.pool, principal.client_id)
    ctx.gateway.check_access(access, await signed_request(request))
    return caller_of(principal)


Client = Annotated[Caller, Depends(current_client)]


async def signed_request(request: Request) -> SignedRequest:
    """The request as its client signed it: the target exactly as sent on the request line."""
    target = request.scope.get("raw_path") or request.url.path.encode()
    query = request.scope.get("query_string", b"")
    if query:
        target += b"?" + query
    return SignedRequest(
        method=request.method,
        target=target.decode("latin-1"),
        body=await request.body(),
        timestamp=request.headers.get(TIMESTAMP_HEADER),
        signature=request.headers.get(SIGNATURE_HEADER),
    )


class TriggerRequest(BaseModel):
    """A trigger; userId and amount are checked by the gateway with their own error codes."""

    model_config = ConfigDict(extra="forbid")

    # Typed in the document only: the gateway checks them itself, with codes of their own
    # (INVALID_USER_ID, INVALID_AMOUNT) rather than INVALID_REQUEST.
    user_id: Any = Field(
        alias="userId",
        description="The member's id in your system.",
        json_schema_extra={"type": "string", "pattern": f"^{USER_ID.pattern}$"},
    )
    rule_id: Text = Field(alias="ruleId", min_length=1, max_length=100)
    amount: Any = Field(
        description="Points to earn or redeem: a positive integer.",
        json_schema_extra={"type": "integer", "minimum": 1, "maximum": MAX_AMOUNT},
    )
    request_id: Text = Field(
        alias="requestId", min_length=1, max_length=128, description="Your idempotency key."
    )
    callback_url: Text | None = Field(
        default=None,
        alias="callbackUrl",
        max_length=2048,
        pattern=r"^https?://",
        description="Where the outcome is POSTed.",
    )


class TriggerAccepted(BaseModel):
    """A trigger recorded: its outcome comes in the callback, or from polling it."""

    request_id: str = Field(alias="requestId")
    transaction_id: UUID = Field(alias="transactionId", description="The ledger transaction.")
    status: Literal["pending"]


class Reversal(BaseModel):
    reversal_id: UUID = Field(alias="reversalId")
    reversed_amount: int = Field(alias="reversedAmount")
    uncovered_amount: int = Field(
        alias="uncoveredAmount", description="Points the member no longer had to give back."
    )
    reversed_at: datetime = Field(alias="reversedAt")


class RequestStatus(BaseModel):
    """Where a request stands."""

    request_id: str = Field(alias="requestId")
    transaction_id: UUID = Field(alias="transactionId")
    status: Literal["pending", "succeeded", "failed"]
    reason: str | None = Field(default=None, description="Why it failed (a failed request).")
    reversal: Reversal | None = Field(default=None, description="Its reversal, if reversed.")


#: The headers an answer that took a rate-limit token carries (services.trigger.rate_limits).
RATE_LIMIT_HEADERS = {
    "RateLimit-Policy": 'The client\'s quota policy: `"burst";q=<burst>;w=<seconds>`.',
    "RateLimit": 'What is left of it: `"burst";r=<remaining>;t=<seconds to the next>`.',
    "RateLimit-Limit": "Deprecated (early drafts): the burst.",
    "RateLimit-Remaining": "Deprecated (early drafts): requests left.",
    "RateLimit-Reset": "Deprecated (early drafts): seconds until the bucket is full.",
}
RETRY_AFTER = {"Retry-After": "Seconds to wait before sending the same request again."}

#: Every problem the trigger endpoint answers with, in the order its checks run (the
#: integration guide lists the same, and a test keeps the two in step).
TRIGGER_PROBLEMS: dict[int, list[str]] = {
    401: ["UNAUTHORIZED", "SIGNATURE_REQUIRED", "SIGNATURE_EXPIRED", "SIGNATURE_INVALID"],
    400: [
        "INVALID_REQUEST",
        "BAD_REQUEST",
        "INVALID_VALUE",
        "INVALID_CALLBACK_URL",
        "RULE_NOT_FOUND",
        "RULE_NOT_API_TRIGGERABLE",
        "RULE_INACTIVE",
        "RULE_NOT_STARTED",
        "RULE_ENDED",
        "INVALID_USER_ID",
        "MEMBER_BLOCKED",
        "INVALID_AMOUNT",
        "AMOUNT_OVER_MAXIMUM",
        "CAP_EXCEEDED",
        "MEMBER_CAP_EXCEEDED",
    ],
    403: ["ENVIRONMENT_MISMATCH", "CLIENT_NOT_AUTHORIZED"],
    409: ["REQUEST_ID_REUSED"],
    413: ["BODY_TOO_LARGE"],
    429: ["RATE_LIMITED"],
    503: ["CLIENT_NOT_READY", "CALLBACK_HOST_UNRESOLVED", "SERVICE_UNAVAILABLE"],
}
#: What polling a request answers with beyond a trigger's token and signature checks.
STATUS_PROBLEMS: dict[int, list[str]] = {
    401: ["UNAUTHORIZED", "SIGNATURE_REQUIRED", "SIGNATURE_EXPIRED", "SIGNATURE_INVALID"],
    404: ["REQUEST_NOT_FOUND"],
}


def _with_headers(responses: dict[int | str, dict[str, Any]], **headers: dict[str, str]) -> None:
    for status, names in headers.items():
        responses[int(status.removeprefix("s"))]["headers"] = {
            name: {"description": description, "schema": {"type": "string"}}
            for name, description in names.items()
        }


TRIGGER_RESPONSES = problems(TRIGGER_PROBLEMS)
TRIGGER_RESPONSES[202] = {
    "model": TriggerAccepted,
    "description": "Recorded; the outcome comes in the callback.",
}
_with_headers(
    TRIGGER_RESPONSES,
    s202=RATE_LIMIT_HEADERS,
    s400=RATE_LIMIT_HEADERS,
    s403=RATE_LIMIT_HEADERS,
    s409=RATE_LIMIT_HEADERS,
    s429={**RETRY_AFTER, **RATE_LIMIT_HEADERS},
    s503=RETRY_AFTER,
)

router = APIRouter(tags=["points"])


TRIGGER_PATH = "/v1/points/requests"


@router.post(TRIGGER_PATH, status_code=202, response_model=None, responses=TRIGGER_RESPONSES)
async def trigger_points(
    body: TriggerRequest, principal: VerifiedClient, ctx: Context, request: Request
) -> JSONResponse:
    """Ask for points to be earned or redeemed under a rule; 202 once recorded.

    One round trip reads the client's standing, takes its rate-limit token and
    finds the rule and any earlier request with this requestId; a second
    records the request. Each round trip is shared with the triggers waiting
    at the same moment. Nothing is recorded for a refused request.
    """
    return await answer_trigger(body, principal, ctx, request)


async def serve_trigger(request: Request) -> JSONResponse:
    """``POST /v1/points/requests`` as the gateway serves it (``infra.http.DirectRoute``):
    what FastAPI would do for :func:`trigger_points`, in the same order (the token, then
    the body), without its routing and dependency machinery."""
    ctx: TriggerContext = request.app.state.trigger
    principal = await verified_client(request, ctx)
    try:
        body = TriggerRequest.model_validate_json(await request.body())
    except ValidationError as error:
        raise RequestValidationError(error.errors(include_url=False)) from error
    return await answer_trigger(body, principal, ctx, request)


async def answer_trigger(
    body: TriggerRequest, principal: Principal, ctx: TriggerContext, request: Request
) -> JSONResponse:
    """The trigger in ``body``, handed to the gateway; its receipt as a 202."""
    trigger = Trigger(body.user_id, body.rule_id, body.amount, body.request_id, body.callback_url)
    receipt = await ctx.gateway.accept(
        caller_of(principal), trigger, await signed_request(request), request.state.correlation_id
    )
    return JSONResponse(
        receipt.answer, status_code=202, headers=rate_limit_headers(receipt.rate_limit)
    )


@router.get(
    "/v1/points/requests/{request_id}",
    response_model=RequestStatus,
    response_model_exclude_none=True,
    responses=problems(STATUS_PROBLEMS),
)
async def get_points_request(request_id: Text, caller: Client, ctx: Context) -> dict[str, Any]:
    """Where a request stands: pending, succeeded or failed (with a reason); and any reversal."""
    return await request_status(ctx.pool, caller, request_id, results_consumed=ctx.results_consumed)

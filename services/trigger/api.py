"""HTTP routes of the trigger gateway: the developer-facing API. A trigger is translated
into :meth:`services.trigger.admission.Gateway.accept` and its receipt into a 202."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts.text import Text
from infra.activity import ACTIVITY_PROBLEMS, ActivityWindow
from infra.activity_http import RangeQuery, TimezoneQuery, business_user_scope
from infra.http import ServiceContext, Unauthorized, authenticate
from infra.openapi import RETRY_AFTER, header_docs, problems
from infra.request_signing import SIGNATURE_HEADER, TIMESTAMP_HEADER
from infra.tokens import JwksVerifier, Principal
from services.trigger import activity
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
#: The client's standing and its request signature, checked for every operation (the
#: token itself is checked for every one of them anyway).
CLIENT_ACCESS_PROBLEMS: dict[int, list[str]] = {
    401: ["UNAUTHORIZED", "SIGNATURE_REQUIRED", "SIGNATURE_EXPIRED", "SIGNATURE_INVALID"],
    503: ["CLIENT_NOT_READY"],
}
#: Every problem the trigger endpoint answers with (the integration guide lists the
#: same, in the order the checks run, and a test keeps the two in step).
TRIGGER_PROBLEMS: dict[int, list[str]] = {
    **CLIENT_ACCESS_PROBLEMS,
    400: [
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
    429: ["RATE_LIMITED"],
    503: ["CLIENT_NOT_READY", "CALLBACK_HOST_UNRESOLVED"],
}
#: What polling a request answers with.
STATUS_PROBLEMS: dict[int, list[str]] = {**CLIENT_ACCESS_PROBLEMS, 404: ["REQUEST_NOT_FOUND"]}

# Every answer after the client's standing was read took a rate-limit token and says so;
# a 401 for the token itself comes before and carries none (the document cannot tell
# the two 401s apart, so it names the fields as they may come).
TRIGGER_RESPONSES = problems(
    TRIGGER_PROBLEMS,
    headers={
        status: {**RATE_LIMIT_HEADERS, **(RETRY_AFTER if status in (429, 503) else {})}
        for status in TRIGGER_PROBLEMS
    },
)
TRIGGER_RESPONSES[202] = {
    "model": TriggerAccepted,
    "description": "Recorded; the outcome comes in the callback.",
    "headers": header_docs(RATE_LIMIT_HEADERS),
}
STATUS_RESPONSES = problems(STATUS_PROBLEMS, headers={503: RETRY_AFTER})

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
        caller = caller_of(principal)
        ctx.gateway.tally.count(caller.org_id, caller.environment, None, "INVALID_REQUEST")
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
    responses=STATUS_RESPONSES,
)
async def get_points_request(request_id: Text, caller: Client, ctx: Context) -> dict[str, Any]:
    """Where a request stands: pending, succeeded or failed (with a reason); and any reversal."""
    return await request_status(ctx.pool, caller, request_id, results_consumed=ctx.results_consumed)


class AnswersBucketView(BaseModel):
    start: datetime = Field(description="The bucket's first instant.")
    accepted: int = Field(description="Triggers answered 202.")
    refused: dict[str, int] = Field(description="Triggers refused, by problem code.")


class GatewayActivity(BaseModel):
    """What the gateway answered, per hour or day of a timezone."""

    rule_id: str | None = Field(
        alias="ruleId", description="The rule; null for the whole organisation."
    )
    environment: str
    timezone: str
    bucket: Literal["hour", "day"]
    start: datetime = Field(alias="from", description="The first bucket's first instant.")
    end: datetime = Field(alias="to", description="The first instant after the last bucket.")
    buckets: list[AnswersBucketView]


async def business_user(request: Request, ctx: Context) -> Principal:
    return await authenticate(ctx.verifier, request)


BusinessUser = Annotated[Principal, Depends(business_user)]
ACTIVITY_RESPONSES = problems(
    {400: ["UNKNOWN_ENVIRONMENT", *ACTIVITY_PROBLEMS], 403: ["FORBIDDEN"]}
)


def _activity_view(
    rule_id: str | None,
    environment: str,
    window: ActivityWindow,
    buckets: list[activity.AnswersBucket],
) -> GatewayActivity:
    return GatewayActivity(
        ruleId=rule_id,
        environment=environment,
        timezone=window.timezone,
        bucket=window.granularity,
        **{"from": window.start, "to": window.end},
        buckets=[
            AnswersBucketView(start=b.start, accepted=b.accepted, refused=b.refused)
            for b in buckets
        ],
    )


@router.get("/v1/rules/{rule_id}/activity", tags=["activity"], responses=ACTIVITY_RESPONSES)
async def get_rule_activity(
    rule_id: Text,
    environment: Annotated[Text, Query(description="`staging` or `production`.")],
    principal: BusinessUser,
    ctx: Context,
    span: RangeQuery,
    timezone: TimezoneQuery = "UTC",
) -> GatewayActivity:
    """Triggers of one rule the gateway accepted and refused (by code), per hour or day of a
    timezone, for a business user of its organisation."""
    org_id, scope = business_user_scope(principal, environment)
    window = span.window(timezone)
    buckets = await activity.rule_activity(ctx.pool, org_id, scope, rule_id, window)
    return _activity_view(rule_id, scope, window, buckets)


@router.get("/v1/activity", tags=["activity"], responses=ACTIVITY_RESPONSES)
async def get_organisation_activity(
    environment: Annotated[Text, Query(description="`staging` or `production`.")],
    principal: BusinessUser,
    ctx: Context,
    span: RangeQuery,
    timezone: TimezoneQuery = "UTC",
) -> GatewayActivity:
    """Triggers of the organisation's clients in one environment the gateway accepted and
    refused (by code), per hour or day of a timezone, for a business user; refusals that
    named no rule of the organisation count here only."""
    org_id, scope = business_user_scope(principal, environment)
    window = span.window(timezone)
    buckets = await activity.organisation_activity(ctx.pool, org_id, scope, window)
    return _activity_view(None, scope, window, buckets)

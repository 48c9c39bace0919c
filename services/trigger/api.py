"""HTTP routes of the trigger gateway: the developer-facing API."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any, TypeVar

import asyncpg
from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts.text import Text
from infra.batching import Coalescer
from infra.http import Unauthorized, authenticate
from infra.logging import get_logger
from infra.problems import Problem, is_unavailable
from infra.request_signing import SIGNATURE_HEADER, TIMESTAMP_HEADER
from infra.tokens import JwksVerifier, Principal
from services.trigger import admission, checks, rate_limits, reads, signatures
from services.trigger.callback_urls import check_callback_url
from services.trigger.settings import TriggerSettings

log = get_logger(__name__)


T = TypeVar("T")
R = TypeVar("R")


def batched(
    run_batch: Callable[[list[T]], Awaitable[Sequence[R | BaseException]]],
    settings: TriggerSettings,
) -> Coalescer[T, R]:
    """Concurrent calls of one statement, coalesced. A database that is away fails every
    trigger of a batch alike; any other failure may be one trigger's, so the batch is
    retried one by one and only that trigger gets it."""
    return Coalescer(
        run_batch,
        max_batch=settings.db_batch_max,
        max_in_flight=settings.db_batches_in_flight,
        shared=is_unavailable,
    )


class TriggerContext:
    """What the routes share: the verifier, the settings, the pool, what this replica
    remembers of clients and rules, and the coalescers that admit and record
    concurrent triggers in batches."""

    def __init__(self, verifier: JwksVerifier, settings: TriggerSettings, pool_of: Any) -> None:
        self.verifier = verifier
        self.settings = settings
        self.pool_of = pool_of
        self.admissions: Coalescer[admission.Admitting, admission.Admission] = batched(
            self._admit, settings
        )
        self.recordings: Coalescer[checks.Recording, dict[str, Any]] = batched(
            self._record, settings
        )
        self.remembered = admission.Remembered()
        self.checked_recordings: Coalescer[
            admission.CheckedAgainst, admission.RecordedAtOnce | None
        ] = batched(self._record_checked, settings)

    @property
    def pool(self) -> asyncpg.Pool:
        pool: asyncpg.Pool = self.pool_of()
        return pool

    async def _admit(self, batch: list[admission.Admitting]) -> list[admission.Admission]:
        return await admission.admit_triggers(
            self.pool,
            batch,
            default_per_second=self.settings.rate_limit_per_second,
            default_burst=self.settings.rate_limit_burst,
        )

    async def _record(self, batch: list[checks.Recording]) -> list[dict[str, Any] | Problem]:
        return await admission.record_triggers(self.pool, batch)

    async def _record_checked(
        self, batch: list[admission.CheckedAgainst]
    ) -> list[admission.RecordedAtOnce | Problem | None]:
        return await admission.record_checked(
            self.pool,
            batch,
            default_per_second=self.settings.rate_limit_per_second,
            default_burst=self.settings.rate_limit_burst,
        )


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


class ClientNotReady(Problem):
    status = 503
    code = "CLIENT_NOT_READY"
    title = "Service unavailable"


async def check_access(access: admission.ClientAccess, request: Request, ctx: Context) -> None:
    """Refuse a revoked client and, when it registered a public key, a request it did not
    sign (checked before any rule)."""
    if not access.known:
        raise ClientNotReady(
            "this client was created moments ago and the gateway has not seen it yet; "
            "retry in a second",
            headers={"Retry-After": "1"},
        )
    if access.revoked:
        raise Unauthorized("this client has been revoked")
    if access.request_signing_key is not None:
        signatures.check_request_signature(
            access.request_signing_key,
            await signed_request(request),
            at=time.time(),
            window_seconds=ctx.settings.request_signature_window_seconds,
        )


def caller_of(principal: Principal) -> checks.Caller:
    assert principal.environment is not None
    return checks.Caller(principal.client_id, principal.org_id, principal.environment)


async def current_client(request: Request, ctx: Context) -> checks.Caller:
    """The API client behind the request: token verified, not revoked, signature checked."""
    principal = await verified_client(request, ctx)
    await check_access(await admission.client_access(ctx.pool, principal.client_id), request, ctx)
    return caller_of(principal)


async def signed_request(request: Request) -> signatures.SignedRequest:
    """The request as its client signed it: the target exactly as sent on the request line."""
    target = request.scope.get("raw_path") or request.url.path.encode()
    query = request.scope.get("query_string", b"")
    if query:
        target += b"?" + query
    return signatures.SignedRequest(
        method=request.method,
        target=target.decode("latin-1"),
        body=await request.body(),
        timestamp=request.headers.get(TIMESTAMP_HEADER),
        signature=request.headers.get(SIGNATURE_HEADER),
    )


Client = Annotated[checks.Caller, Depends(current_client)]


def rate_limit_headers(limit: rate_limits.RateLimit) -> dict[str, str]:
    return {
        "RateLimit-Limit": str(limit.burst),
        "RateLimit-Remaining": str(limit.remaining),
        "RateLimit-Reset": str(limit.reset_seconds),
    }


VerifiedClient = Annotated[Principal, Depends(verified_client)]


def refuse_when_rate_limited(limit: rate_limits.RateLimit, client_id: str) -> None:
    if limit.granted:
        return
    log.info("points.request.rate_limited", client_id=client_id)
    raise rate_limits.RateLimited(
        f"this client may send {limit.per_second:g} requests per second "
        f"(bursts of {limit.burst}); retry after {limit.retry_after_seconds} s",
        headers={"Retry-After": str(limit.retry_after_seconds), **rate_limit_headers(limit)},
    )


class TriggerRequest(BaseModel):
    """A trigger; userId and amount are checked by the gateway with their own error codes."""

    model_config = ConfigDict(extra="forbid")

    user_id: Any = Field(alias="userId", description="The member's id in your system.")
    rule_id: Text = Field(alias="ruleId", min_length=1, max_length=100)
    amount: Any = Field(description="Points to earn or redeem: a positive integer.")
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


router = APIRouter(tags=["points"])


TRIGGER_PATH = "/v1/points/requests"


@router.post(TRIGGER_PATH, status_code=202)
async def trigger_points(
    body: TriggerRequest, principal: VerifiedClient, ctx: Context, request: Request
) -> JSONResponse:
    """Ask for points to be earned or redeemed under a rule; 202 once recorded.

    A trigger for a rule and client this replica has seen is checked against
    what it remembers of them and recorded in one round trip, which takes its
    rate-limit token and makes sure both are still current. Otherwise, and for
    every refusal, one round trip reads the client's standing, takes the token
    and finds the rule and any earlier request with this requestId; a second
    records the request. Each round trip is shared with the triggers waiting
    at the same moment. Nothing is recorded for a refused request.
    """
    return await accept(body, principal, ctx, request)


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
    return await accept(body, principal, ctx, request)


async def accept(
    body: TriggerRequest, principal: Principal, ctx: TriggerContext, request: Request
) -> JSONResponse:
    caller = caller_of(principal)
    trigger = checks.Trigger(
        body.user_id, body.rule_id, body.amount, body.request_id, body.callback_url
    )
    remembered = ctx.remembered.get(caller.client_id, trigger.rule_id)
    if remembered is not None:
        answered = await accept_at_once(caller, trigger, remembered, ctx, request)
        if answered is not None:
            return answered
    admitted = await ctx.admissions.submit(admission.Admitting(caller, trigger))
    ctx.remembered.remember(caller.client_id, admitted)
    await check_access(admitted.access, request, ctx)
    refuse_when_rate_limited(admitted.rate_limit, caller.client_id)
    headers = rate_limit_headers(admitted.rate_limit)
    replay = checks.replay_of(admitted.lookup, trigger)
    if replay is not None:
        # The original answer, even if the callback's host has moved since.
        return JSONResponse(replay, status_code=202, headers=headers)
    recording = await checked(caller, trigger, admitted.lookup, ctx, request)
    return accepted(caller, trigger, await ctx.recordings.submit(recording), headers)


async def checked(
    caller: checks.Caller,
    trigger: checks.Trigger,
    lookup: checks.Lookup,
    ctx: TriggerContext,
    request: Request,
) -> checks.Recording:
    """The checks after the client's standing and the rate limit: the callback URL,
    then the rule, the member and the amount."""
    if trigger.callback_url is not None:
        await check_callback_once(trigger.callback_url, ctx, request)
    return checks.checked_trigger(caller, trigger, lookup, request.state.correlation_id)


async def check_callback_once(url: str, ctx: TriggerContext, request: Request) -> None:
    """:func:`check_callback_url` at most once per request: when the one-round-trip
    path falls back to admitting a trigger afresh, the first verdict stands, so a
    host whose name does not resolve in time costs one DNS timeout, not two."""
    refusal: Problem | None
    try:
        refusal = request.state.callback_refusal
    except AttributeError:  # not checked yet
        refusal = None
        try:
            await check_callback_url(
                url,
                development=ctx.settings.is_development,
                timeout=ctx.settings.callback_dns_timeout_seconds,
            )
        except Problem as refused:
            refusal = refused
        request.state.callback_refusal = refusal
    if refusal is not None:
        raise refusal


async def accept_at_once(
    caller: checks.Caller,
    trigger: checks.Trigger,
    remembered: tuple[admission.ClientAccess, asyncpg.Record],
    ctx: TriggerContext,
    request: Request,
) -> JSONResponse | None:
    """Accept a trigger in one round trip, checked against the client and rule this
    replica remembers; None when it must be admitted afresh: when those would
    refuse it, or have changed since (nothing was taken or recorded then)."""
    access, rule = remembered
    try:
        await check_access(access, request, ctx)
        recording = await checked(caller, trigger, checks.Lookup(rule, None, None), ctx, request)
    except Problem:
        return None
    recorded = await ctx.checked_recordings.submit(
        admission.CheckedAgainst(recording, access.request_signing_key)
    )
    if recorded is None:
        ctx.remembered.forget(caller.client_id, trigger.rule_id)
        return None
    refuse_when_rate_limited(recorded.rate_limit, caller.client_id)
    assert recorded.answer is not None
    return accepted(caller, trigger, recorded.answer, rate_limit_headers(recorded.rate_limit))


def accepted(
    caller: checks.Caller,
    trigger: checks.Trigger,
    answer: dict[str, Any],
    headers: dict[str, str],
) -> JSONResponse:
    log.info(
        "points.request.accepted",
        client_id=caller.client_id,
        request_id=trigger.request_id,
        rule_id=trigger.rule_id,
        transaction_id=answer["transactionId"],
    )
    return JSONResponse(answer, status_code=202, headers=headers)


@router.get("/v1/points/requests/{request_id}")
async def get_points_request(request_id: Text, caller: Client, ctx: Context) -> dict[str, Any]:
    """Where a request stands: pending, succeeded or failed (with a reason); and any reversal."""
    async with ctx.pool.acquire() as connection:
        return await reads.request_status(connection, caller, request_id)

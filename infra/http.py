"""The HTTP side every service shares: app factory, request ids, bearer auth."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog
from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from infra.health import health_router
from infra.http_problems import install_problem_handlers, problem_response
from infra.metrics import UNMATCHED_ROUTE, ServiceMetrics
from infra.openapi import Security, describe_answers
from infra.problems import Problem
from infra.runtime import ServiceRuntime
from infra.settings import DEFAULT_MAX_BODY_BYTES, ServiceSettings
from infra.tokens import InvalidToken, JwksVerifier, Principal

REQUEST_ID_HEADER = "X-Request-Id"
CORRELATION_ID_HEADER = "X-Correlation-Id"
#: Prometheus's own scrapes are not requests worth counting.
METRICS_PATH = "/metrics"
_REQUEST_ID_KEY = REQUEST_ID_HEADER.lower().encode()
_CORRELATION_ID_KEY = CORRELATION_ID_HEADER.lower().encode()


class Unauthorized(Problem):
    status = 401
    code = "UNAUTHORIZED"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="partner"'})


class Forbidden(Problem):
    status = 403
    code = "FORBIDDEN"


@dataclass(frozen=True)
class ServiceContext:
    """What a service's routes need, put on ``app.state.<service>`` by its ``create_app``
    and read through an ``Annotated`` dependency alias (``Context``); each service's
    subclass adds its own pieces, such as its settings."""

    runtime: ServiceRuntime

    @property
    def pool(self) -> asyncpg.Pool:
        return self.runtime.pool


def create_http_app(
    metrics: ServiceMetrics | None = None,
    *,
    runtime: ServiceRuntime | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    problem_types_url: str | None = None,
    security: Security | None = None,
    **fastapi_options: Any,
) -> FastAPI:
    """A FastAPI app with problem+json errors and request/correlation ids on every log line,
    that refuses request bodies over ``max_body_bytes`` with 413.

    With ``metrics``, every request but ``/metrics`` itself is counted and timed
    under its route template. A service passes its ``runtime`` instead: its
    metrics are used, the app answers for it on ``/healthz``, ``/readyz`` and
    ``/metrics``, and the app's lifespan starts and stops it. Errors' ``type`` is their
    page under ``problem_types_url`` (the runtime's setting unless given). The OpenAPI
    document describes every answer (:mod:`infra.openapi`), with ``security`` as the
    credentials its operations take.
    """
    if runtime is not None:
        metrics = runtime.metrics
        fastapi_options["lifespan"] = runtime.lifespan
        problem_types_url = problem_types_url or runtime.settings.problem_types_url
    types_url = problem_types_url or ServiceSettings.model_fields["problem_types_url"].default
    # An operation's id is its route's name (`trigger_points`), which a generated client
    # names its function after, rather than FastAPI's name, path and method run together.
    fastapi_options.setdefault("generate_unique_id_function", lambda route: route.name)
    # A path with a slash too many is a 404 problem, as any path no route takes, rather
    # than a redirect no operation documents.
    fastapi_options.setdefault("redirect_slashes", False)
    app = FastAPI(**fastapi_options)
    install_problem_handlers(app, types_url)
    describe_answers(app, security)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=max_body_bytes, types_url=types_url)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    if runtime is not None:
        app.include_router(health_router(runtime))
    return app


class BodyTooLarge(StarletteHTTPException):
    """413: raised while the body is read, so every route answers it as a problem (FastAPI
    passes an ``HTTPException`` raised in body parsing through as it is)."""

    code = "BODY_TOO_LARGE"

    def __init__(self, max_body_bytes: int) -> None:
        super().__init__(
            413, f"the request body is over {max_body_bytes} bytes, the most this service accepts"
        )


class BodyLimitMiddleware:
    """Refuses a request body over ``max_body_bytes``: at once when its Content-Length says
    so, and, for a chunked body or one whose Content-Length understates it, as soon as
    more arrives than the limit, before the rest is read."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, types_url: str) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.types_url = types_url

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(dict(scope["headers"]).get(b"content-length"))
        if refusal is not None:
            await problem_response(refusal, self.types_url)(scope, receive, send)
            return
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)
            return message

        await self.app(scope, receive_within_limit, send)

    def _refusal(self, content_length: bytes | None) -> Problem | None:
        if content_length is None:
            return None
        if not content_length.isdigit():
            return Problem("Content-Length is not a number of bytes", code="BAD_REQUEST")
        if int(content_length) > self.max_body_bytes:
            too_large = BodyTooLarge(self.max_body_bytes)
            return Problem(too_large.detail, status=413, code=too_large.code)
        return None


class RequestContextMiddleware:
    """Binds the request and correlation ids to every log line, echoes ``X-Request-Id``
    and, given ``metrics``, counts and times each request under its route template.

    A plain ASGI middleware rather than ``@app.middleware("http")``: Starlette's
    ``BaseHTTPMiddleware`` streams every response through an extra task and
    queue, which cost the gateway a fifth of its time per request.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        request_id = headers.get(_REQUEST_ID_KEY, b"").decode("latin-1") or uuid.uuid4().hex
        correlation_id = headers.get(_CORRELATION_ID_KEY, b"").decode("latin-1") or request_id
        scope.setdefault("state", {})["correlation_id"] = correlation_id
        started = time.perf_counter()
        status = 500  # what the client gets when a handler raises past every handler

        async def send_with_request_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", ()),
                    (_REQUEST_ID_KEY, request_id.encode("latin-1")),
                ]
            await send(message)

        try:
            with structlog.contextvars.bound_contextvars(
                request_id=request_id, correlation_id=correlation_id
            ):
                await self.app(scope, receive, send_with_request_id)
        finally:
            route = _route_template(scope.get("route"))
            if self.metrics is not None and route != METRICS_PATH:
                seconds = time.perf_counter() - started
                self.metrics.observe_request(scope["method"], route, status, seconds)


class DirectRoute:
    """Serves one busy route with a plain ``handler(request) -> Response``, past
    FastAPI's router and dependency injection.

    For a route whose handling is a small part of what FastAPI spends on it
    (the gateway's trigger: a third of its time per request went to routing,
    dependency solving and the layers around them). It sits inside
    :class:`RequestContextMiddleware`, so request ids, logging context and
    metrics are as for any route; errors go to the app's own exception
    handlers, as the router would send them. The route stays declared on the
    app for the OpenAPI document.
    """

    def __init__(
        self,
        app: ASGIApp,
        method: str,
        path: str,
        handler: Callable[[Request], Awaitable[Response]],
    ) -> None:
        self.app = app
        self.method = method
        self.path = path
        self.handler = handler
        # What the metrics label the request with, as for a routed request.
        self.route = Route(path, handler, methods=[method])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != self.method:
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route
        request = Request(scope, receive)
        try:
            response = await self.handler(request)
        except Exception as error:
            handler = _exception_handler(scope["app"], error)
            if handler is None:
                raise
            response = await handler(request, error)
        await response(scope, receive, send)


def serve_directly(
    app: FastAPI, method: str, path: str, handler: Callable[[Request], Awaitable[Response]]
) -> None:
    """Have :class:`DirectRoute` serve ``method path`` of ``app``; call before it serves."""
    app.user_middleware.append(Middleware(DirectRoute, method, path, handler))


def _exception_handler(app: FastAPI, error: Exception) -> Any:
    """The handler the app registered for the error's class or its nearest base."""
    for cls in type(error).__mro__:
        if cls in app.exception_handlers:
            return app.exception_handlers[cls]
    return None


def _route_template(route: BaseRoute | None) -> str:
    """``/v1/points/requests/{request_id}`` rather than the path, so ids add no series."""
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE


def bearer_token(request: Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("an 'Authorization: Bearer <token>' header is required")
    return token.strip()


async def authenticate(verifier: JwksVerifier, request: Request) -> Principal:
    """The verified principal of the request's bearer token, or a 401 problem."""
    try:
        return await verifier.verify(bearer_token(request))
    except InvalidToken as error:
        raise Unauthorized(str(error)) from error

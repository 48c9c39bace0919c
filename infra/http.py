"""The HTTP side every service shares: app factory, request ids, bearer auth."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from fastapi import FastAPI, Request, Response
from starlette.routing import BaseRoute

from infra.metrics import UNMATCHED_ROUTE, ServiceMetrics
from infra.problems import Problem, install_problem_handlers
from infra.tokens import InvalidToken, JwksVerifier, Principal

REQUEST_ID_HEADER = "X-Request-Id"
CORRELATION_ID_HEADER = "X-Correlation-Id"
#: Prometheus's own scrapes are not requests worth counting.
METRICS_PATH = "/metrics"


class Unauthorized(Problem):
    status = 401
    code = "UNAUTHORIZED"
    title = "Unauthorized"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="partner"'})


class Forbidden(Problem):
    status = 403
    code = "FORBIDDEN"
    title = "Forbidden"


def create_http_app(metrics: ServiceMetrics | None = None, **fastapi_options: Any) -> FastAPI:
    """A FastAPI app with problem+json errors and request/correlation ids on every log line.

    With ``metrics`` (the runtime's), every request but ``/metrics`` itself is
    counted and timed under its route template.
    """
    app = FastAPI(**fastapi_options)
    install_problem_handlers(app)
    if metrics is not None:
        _record_request_metrics(app, metrics)

    @app.middleware("http")
    async def bind_request_ids(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        request_id = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        correlation_id = request.headers.get(CORRELATION_ID_HEADER) or request_id
        request.state.correlation_id = correlation_id
        with structlog.contextvars.bound_contextvars(
            request_id=request_id, correlation_id=correlation_id
        ):
            response = await call_next(request)
        response.headers[REQUEST_ID_HEADER] = request_id
        return response

    return app


def _record_request_metrics(app: FastAPI, metrics: ServiceMetrics) -> None:
    @app.middleware("http")
    async def record_request_metrics(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        status = 500  # what the client gets when a handler raises past every handler
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = _route_template(request.scope.get("route"))
            if route != METRICS_PATH:
                seconds = time.perf_counter() - started
                metrics.observe_request(request.method, route, status, seconds)


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

"""The HTTP side every service shares: app factory, request ids, bearer auth."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from fastapi import FastAPI, Request, Response

from infra.problems import Problem, install_problem_handlers
from infra.tokens import InvalidToken, JwksVerifier, Principal

REQUEST_ID_HEADER = "X-Request-Id"
CORRELATION_ID_HEADER = "X-Correlation-Id"


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


def create_http_app(**fastapi_options: Any) -> FastAPI:
    """A FastAPI app with problem+json errors and request/correlation ids on every log line."""
    app = FastAPI(**fastapi_options)
    install_problem_handlers(app)

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

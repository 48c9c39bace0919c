"""RFC 9457 problem details: errors as exceptions that carry their status.

Services raise :class:`Problem` (or a subclass with a fixed status and code)
from anywhere below the HTTP layer; :func:`install_problem_handlers` turns it,
and FastAPI's own validation errors, into ``application/problem+json`` with a
stable machine ``code``.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from infra.errors import ConcurrentUpdateConflict

PROBLEM_JSON = "application/problem+json"


class Problem(Exception):
    """An error a caller can act on."""

    status: int = 400
    code: str = "BAD_REQUEST"
    title: str = "Bad request"

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status or self.status
        self.code = code or self.code
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {
            "type": f"about:blank#{self.code}",
            "title": self.title,
            "status": self.status,
            "code": self.code,
            "detail": self.detail,
            **self.extra,
        }


def problem_response(problem: Problem) -> JSONResponse:
    return JSONResponse(
        problem.body(), status_code=problem.status, headers=problem.headers, media_type=PROBLEM_JSON
    )


def _field(item: dict[str, Any]) -> str:
    if item.get("type") == "json_invalid":
        return ""  # the location is a character offset, not a field
    return ".".join(str(part) for part in item["loc"] if part != "body")


def _validation_detail(error: RequestValidationError) -> tuple[str, list[dict[str, Any]]]:
    errors = [
        {
            "field": _field(item),
            "message": "not valid JSON" if item.get("type") == "json_invalid" else item["msg"],
        }
        for item in error.errors()
    ]
    summary = "; ".join(f"{item['field'] or 'body'}: {item['message']}" for item in errors)
    return summary, errors


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(_: Request, problem: Problem) -> JSONResponse:
        return problem_response(problem)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        summary, errors = _validation_detail(error)
        return problem_response(Problem(summary, code="INVALID_REQUEST", errors=errors))

    @app.exception_handler(OSError)
    @app.exception_handler(TimeoutError)
    @app.exception_handler(asyncpg.PostgresConnectionError)
    @app.exception_handler(asyncpg.InterfaceError)
    @app.exception_handler(asyncpg.OperatorInterventionError)
    @app.exception_handler(asyncpg.InsufficientResourcesError)
    @app.exception_handler(ConcurrentUpdateConflict)
    async def _unavailable(_: Request, error: Exception) -> JSONResponse:
        # The database is down or unreachable, or this request lost a race another
        # attempt resolves: say so, and let the caller retry.
        return problem_response(
            Problem(
                "the service cannot record requests right now; retry later",
                status=503,
                code="SERVICE_UNAVAILABLE",
                headers={"Retry-After": "5"},
            )
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(error.status_code, "HTTP_ERROR")
        return problem_response(Problem(str(error.detail), status=error.status_code, code=code))

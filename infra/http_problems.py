"""Problems as HTTP answers: the exception handlers that turn :class:`~infra.problems.Problem`,
FastAPI's validation errors, Starlette's HTTP errors and an unavailable database into
``application/problem+json`` with a stable machine ``code``."""

from __future__ import annotations

from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from infra.errors import ConcurrentUpdateConflict
from infra.problems import PROBLEM_JSON, UNAVAILABLE_ERRORS, Problem

#: The stable code of Starlette's and FastAPI's own HTTP errors, by status.
HTTP_CODES = {
    400: "BAD_REQUEST",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "BODY_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
}


def problem_response(problem: Problem, types_url: str) -> JSONResponse:
    return JSONResponse(
        problem.body(types_url),
        status_code=problem.status,
        headers=problem.headers,
        media_type=PROBLEM_JSON,
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


def install_problem_handlers(app: FastAPI, types_url: str) -> None:
    """Answer every error as a problem whose ``type`` is its page under ``types_url``."""

    @app.exception_handler(Problem)
    async def _problem(_: Request, problem: Problem) -> JSONResponse:
        return problem_response(problem, types_url)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        summary, errors = _validation_detail(error)
        return problem_response(Problem(summary, code="INVALID_REQUEST", errors=errors), types_url)

    async def _unavailable(_: Request, error: Exception) -> JSONResponse:
        # The database is down or unreachable, or this request lost a race another
        # attempt resolves: say so, and let the caller retry.
        return problem_response(
            Problem(
                "the service cannot record requests right now; retry later",
                status=503,
                code="SERVICE_UNAVAILABLE",
                headers={"Retry-After": "5"},
            ),
            types_url,
        )

    for unavailable in (*UNAVAILABLE_ERRORS, ConcurrentUpdateConflict):
        app.add_exception_handler(unavailable, _unavailable)

    @app.exception_handler(asyncpg.DataError)
    async def _refused_value(_: Request, error: asyncpg.DataError) -> JSONResponse:
        # A value every check let through and the database still refuses (a number out
        # of its range, a character it cannot store): the request's fault, not ours.
        return problem_response(
            Problem(f"a value of the request cannot be stored: {error}", code="INVALID_VALUE"),
            types_url,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, error: StarletteHTTPException) -> JSONResponse:
        code = getattr(error, "code", None) or HTTP_CODES.get(error.status_code, "HTTP_ERROR")
        # Starlette's own headers stay: a 405 lists the methods the path takes in `Allow`.
        problem = Problem(
            str(error.detail),
            status=error.status_code,
            code=code,
            headers=dict(error.headers or {}),
        )
        return problem_response(problem, types_url)

"""RFC 9457 problem details: errors as exceptions that carry their status.

Services raise :class:`Problem` (or a subclass with a fixed status and code)
from anywhere below the HTTP layer; ``infra.http_problems`` turns it, and
FastAPI's own validation errors, into ``application/problem+json`` with a
stable machine ``code``. Nothing here imports a web framework, so a service's
logic can raise one without depending on FastAPI.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import asyncpg

from infra.problem_types import PROBLEM_TYPES

PROBLEM_JSON = "application/problem+json"

#: Errors that mean the database is down or unreachable: a 503 the caller may retry.
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
)


class Problem(Exception):
    """An error a caller can act on."""

    status: int = 400
    code: str = "BAD_REQUEST"

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

    def body(self, types_url: str) -> dict[str, Any]:
        """The problem as JSON; its ``type`` is the page under ``types_url`` that explains
        it (RFC 9457), and its title the one every problem of that type carries."""
        kind = PROBLEM_TYPES.get(self.code)
        return {
            # A code missing from the catalogue (a test keeps that from happening) says
            # no more than its status, which RFC 9457 spells about:blank.
            "type": f"{types_url.rstrip('/')}/{kind.slug}" if kind else "about:blank",
            "title": kind.title if kind else HTTPStatus(self.status).phrase,
            "status": self.status,
            "code": self.code,
            "detail": self.detail,
            **self.extra,
        }


def is_unavailable(error: BaseException) -> bool:
    """Whether ``error`` says the database is away, rather than anything about a request."""
    return isinstance(error, UNAVAILABLE_ERRORS)

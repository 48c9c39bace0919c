"""OpenAPI documents that say what the services answer.

FastAPI documents each operation's success and its own 422 validation error;
the services answer validation errors with 400 problems instead, and 401, 403,
404, 409, 413, 429 and 503 problems besides. :func:`describe_answers` rewrites
a service's document once, when it is first asked for:

- the 422 and its schemas go, and every error answer is an RFC 9457 problem
  (``application/problem+json``, the shared ``Problem`` schema) whose ``code``
  is an enum of the codes that operation can give with that status;
- the answers every operation of a kind shares are added to what the route
  declares with :func:`problems` (a malformed request where it takes input, a
  body too large where it takes a body, 401 where it needs credentials, 503
  where it needs the database, 404 where a path parameter may match nothing);
- the service's security schemes are declared, and required where it needs
  credentials.

A test fuzzes each running service with schemathesis and fails on any answer
the document does not describe (``tests/e2e/test_openapi_fuzz.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI

from infra.problem_types import PROBLEM_TYPES
from infra.problems import PROBLEM_JSON
from infra.tokens import REALM_PATH

PROBLEM_REF = "#/components/schemas/Problem"

#: The shared problem schema (RFC 9457 members and the platform's ``code``).
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "description": "An RFC 9457 problem. Act on `code`; `detail` says what was wrong with "
    "this request; `type` is the address of a page that explains the code.",
    "required": ["type", "title", "status", "code", "detail"],
    "properties": {
        "type": {"type": "string", "description": "The page that explains this problem."},
        "title": {"type": "string", "description": "The same for every problem of a type."},
        "status": {"type": "integer", "description": "The HTTP status of the answer."},
        "code": {"type": "string", "description": "The machine code to act on."},
        "detail": {"type": "string", "description": "What was wrong with this request."},
        "errors": {
            "type": "array",
            "description": "For `INVALID_REQUEST`: each field that is wrong, and how.",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
    # Some problems carry more (a sign-in throttle's retryAfter, a rule's field).
    "additionalProperties": True,
}

_DESCRIPTIONS = {
    400: "The request is malformed or refused; `code` says why.",
    401: "Credentials are missing or not valid.",
    403: "The credentials do not allow this.",
    404: "Not found.",
    405: "The path does not take this method.",
    409: "The request conflicts with the current state.",
    413: "The request body is too large.",
    415: "The body's content type is not one this operation reads.",
    422: "The request is well-formed but cannot be carried out.",
    429: "Too many requests; retry after `Retry-After` seconds.",
    503: "The service cannot answer right now; retry after `Retry-After` seconds.",
}

#: The header of an answer that says when to try again.
RETRY_AFTER = {"Retry-After": "Seconds to wait before trying again."}

#: Each problem an operation may answer with: status -> codes.
Answers = Mapping[int, Iterable[str]]


def problem_content(codes: Iterable[str]) -> dict[str, Any]:
    """The ``content`` of a problem answer whose ``code`` is one of ``codes``."""
    known = sorted(set(codes))
    unknown = [code for code in known if code not in PROBLEM_TYPES]
    if unknown:
        raise ValueError(f"problem codes without a type in infra/problem_types.py: {unknown}")
    schema = {
        "allOf": [
            {"$ref": PROBLEM_REF},
            {"type": "object", "properties": {"code": {"type": "string", "enum": known}}},
        ]
    }
    return {PROBLEM_JSON: {"schema": schema}}


def problems(
    answers: Answers, headers: Mapping[int, Mapping[str, str]] | None = None
) -> dict[int | str, dict[str, Any]]:
    """A route's ``responses=`` for the problems it answers with beyond the ones
    :func:`describe_answers` adds to every operation of its kind; ``headers`` names, per
    status, the response headers those answers carry and what each says."""
    described: dict[int | str, dict[str, Any]] = {
        status: {
            "description": _DESCRIPTIONS.get(status, "A problem."),
            "content": problem_content(codes),
        }
        for status, codes in answers.items()
    }
    for status, named in (headers or {}).items():
        described[status]["headers"] = header_docs(named)
    return described


def header_docs(headers: Mapping[str, str]) -> dict[str, Any]:
    """The ``headers`` of a documented answer: each name with what it says."""
    return {
        name: {"description": description, "schema": {"type": "string"}}
        for name, description in headers.items()
    }


@dataclass(frozen=True)
class Security:
    """The credentials a service's operations take: its schemes, the requirement of an
    operation that needs credentials, and which operations need none."""

    schemes: dict[str, Any]
    #: What an operation that needs credentials requires; by ``METHOD /path`` where
    #: operations differ (a callable), else one requirement for all.
    requirement: list[dict[str, list[str]]] | Callable[[str, str], list[dict[str, list[str]]]]
    #: Whether ``METHOD /path`` needs credentials; by default, every ``/v1/`` path does.
    needs: Callable[[str, str], bool] = field(default=lambda method, path: path.startswith("/v1/"))
    #: What checking the credentials of a ``METHOD`` may answer beyond ``UNAUTHORIZED``.
    refusals: Callable[[str], Answers] = field(default=lambda method: {})


#: Operations that touch no database, or answer its absence themselves (``/readyz``):
#: the process's own answers, static pages and the realm's metadata.
_NO_DATABASE = (
    "/healthz",
    "/readyz",
    "/metrics",
    "/docs/",
    "/problems",
    "/.well-known/",
    f"{REALM_PATH}/.well-known/",
)


def describe_answers(app: FastAPI, security: Security | None = None) -> None:
    """Make ``app``'s OpenAPI document describe every answer (module docstring)."""
    build = app.openapi

    described: list[dict[str, Any]] = []  # the document, once rewritten

    def openapi() -> dict[str, Any]:
        if not described:
            document = build()
            _rewrite(document, security)
            described.append(document)
        return described[0]

    app.openapi = openapi  # type: ignore[method-assign]


def _rewrite(document: dict[str, Any], security: Security | None) -> None:
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas["Problem"] = PROBLEM_SCHEMA
    if security is not None:
        components["securitySchemes"] = security.schemes
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            refusals: Answers | None = None
            if security is not None and security.needs(method.upper(), path):
                requirement = security.requirement
                if callable(requirement):
                    requirement = requirement(method.upper(), path)
                operation["security"] = requirement
                refusals = {401: ["UNAUTHORIZED"], **security.refusals(method.upper())}
            _describe(operation, path, refusals)


def _describe(operation: dict[str, Any], path: str, refusals: Answers | None) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    if "HTTPValidationError" in str(responses.get("422")):
        del responses["422"]  # FastAPI's; the services answer validation errors with 400
    takes_input = bool(operation.get("parameters") or operation.get("requestBody"))
    database = not path.startswith(_NO_DATABASE)
    shared: dict[int, set[str]] = {}
    if takes_input:
        shared.setdefault(400, set()).update({"INVALID_REQUEST", "BAD_REQUEST"})
        if database:  # a value every check let through and PostgreSQL still refuses
            shared[400].add("INVALID_VALUE")
    if operation.get("requestBody"):
        shared.setdefault(413, set()).add("BODY_TOO_LARGE")
    if any(parameter.get("in") == "path" for parameter in operation.get("parameters", [])):
        # A value with a slash in it matches no route at all.
        shared.setdefault(404, set()).add("NOT_FOUND")
    for status, codes in (refusals or {}).items():
        shared.setdefault(status, set()).update(codes)
    if database:
        shared.setdefault(503, set()).add("SERVICE_UNAVAILABLE")
    for status, codes in shared.items():
        _add_codes(responses, status, codes)


def _add_codes(responses: dict[str, Any], status: int, codes: Iterable[str]) -> None:
    """Add ``codes`` to the problem answer with ``status``, creating it if need be."""
    answer = responses.get(str(status))
    if answer is None:
        answer = responses[str(status)] = problems({status: codes})[status]
        if status == 503:
            answer["headers"] = header_docs(RETRY_AFTER)
        return
    content = answer.setdefault("content", {})
    media = content.get(PROBLEM_JSON)
    if media is None:
        # The route documented this status with another body (an OAuth error): leave it.
        return
    enum = media["schema"]["allOf"][1]["properties"]["code"]["enum"]
    media["schema"] = problem_content([*enum, *codes])[PROBLEM_JSON]["schema"]


#: The scopes an API client's token carries, as the token endpoint grants them.
PARTNER_SCOPES = {
    "points:trigger": "Trigger rules at the trigger gateway.",
    "points:read": "Read members' balances and transactions at the ledger.",
}


def partner_oauth(token_url: str) -> dict[str, Any]:
    """The scheme of an API client's token: OAuth2 client credentials at ``token_url``."""
    return {
        "type": "oauth2",
        "description": "An API client's access token, from the client-credentials grant.",
        "flows": {"clientCredentials": {"tokenUrl": token_url, "scopes": PARTNER_SCOPES}},
    }


#: The scheme of a business user's token, from the rules service's sign-in.
CONSOLE_BEARER: dict[str, Any] = {
    "type": "http",
    "scheme": "bearer",
    "bearerFormat": "JWT",
    "description": "A business user's token from `POST /v1/auth/login` at the rules service.",
}

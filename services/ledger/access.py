"""Who may read or change an organisation's points: the checks on a caller's principal."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast, get_args

from contracts import Environment
from infra.problems import Problem
from infra.tokens import Principal

ENVIRONMENTS: tuple[str, ...] = get_args(Environment)


class UnknownEnvironment(Problem):
    status = 400
    code = "UNKNOWN_ENVIRONMENT"


class EnvironmentForbidden(Problem):
    status = 403
    code = "ENVIRONMENT_FORBIDDEN"


class RoleForbidden(Problem):
    status = 403
    code = "FORBIDDEN"


@dataclass(frozen=True)
class ReadScope:
    """The organisation and environment a caller's read is confined to."""

    org_id: str
    environment: Environment


def read_scope(principal: Principal, environment: str) -> ReadScope:
    """Where ``principal`` may read members' points in ``environment``, or a problem.

    A client reads its own organisation in its own environment only; a
    business user reads its own organisation in either environment.
    """
    if environment not in ENVIRONMENTS:
        raise UnknownEnvironment(
            f"environment must be one of {', '.join(ENVIRONMENTS)}, not {environment!r}"
        )
    if principal.kind == "client" and principal.environment != environment:
        raise EnvironmentForbidden(
            f"this client belongs to the {principal.environment} environment, not {environment}"
        )
    return ReadScope(org_id=principal.org_id, environment=cast("Environment", environment))


def totals_scope(principal: Principal, environment: str) -> ReadScope:
    """Rule totals are for the console: a business user of the organisation only."""
    if principal.kind != "user":
        raise RoleForbidden("rule totals are for business users of the organisation")
    return read_scope(principal, environment)


def require_editor(principal: Principal) -> None:
    """Only an organisation's admins and editors may change its points by hand."""
    if principal.kind != "user":
        raise RoleForbidden("only a business user of the organisation may do this")
    if principal.role not in ("admin", "editor"):
        raise RoleForbidden("viewers cannot change anything", code="READ_ONLY_ROLE")

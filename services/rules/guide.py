"""The API Integration Guide: the page a third-party developer is sent with a shared rule.

One page per environment, rendered from ``templates/integration_guide.html`` with
this deployment's own URLs, so every curl and Python example on it runs as shown.
The gateway's response codes are listed here rather than imported: services do not
import each other, and a test fails when the gateway gains a code this list lacks.
What each code means is the problem types' catalogue (:mod:`infra.problem_types`),
whose pages :func:`render_problem_types` draws.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import jinja2
from markupsafe import Markup, escape

from contracts.limits import MAX_EXPIRY_DAYS, MAX_MEMBER_BALANCE, MAX_POINTS, MAX_POOL_BALANCE
from infra import request_signing
from infra.problem_types import PROBLEM_TYPES, ProblemType
from infra.signing import DEFAULT_TOLERANCE_SECONDS, EVENT_ID_HEADER, SIGNATURE_HEADER
from infra.tokens import (
    API_AUDIENCE,
    AUTHORIZATION_SERVER_METADATA_PATH,
    OIDC_DISCOVERY_PATH,
    REALM_PATH,
)
from services.rules.settings import RulesSettings
from services.rules.tokens import AUDIENCE_METADATA

TEMPLATES = Path(__file__).parent / "templates"

_CODE_SPAN = re.compile(r"`([^`]+)`")


def code_spans(text: str) -> Markup:
    """``text`` escaped, with its `backticked` parts set as code."""
    parts = _CODE_SPAN.split(text)  # plain text and code, alternating
    return Markup("").join(
        Markup("<code>{}</code>").format(part) if index % 2 else escape(part)
        for index, part in enumerate(parts)
    )


_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
)
_templates.filters["code_spans"] = code_spans

#: A callback receiver the examples can run on the developer's own machine; the
#: gateway accepts loopback callback URLs only in development mode.
LOCAL_CALLBACK_URL = "http://127.0.0.1:9000/points-callback"
PUBLIC_CALLBACK_URL = "https://partner.example.com/points-callback"
LOCAL_EXPIRY_CALLBACK_URL = "http://127.0.0.1:9000/points-expired"
PUBLIC_EXPIRY_CALLBACK_URL = "https://partner.example.com/points-expired"


@dataclass(frozen=True)
class GatewayResponse:
    """One answer the trigger gateway can give, as a developer should read it."""

    status: int
    kind: ProblemType

    @property
    def code(self) -> str:
        return self.kind.code

    @property
    def meaning(self) -> str:
        return self.kind.meaning

    @property
    def action(self) -> str:
        return self.kind.action


def _answers(*answers: tuple[int, str]) -> tuple[GatewayResponse, ...]:
    return tuple(GatewayResponse(status, PROBLEM_TYPES[code]) for status, code in answers)


#: Every machine ``code`` the gateway answers with, in the order its checks run.
GATEWAY_RESPONSES = _answers(
    (401, "UNAUTHORIZED"),
    (400, "INVALID_REQUEST"),
    (413, "BODY_TOO_LARGE"),
    (400, "BAD_REQUEST"),
    (400, "INVALID_VALUE"),
    (401, "SIGNATURE_REQUIRED"),
    (401, "SIGNATURE_EXPIRED"),
    (401, "SIGNATURE_INVALID"),
    (429, "RATE_LIMITED"),
    (409, "REQUEST_ID_REUSED"),
    (400, "INVALID_CALLBACK_URL"),
    (503, "CLIENT_NOT_READY"),
    (503, "CALLBACK_HOST_UNRESOLVED"),
    (400, "RULE_NOT_FOUND"),
    (403, "ENVIRONMENT_MISMATCH"),
    (400, "RULE_NOT_API_TRIGGERABLE"),
    (400, "RULE_INACTIVE"),
    (400, "RULE_NOT_STARTED"),
    (400, "RULE_ENDED"),
    (403, "CLIENT_NOT_AUTHORIZED"),
    (400, "INVALID_USER_ID"),
    (400, "MEMBER_BLOCKED"),
    (400, "INVALID_AMOUNT"),
    (400, "AMOUNT_OVER_MAXIMUM"),
    (400, "CAP_EXCEEDED"),
    (400, "MEMBER_CAP_EXCEEDED"),
    (503, "SERVICE_UNAVAILABLE"),
)

#: Answers of ``GET /v1/points/requests/{requestId}`` beyond those of the trigger.
POLLING_RESPONSES = _answers((404, "REQUEST_NOT_FOUND"))


def render_integration_guide(settings: RulesSettings, environment: str) -> str:
    """The guide's HTML for ``environment`` (``staging`` or ``production``)."""
    local = settings.is_development
    return _templates.get_template("integration_guide.html").render(
        environment=environment,
        environment_name=environment.capitalize(),
        token_url=settings.token_url,
        trigger_url=settings.trigger_url(environment).rstrip("/"),
        token_lifetime=settings.client_token_lifetime_seconds,
        callback_url=LOCAL_CALLBACK_URL if local else PUBLIC_CALLBACK_URL,
        expiry_callback_url=LOCAL_EXPIRY_CALLBACK_URL if local else PUBLIC_EXPIRY_CALLBACK_URL,
        rules_url=settings.public_url.rstrip("/"),
        metadata_url=settings.public_url.rstrip("/") + AUTHORIZATION_SERVER_METADATA_PATH,
        oidc_discovery_url=settings.public_url.rstrip("/") + OIDC_DISCOVERY_PATH,
        issuer=settings.public_url.rstrip("/") + REALM_PATH,
        audience_metadata=AUDIENCE_METADATA,
        audience=API_AUDIENCE,
        ledger_url=settings.ledger_public_url.rstrip("/"),
        max_expiry_days=MAX_EXPIRY_DAYS,
        development=local,
        responses=GATEWAY_RESPONSES,
        problem_types_url=settings.problem_types_url.rstrip("/"),
        problem_title=lambda code: PROBLEM_TYPES[code].title,
        polling_responses=POLLING_RESPONSES,
        signature_header=SIGNATURE_HEADER,
        event_id_header=EVENT_ID_HEADER,
        tolerance=DEFAULT_TOLERANCE_SECONDS,
        request_timestamp_header=request_signing.TIMESTAMP_HEADER,
        request_signature_header=request_signing.SIGNATURE_HEADER,
        request_signature_window=request_signing.DEFAULT_WINDOW_SECONDS,
        pss_salt_bytes=request_signing.PSS_SALT_BYTES,
        min_rsa_bits=request_signing.MIN_RSA_BITS,
        max_points=MAX_POINTS,
        max_member_balance=MAX_MEMBER_BALANCE,
        max_pool_balance=MAX_POOL_BALANCE,
    )


def render_problem_types(settings: RulesSettings, kind: ProblemType | None = None) -> str:
    """The page of one problem type, or with ``kind`` None the list of them all."""
    return _templates.get_template("problem_types.html").render(
        kind=kind,
        kinds=sorted(PROBLEM_TYPES.values(), key=lambda each: each.code),
        types_url=settings.problem_types_url.rstrip("/"),
        guide_url=settings.integration_guide_for("staging"),
    )

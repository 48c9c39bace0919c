"""The API Integration Guide: the page a third-party developer is sent with a shared rule.

One page per environment, rendered from ``templates/integration_guide.html`` with
this deployment's own URLs, so every curl and Python example on it runs as shown.
The gateway's response codes are listed here rather than imported: services do not
import each other, and a test fails when the gateway gains a code this list lacks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import jinja2
from markupsafe import Markup, escape

from contracts.limits import MAX_EXPIRY_DAYS, MAX_MEMBER_BALANCE, MAX_POINTS, MAX_POOL_BALANCE
from infra import request_signing
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
    code: str
    meaning: str
    action: str


#: Every machine ``code`` the gateway answers with, in the order its checks run.
GATEWAY_RESPONSES = (
    GatewayResponse(
        401,
        "UNAUTHORIZED",
        "No `Authorization: Bearer` header, or the token is expired, tampered with, not "
        "issued by this platform, lacks the `points:trigger` scope, or its client was revoked.",
        "Get a new token and retry; if that fails too, ask the business for new credentials.",
    ),
    GatewayResponse(
        400,
        "INVALID_REQUEST",
        "The body is not JSON, a field is missing, has the wrong type or is too long, "
        "an unknown field was sent, or a text field holds a control character (NUL, "
        "anything below U+0020, U+007F to U+009F) or an unpaired surrogate. The `errors` "
        "list names each field and what is wrong.",
        "Fix the request; sending it again unchanged gets the same answer.",
    ),
    GatewayResponse(
        413,
        "BODY_TOO_LARGE",
        "The request body is larger than the gateway accepts (64 KiB unless the operator "
        "changed `MAX_BODY_BYTES`), whether its `Content-Length` says so or it was sent "
        "chunked. Nothing was read further or recorded.",
        "Send the trigger's fields only: a trigger is a few hundred bytes.",
    ),
    GatewayResponse(
        400,
        "BAD_REQUEST",
        "The request itself is malformed: a `Content-Length` that is not a number, or a body "
        "that cannot be read as the content type says.",
        "Fix the request; your HTTP library normally sets these headers for you.",
    ),
    GatewayResponse(
        400,
        "INVALID_VALUE",
        "A value passed every check but cannot be stored (a number out of range).",
        "Fix the value; sending it again unchanged gets the same answer.",
    ),
    GatewayResponse(
        401,
        "SIGNATURE_REQUIRED",
        "Your client has a registered public key, so every request must be signed, and "
        "`X-Points-Timestamp` or `X-Points-Request-Signature` is missing.",
        "Sign the request: see Signing requests.",
    ),
    GatewayResponse(
        401,
        "SIGNATURE_EXPIRED",
        "`X-Points-Timestamp` is further from the gateway's clock than the signature window "
        "allows, in either direction.",
        "Check your server's clock (use NTP) and sign each request when you send it.",
    ),
    GatewayResponse(
        401,
        "SIGNATURE_INVALID",
        "The signature does not match the request's method, path and query, timestamp and "
        "body under your registered key, is not base64, or the timestamp is not whole seconds.",
        "Sign exactly the bytes you send, with the private key whose public key the operator "
        "registered last.",
    ),
    GatewayResponse(
        429,
        "RATE_LIMITED",
        "The client sent more requests than its rate limit allows. Nothing was recorded.",
        "Wait the number of seconds in `Retry-After`, then send the same request again.",
    ),
    GatewayResponse(
        409,
        "REQUEST_ID_REUSED",
        "This `requestId` was used before by this client with a different body.",
        "Use a new `requestId` for a new request; resend the original body to get the "
        "original answer.",
    ),
    GatewayResponse(
        400,
        "INVALID_CALLBACK_URL",
        "The `callbackUrl` is not an http(s) URL, its host name is not valid (IDNA refuses "
        "it), or its host is a private, loopback, "
        "link-local or otherwise non-public address.",
        "Use a publicly reachable URL (loopback is allowed only on a development stack).",
    ),
    GatewayResponse(
        503,
        "CLIENT_NOT_READY",
        "The client was created a moment ago and the gateway has not received it yet "
        "(it takes milliseconds). Nothing was recorded.",
        "Retry after `Retry-After` seconds with the same `requestId`.",
    ),
    GatewayResponse(
        503,
        "CALLBACK_HOST_UNRESOLVED",
        "The host of the `callbackUrl` could not be looked up in time. Nothing was recorded.",
        "Retry later with the same `requestId`; check that the host name exists.",
    ),
    GatewayResponse(
        400,
        "RULE_NOT_FOUND",
        "No rule with this `ruleId` exists for your client's organisation.",
        "Check the Rule ID the business shared with you.",
    ),
    GatewayResponse(
        403,
        "ENVIRONMENT_MISMATCH",
        "The rule belongs to a different environment from your client's: a staging client "
        "cannot trigger a production rule, nor the other way round.",
        "Use the client credentials and URLs of the rule's environment.",
    ),
    GatewayResponse(
        400,
        "RULE_NOT_API_TRIGGERABLE",
        "The rule does not have the API-trigger option turned on.",
        "Ask the business to turn on API triggering for the rule.",
    ),
    GatewayResponse(
        400,
        "RULE_INACTIVE",
        "The rule is a draft, paused or archived.",
        "Ask the business to activate the rule.",
    ),
    GatewayResponse(
        400,
        "RULE_NOT_STARTED",
        "The rule's start date is still ahead.",
        "Trigger it once it has started.",
    ),
    GatewayResponse(
        400,
        "RULE_ENDED",
        "The rule's end date has passed, or the instant its points expire (pointsExpireAt).",
        "Ask the business for a current rule.",
    ),
    GatewayResponse(
        403,
        "CLIENT_NOT_AUTHORIZED",
        "Your client is not among the rule's authorised API clients.",
        "Ask the business to authorise your client on the rule.",
    ),
    GatewayResponse(
        400,
        "INVALID_USER_ID",
        "`userId` is not a string of 1 to 128 characters made of letters, digits and "
        "`. _ : @ + -`, starting with a letter or digit.",
        "Send the member's id in that form.",
    ),
    GatewayResponse(
        400,
        "MEMBER_BLOCKED",
        "The business has blocked this member in this environment. Nothing was recorded; "
        "requests for the member it had already accepted fail with the same reason.",
        "Do not retry: tell the member to contact the business. Triggers are accepted again "
        "once the business unblocks the member.",
    ),
    GatewayResponse(
        400,
        "INVALID_AMOUNT",
        "`amount` is not a whole number from 1 to 9007199254740991 (a decimal, a string, a "
        "boolean, zero or a negative number).",
        "Send a positive integer.",
    ),
    GatewayResponse(
        400,
        "AMOUNT_OVER_MAXIMUM",
        "`amount` is more than the rule allows in one request.",
        "Send a smaller amount.",
    ),
    GatewayResponse(
        400,
        "CAP_EXCEEDED",
        "The rule's total cap would be exceeded by this amount.",
        "The rule has run out of points; ask the business to raise its cap.",
    ),
    GatewayResponse(
        400,
        "MEMBER_CAP_EXCEEDED",
        "This member's cap on the rule would be exceeded by this amount.",
        "The member has had all the points this rule gives one member.",
    ),
    GatewayResponse(
        503,
        "SERVICE_UNAVAILABLE",
        "The gateway cannot record requests right now. Nothing was recorded: a request is "
        "never answered 202 and then lost.",
        "Retry after `Retry-After` seconds with the same `requestId`.",
    ),
)

#: Answers of ``GET /v1/points/requests/{requestId}`` beyond those of the trigger.
POLLING_RESPONSES = (
    GatewayResponse(
        404,
        "REQUEST_NOT_FOUND",
        "Your client never sent this `requestId`, or it was forgotten after the retention period.",
        "Check the `requestId`; each client sees only its own requests.",
    ),
)


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

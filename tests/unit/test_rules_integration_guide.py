"""The API Integration Guide the rules service serves for each environment.

The page is checked against the code it documents: every machine code the
trigger gateway can answer with must be on it, and its Python signature check
must accept what the platform signs and refuse what it should not.
"""

from __future__ import annotations

import html
import json
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import infra.http_problems
import infra.problems
import services.trigger
from contracts import PointsResult
from contracts.limits import MAX_MEMBER_BALANCE, MAX_POINTS, MAX_POOL_BALANCE
from infra.http import Unauthorized
from infra.request_signing import SIGNATURE_HEADER as REQUEST_SIGNATURE_HEADER
from infra.request_signing import TIMESTAMP_HEADER, public_pem
from infra.signing import SIGNATURE_HEADER, sign, verify
from infra.tokens import (
    API_AUDIENCE,
    AUTHORIZATION_SERVER_METADATA_PATH,
    OIDC_DISCOVERY_PATH,
    REALM_PATH,
    TOKEN_PATH,
)
from services.notifier.queueing import expiry_callback_body
from services.notifier.settings import NotifierSettings
from services.rules.app import create_app
from services.rules.settings import RulesSettings
from services.rules.tokens import AUDIENCE_METADATA
from services.trigger.checks import Refused
from services.trigger.settings import TriggerSettings
from services.trigger.signatures import SignatureInvalid, SignedRequest, check_request_signature

PUBLIC_URL = "https://rules.points.example.com"
TRIGGER_URLS = {
    "staging": "https://trigger-staging.points.example.com",
    "production": "https://trigger.points.example.com",
}
ENVIRONMENTS = tuple(TRIGGER_URLS)
SECRET = "whsec_test-signing-secret"
BODY = b'{"requestId":"order-1001","status":"succeeded","amount":10}'
NOW = 1_762_337_702

EC_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)

_CODE = re.compile(r"\bcode\s*=\s*\"([A-Z][A-Z0-9_]+)\"")


def gateway_codes() -> set[str]:
    """Every machine code the trigger gateway's source raises, and the shared ones it uses."""
    package = Path(services.trigger.__file__).parent
    sources = [path.read_text() for path in package.glob("*.py")]
    sources += [
        Path(module.__file__).read_text() for module in (infra.problems, infra.http_problems)
    ]
    codes = {code for source in sources for code in _CODE.findall(source)}
    return codes | {Unauthorized.code}


def settings(**overrides: Any) -> RulesSettings:
    values: dict[str, Any] = {
        "mode": "development",
        "public_url": PUBLIC_URL,
        "staging_trigger_url": TRIGGER_URLS["staging"],
        "production_trigger_url": TRIGGER_URLS["production"],
        **overrides,
    }
    return RulesSettings(**values)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    # The guide needs no database: the app is served without starting its runtime.
    app, _ = create_app(settings())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as client:
        yield client


async def guide(http: httpx.AsyncClient, environment: str) -> str:
    response = await http.get("/docs/integration-guide", params={"environment": environment})
    assert response.status_code == 200, response.text
    return response.text


def readable(page: str) -> str:
    """The page's text as a reader sees it: no tags, entities resolved, spaces collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", page)).split())


def code_block(page: str, block_id: str) -> str:
    """The text of the ``<code id=block_id>`` block, as a reader would copy it."""
    found = re.search(rf'<code[^>]*\bid="{block_id}"[^>]*>(.*?)</code>', page, re.DOTALL)
    assert found is not None, f"the guide has no code block {block_id}"
    return html.unescape(found.group(1))


def an_expiry() -> PointsResult:
    """An expiry as the ledger publishes it."""
    return PointsResult(
        request_id="order-1001",
        transaction_id=uuid.uuid4(),
        client_id="cli_1",
        rule_id="rul_1",
        user_id="member-42",
        type="earn",
        amount=100,
        status="expired",
        balance=250,
        processed_at=datetime.now(UTC),
        expiry_id=uuid.uuid4(),
        expired_amount=60,
        expires_at=datetime.now(UTC),
    )


def signer(page: str) -> Any:
    namespace: dict[str, Any] = {}
    exec(code_block(page, "sign-request-python"), namespace)  # noqa: S102 - our own page
    return namespace["signed_headers"]


def verifier(page: str) -> Any:
    namespace: dict[str, Any] = {}
    exec(code_block(page, "verify-signature-python"), namespace)  # noqa: S102 - our own page
    return namespace["verify_signature"]


class TestTheGuidePage:
    @pytest.mark.parametrize("environment", ENVIRONMENTS)
    async def test_each_environment_gets_an_html_page(
        self, http: httpx.AsyncClient, environment: str
    ) -> None:
        response = await http.get("/docs/integration-guide", params={"environment": environment})

        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        assert f">{environment.capitalize()}<" in response.text

    @pytest.mark.parametrize("environment", ENVIRONMENTS)
    async def test_the_page_names_its_environments_trigger_url_and_the_token_url(
        self, http: httpx.AsyncClient, environment: str
    ) -> None:
        page = await guide(http, environment)

        assert f"{TRIGGER_URLS[environment]}/v1/points/requests" in page
        assert f"{PUBLIC_URL}{TOKEN_PATH}" in page
        other = next(url for env, url in TRIGGER_URLS.items() if env != environment)
        assert other not in page

    @pytest.mark.parametrize("environment", ENVIRONMENTS)
    async def test_every_machine_code_of_the_gateway_is_documented(
        self, http: httpx.AsyncClient, environment: str
    ) -> None:
        page = await guide(http, environment)

        documented = set(re.findall(r'id="code-([A-Z0-9_]+)"', page))
        assert gateway_codes() - documented == set()

    async def test_the_table_of_answers_is_what_the_gateways_openapi_document_says(
        self,
    ) -> None:
        from services.rules.guide import GATEWAY_RESPONSES
        from services.trigger.app import create_app as create_gateway

        gateway, _ = create_gateway(TriggerSettings(mode="development"))
        trigger = gateway.openapi()["paths"]["/v1/points/requests"]["post"]
        documented = {
            (int(status), code)
            for status, answer in trigger["responses"].items()
            for media in answer.get("content", {}).values()
            if "allOf" in media["schema"]
            for code in media["schema"]["allOf"][1]["properties"]["code"]["enum"]
        }

        assert {(answer.status, answer.code) for answer in GATEWAY_RESPONSES} == documented

    async def test_the_code_list_the_test_checks_against_is_not_empty(self) -> None:
        # Guards the check above against a regex that silently stops matching.
        assert {"RULE_NOT_FOUND", "RATE_LIMITED", "UNAUTHORIZED", "INVALID_REQUEST"} <= (
            gateway_codes()
        )

    async def test_the_page_explains_the_signature_scheme_and_its_headers(
        self, http: httpx.AsyncClient
    ) -> None:
        page = readable(await guide(http, "staging"))

        assert "X-Points-Event-Id" in page
        assert "X-Points-Signature" in page
        assert "t=<unix seconds>,v1=" in page
        assert 'HMAC-SHA256(callbackSigningSecret, "<t>.<raw body>")' in page

    async def test_the_page_documents_idempotency_rate_limits_and_polling(
        self, http: httpx.AsyncClient
    ) -> None:
        page = readable(await guide(http, "production"))

        for phrase in (
            "same transactionId",
            "at least 7 days",
            "Retry-After",
            'RateLimit-Policy: "burst";q=100;w=2',
            'RateLimit: "burst";r=99;t=1',
            "RateLimit-Limit",
            "RateLimit-Remaining",
            "RateLimit-Reset",
            "removed in release 0.2.0",
            "/v1/points/requests/{requestId}",
        ):
            assert phrase in page

    async def test_the_page_lists_every_failure_reason_and_the_limits(
        self, http: httpx.AsyncClient
    ) -> None:
        page = readable(await guide(http, "production"))

        for phrase in (
            "INSUFFICIENT_BALANCE",
            "BALANCE_LIMIT_EXCEEDED",
            "PROCESSING_FAILED",
            str(MAX_POINTS),
            str(MAX_MEMBER_BALANCE),
            str(MAX_POOL_BALANCE),
        ):
            assert phrase in page

    async def test_the_page_loads_nothing_from_elsewhere_and_runs_no_script(
        self, http: httpx.AsyncClient
    ) -> None:
        response = await http.get("/docs/integration-guide", params={"environment": "staging"})

        assert "<script" not in response.text
        assert "<link" not in response.text
        assert not re.search(r"\bsrc=", response.text)
        assert "default-src 'none'" in response.headers["content-security-policy"]

    @pytest.mark.parametrize("query", [{"environment": "development"}, {}])
    async def test_an_unknown_or_missing_environment_is_a_400_problem(
        self, http: httpx.AsyncClient, query: dict[str, str]
    ) -> None:
        response = await http.get("/docs/integration-guide", params=query)

        assert response.status_code == 400
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["errors"][0]["field"] == "query.environment"

    async def test_every_python_example_on_the_page_is_valid_python(
        self, http: httpx.AsyncClient
    ) -> None:
        page = await guide(http, "staging")

        for block_id in (
            "verify-signature-python",
            "callback-receiver-python",
            "trigger-client-python",
            "sign-request-python",
            "signed-call-python",
        ):
            compile(code_block(page, block_id), block_id, "exec")


class TestTheGuidesDiscoverySection:
    async def test_the_addresses_it_gives_serve_the_realms_metadata(
        self, http: httpx.AsyncClient
    ) -> None:
        page = await guide(http, "staging")

        for block in ("metadata-url", "oidc-discovery-url"):
            response = await http.get(code_block(page, block))
            assert response.status_code == 200, block
            assert response.json()["issuer"] == PUBLIC_URL + REALM_PATH
        assert code_block(page, "metadata-url") == PUBLIC_URL + AUTHORIZATION_SERVER_METADATA_PATH
        assert code_block(page, "oidc-discovery-url") == PUBLIC_URL + OIDC_DISCOVERY_PATH

    async def test_it_explains_every_member_of_the_metadata(self, http: httpx.AsyncClient) -> None:
        page = readable(await guide(http, "staging"))
        metadata = (await http.get(AUTHORIZATION_SERVER_METADATA_PATH)).json()

        assert [member for member in metadata if member not in page] == []
        assert AUDIENCE_METADATA in metadata
        assert f"the aud of every client token, {API_AUDIENCE}" in page


def default(settings_class: Any, name: str) -> Any:
    return settings_class.model_fields[name].default


def spoken_duration(seconds: float) -> str:
    """How the guide writes a delay: "10 seconds", "1 minute", "2 hours"."""
    for unit, size in (("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'' if count == 1 else 's'}"
    raise ValueError(seconds)


class TestExpiryAndBlockedMembers:
    async def test_the_guide_shows_the_balance_read_with_its_expiring_list(
        self, http: httpx.AsyncClient
    ) -> None:
        page = await guide(http, "production")

        balance = code_block(page, "balance-curl")
        ledger_url = default(RulesSettings, "ledger_url")
        assert balance.startswith(f"curl -s '{ledger_url}/v1/members/member-42/balance")
        assert "environment=production" in balance
        assert '"expiring": [{"amount": 100, "expiresAt":' in html.unescape(page)

    async def test_the_guide_registers_the_expiry_callback_at_the_rules_api(
        self, http: httpx.AsyncClient
    ) -> None:
        page = await guide(http, "staging")

        register = code_block(page, "expiry-callback-curl")
        assert f"{PUBLIC_URL}/v1/auth/login" in register
        assert f"-X PUT '{PUBLIC_URL}/v1/clients/'\"$CLIENT_ID\"'/expiry-callback'" in register
        assert "points client set-expiry-callback" in readable(page)

    async def test_member_blocked_is_both_an_answer_and_a_failure_reason(
        self, http: httpx.AsyncClient
    ) -> None:
        page = await guide(http, "staging")

        assert 'id="code-MEMBER_BLOCKED"' in page
        assert 'id="reason-MEMBER_BLOCKED"' in page

    async def test_the_member_blocked_problem_is_the_one_the_gateway_answers(
        self, http: httpx.AsyncClient
    ) -> None:
        page = await guide(http, "staging")

        documented = json.loads(code_block(page, "member-blocked-problem"))
        answered = Refused("…", code="MEMBER_BLOCKED").body(f"{PUBLIC_URL}/problems")

        assert documented == answered

    async def test_the_expiry_callback_body_has_the_fields_the_notifier_sends_in_order(
        self, http: httpx.AsyncClient
    ) -> None:
        page = await guide(http, "staging")

        documented = json.loads(code_block(page, "expiry-callback-body"))
        sent = json.loads(expiry_callback_body(an_expiry()))

        assert list(documented) == list(sent)
        assert (documented["event"], documented["status"]) == ("points.expired", "expired")


class TestTheGuideStatesThePlatformsOwnDefaults:
    """The guide is served by the rules service, which cannot read the gateway's or the
    notifier's settings; these tests keep the numbers it states in step with theirs."""

    async def test_the_rate_limit_and_idempotency_retention(self, http: httpx.AsyncClient) -> None:
        page = readable(await guide(http, "staging"))

        per_second = default(TriggerSettings, "rate_limit_per_second")
        burst = default(TriggerSettings, "rate_limit_burst")
        retention = default(TriggerSettings, "idempotency_retention_days")
        assert f"by default {per_second:g} a second, bursts of {burst}" in page
        assert f"at least {retention} days" in page

    async def test_the_callback_timeout_and_retry_schedule(self, http: httpx.AsyncClient) -> None:
        page = readable(await guide(http, "staging"))

        timeout = default(NotifierSettings, "total_timeout")
        delays = [
            spoken_duration(delay) for delay in default(NotifierSettings, "retry_schedule_seconds")
        ]
        assert f"no answer within {timeout:g} seconds" in page
        assert f"(after {', '.join(delays[:-1])} and {delays[-1]})" in page


class TestTheDocumentedSignatureCheck:
    """The guide's own Python snippet, run against what ``infra.signing`` produces."""

    async def test_it_accepts_a_callback_signed_by_the_platform(
        self, http: httpx.AsyncClient
    ) -> None:
        verify_signature = verifier(await guide(http, "staging"))

        header = sign(SECRET, body=BODY, timestamp=NOW)

        assert verify_signature(SECRET, BODY, header, now=NOW + 10) is True

    async def test_it_accepts_a_signature_made_right_now(self, http: httpx.AsyncClient) -> None:
        verify_signature = verifier(await guide(http, "staging"))

        assert verify_signature(SECRET, BODY, sign(SECRET, body=BODY)) is True

    async def test_it_refuses_a_tampered_body(self, http: httpx.AsyncClient) -> None:
        verify_signature = verifier(await guide(http, "staging"))

        header = sign(SECRET, body=BODY, timestamp=NOW)

        assert verify_signature(SECRET, BODY.replace(b"10", b"99"), header, now=NOW) is False

    async def test_it_refuses_another_clients_secret(self, http: httpx.AsyncClient) -> None:
        verify_signature = verifier(await guide(http, "staging"))

        header = sign("whsec_someone-else", body=BODY, timestamp=NOW)

        assert verify_signature(SECRET, BODY, header, now=NOW) is False

    async def test_it_refuses_a_stale_timestamp(self, http: httpx.AsyncClient) -> None:
        verify_signature = verifier(await guide(http, "staging"))

        header = sign(SECRET, body=BODY, timestamp=NOW)

        assert verify_signature(SECRET, BODY, header, now=NOW + 3600) is False

    async def test_during_a_rotation_either_secret_verifies_and_no_other(
        self, http: httpx.AsyncClient
    ) -> None:
        verify_signature = verifier(await guide(http, "staging"))
        old, new = "whsec_before-the-rotation", "whsec_after-the-rotation"

        header = sign(new, old, body=BODY, timestamp=NOW)

        assert header.count("v1=") == 2
        for secret in (new, old):
            assert verify_signature(secret, BODY, header, now=NOW) is True
            assert verify(secret, BODY, header, now=NOW) is True
        assert verify_signature("whsec_someone-else", BODY, header, now=NOW) is False
        assert verify("whsec_someone-else", BODY, header, now=NOW) is False

    @pytest.mark.parametrize("header", ["", "v1=abc", "t=soon,v1=abc", "garbage"])
    async def test_it_refuses_a_malformed_header(
        self, http: httpx.AsyncClient, header: str
    ) -> None:
        verify_signature = verifier(await guide(http, "staging"))

        assert verify_signature(SECRET, BODY, header, now=NOW) is False

    async def test_the_header_it_reads_is_the_one_the_notifier_sends(
        self, http: httpx.AsyncClient
    ) -> None:
        page = await guide(http, "staging")

        assert f'self.headers.get("{SIGNATURE_HEADER}", "")' in code_block(
            page, "callback-receiver-python"
        )


class TestTheDocumentedRequestSigning:
    """The guide's signing snippet, checked by the gateway's own signature check."""

    async def test_the_page_explains_the_headers_the_string_the_algorithms_and_the_window(
        self, http: httpx.AsyncClient
    ) -> None:
        page = readable(await guide(http, "staging"))

        for phrase in (
            "X-Points-Timestamp",
            "X-Points-Request-Signature",
            "<METHOD>",
            "<path?query>",
            "lowercase hex of the raw body bytes",
            "ECDSA with SHA-256",
            "RSASSA-PSS with SHA-256, MGF1 with SHA-256, and a salt of 32 bytes",
            "up to 300 seconds before or after",
            "SIGNATURE_REQUIRED",
            "SIGNATURE_EXPIRED",
            "SIGNATURE_INVALID",
        ):
            assert phrase in page, phrase

    @pytest.mark.parametrize("kind", ["rsa", "ec"])
    async def test_its_headers_pass_the_gateways_check(
        self, http: httpx.AsyncClient, kind: str
    ) -> None:
        signed_headers = signer(await guide(http, "staging"))
        private_key = RSA_KEY if kind == "rsa" else EC_KEY
        url = f"{TRIGGER_URLS['staging']}/v1/points/requests/order-1?view=full"

        headers = signed_headers(private_key, "GET", url, b"", now=NOW)

        check_request_signature(
            public_pem(private_key.public_key()),
            SignedRequest(
                "GET",
                "/v1/points/requests/order-1?view=full",
                b"",
                headers[TIMESTAMP_HEADER],
                headers[REQUEST_SIGNATURE_HEADER],
            ),
            at=NOW,
            window_seconds=300,
        )

    async def test_its_signature_does_not_carry_over_to_another_body(
        self, http: httpx.AsyncClient
    ) -> None:
        signed_headers = signer(await guide(http, "staging"))
        url = f"{TRIGGER_URLS['staging']}/v1/points/requests"

        headers = signed_headers(EC_KEY, "POST", url, BODY, now=NOW)

        with pytest.raises(SignatureInvalid):
            check_request_signature(
                public_pem(EC_KEY.public_key()),
                SignedRequest(
                    "POST",
                    "/v1/points/requests",
                    BODY.replace(b"10", b"99"),
                    headers[TIMESTAMP_HEADER],
                    headers[REQUEST_SIGNATURE_HEADER],
                ),
                at=NOW,
                window_seconds=300,
            )


class TestTheGuideAddress:
    def test_it_is_this_services_own_page_unless_set(self) -> None:
        assert (
            settings().integration_guide_for("production")
            == f"{PUBLIC_URL}/docs/integration-guide?environment=production"
        )

    def test_a_configured_address_gets_the_environment_added(self) -> None:
        configured = settings(integration_guide_url="https://docs.example.com/points?lang=en")

        assert (
            configured.integration_guide_for("staging")
            == "https://docs.example.com/points?lang=en&environment=staging"
        )

"""The rules service over HTTP: the OAuth2 token issuer, console login and the rule lifecycle.

One rules service runs for the whole module against a real PostgreSQL and a
real broker (its outbox relay publishes); every test seeds an organisation of
its own, so tests do not see each other's data.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt
import pytest
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from structlog.testing import capture_logs

from contracts import RULES_LIFECYCLE, RuleLifecycleEvent
from infra.tokens import (
    API_AUDIENCE,
    AUTHORIZATION_SERVER_METADATA_PATH,
    JWKS_PATH,
    OIDC_DISCOVERY_PATH,
    REALM_PATH,
    TOKEN_PATH,
)
from services.rules.tokens import AUDIENCE_METADATA
from tests.helpers import (
    RULES_URL,
    Client,
    RulesStack,
    Tenant,
    bearer,
    client_token,
    login,
    request_token,
    rule_body,
)


async def create_rule(http: httpx.AsyncClient, tenant: Tenant, **overrides: Any) -> dict[str, Any]:
    body = rule_body(authorizedClientIds=[tenant.client.client_id], **overrides)
    response = await http.post("/v1/rules", json=body, headers=tenant.headers)
    assert response.status_code == 201, response.text
    rule: dict[str, Any] = response.json()
    return rule


async def transition(
    http: httpx.AsyncClient, tenant: Tenant, rule_id: str, action: str
) -> httpx.Response:
    return await http.post(f"/v1/rules/{rule_id}/{action}", headers=tenant.headers)


def basic_auth(client_id: str, secret: str) -> dict[str, str]:
    encoded = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


def assert_bearer_token_response(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["access_token"].count(".") == 2
    assert body["expires_in"] > 0
    assert "points:trigger" in body["scope"].split()


async def post_form(
    http: httpx.AsyncClient, fields: list[tuple[str, str]], headers: dict[str, str] | None = None
) -> httpx.Response:
    """A token request with ``fields`` in this order, a name as often as it is listed."""
    return await http.post(
        TOKEN_PATH,
        content=urlencode(fields),
        headers={"Content-Type": "application/x-www-form-urlencoded", **(headers or {})},
    )


def issued_tokens(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The token endpoint's log lines of tokens it issued (it stores none)."""
    return [line for line in logs if line["event"] == "token.issued"]


class TestTokenEndpoint:
    async def test_form_client_authentication_gets_a_bearer_token(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        response = await request_token(http, tenant.client)

        assert_bearer_token_response(response)

    async def test_http_basic_client_authentication_gets_a_bearer_token(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        response = await http.post(
            TOKEN_PATH,
            data={"grant_type": "client_credentials"},
            headers=basic_auth(tenant.client.client_id, tenant.client.client_secret),
        )

        assert_bearer_token_response(response)

    async def test_a_wrong_secret_is_refused_as_an_invalid_client(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        response = await request_token(http, Client(tenant.client.client_id, "not-the-secret"))

        assert response.status_code == 401
        assert response.json()["error"] == "invalid_client"

    async def test_a_wrong_secret_over_http_basic_is_refused_as_an_invalid_client(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        response = await http.post(
            TOKEN_PATH,
            data={"grant_type": "client_credentials"},
            headers=basic_auth(tenant.client.client_id, "not-the-secret"),
        )

        assert response.status_code == 401
        assert response.json()["error"] == "invalid_client"
        assert response.headers["WWW-Authenticate"].startswith("Basic")

    async def test_the_password_grant_is_unsupported(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        response = await http.post(
            TOKEN_PATH,
            data={
                "grant_type": "password",
                "client_id": tenant.client.client_id,
                "client_secret": tenant.client.client_secret,
                "username": "someone",
                "password": "something",
            },
        )

        assert response.status_code == 400
        assert response.json()["error"] == "unsupported_grant_type"

    async def test_a_request_without_a_grant_type_is_invalid(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        response = await http.post(
            TOKEN_PATH,
            data={
                "client_id": tenant.client.client_id,
                "client_secret": tenant.client.client_secret,
            },
        )

        assert response.status_code == 400
        assert response.json()["error"] == "invalid_request"

    async def test_a_revoked_client_gets_no_token(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant
    ) -> None:
        await stack.seeder.revoke(tenant.client.client_id)

        response = await request_token(http, tenant.client)

        assert response.status_code == 401
        assert response.json()["error"] == "invalid_client"

    async def test_old_and_new_secrets_both_work_during_the_rotation_overlap(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant
    ) -> None:
        rotated = await stack.seeder.rotate(tenant.client.client_id)

        assert rotated.client_secret != tenant.client.client_secret
        assert_bearer_token_response(await request_token(http, tenant.client))
        assert_bearer_token_response(await request_token(http, rotated))

    async def test_tokens_are_es256_signed_with_a_key_the_jwks_publishes(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        token = await client_token(http, tenant.client)
        jwks = (await http.get(JWKS_PATH)).json()

        header = jwt.get_unverified_header(token)
        assert header["alg"] == "ES256"
        published = {key["kid"]: key for key in jwks["keys"]}
        assert header["kid"] in published
        claims = jwt.decode(
            token,
            jwt.PyJWK(published[header["kid"]]).key,
            algorithms=["ES256"],
            audience=API_AUDIENCE,
            issuer=RULES_URL + REALM_PATH,
        )
        assert claims["sub"] == tenant.client.client_id
        assert claims["org_id"] == tenant.org_id
        assert claims["environment"] == "staging"

    @pytest.mark.parametrize(
        ("name", "again"),
        [
            ("grant_type", "password"),
            ("client_id", "same"),
            ("client_secret", "not-the-secret"),
            ("scope", "points:read"),
        ],
    )
    async def test_a_parameter_sent_twice_is_an_invalid_request_and_gets_no_token(
        self, http: httpx.AsyncClient, tenant: Tenant, name: str, again: str
    ) -> None:
        # The first of each pair would get a token: only the repetition is wrong.
        first = {
            "grant_type": "client_credentials",
            "client_id": tenant.client.client_id,
            "client_secret": tenant.client.client_secret,
            "scope": "points:trigger",
        }
        second = first[name] if again == "same" else again
        fields = [*first.items(), (name, second)]

        with capture_logs() as logs:
            refused = await post_form(http, fields)
            # The same client asking properly shows the capture hears the issuer.
            accepted = await request_token(http, tenant.client)

        assert refused.status_code == 400
        body = refused.json()
        assert body["error"] == "invalid_request"
        assert name in body["error_description"]
        assert "access_token" not in body
        assert refused.headers["Cache-Control"] == "no-store"
        assert_bearer_token_response(accepted)
        assert len(issued_tokens(logs)) == 1

    async def test_a_repeated_grant_type_is_refused_with_http_basic_authentication_too(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        response = await post_form(
            http,
            [("grant_type", "client_credentials"), ("grant_type", "client_credentials")],
            headers=basic_auth(tenant.client.client_id, tenant.client.client_secret),
        )

        assert response.status_code == 400
        assert response.json()["error"] == "invalid_request"
        assert "grant_type" in response.json()["error_description"]

    async def test_an_empty_duplicate_counts_as_not_sent(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        # RFC 6749 section 3.1: a parameter without a value is treated as omitted.
        response = await post_form(
            http,
            [
                ("grant_type", "client_credentials"),
                ("client_id", tenant.client.client_id),
                ("client_secret", tenant.client.client_secret),
                ("grant_type", ""),
            ],
        )

        assert_bearer_token_response(response)


#: Where clients look for the realm's metadata: RFC 8414's location (the well-known segment
#: between host and issuer path) and OpenID Connect Discovery's (appended to the issuer).
DISCOVERY_PATHS = (AUTHORIZATION_SERVER_METADATA_PATH, OIDC_DISCOVERY_PATH)


async def discovered(http: httpx.AsyncClient, path: str) -> dict[str, Any]:
    response = await http.get(path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    document: dict[str, Any] = response.json()
    return document


def issuer_of(path: str) -> str:
    """The issuer a client derives the metadata location ``path`` from (RFC 8414 section 3)."""
    if path.startswith("/.well-known/oauth-authorization-server/"):
        return RULES_URL + path.removeprefix("/.well-known/oauth-authorization-server")
    return RULES_URL + path.removesuffix("/.well-known/openid-configuration")


def validate_with_authlib(document: dict[str, Any]) -> None:
    """authlib's check of every RFC 8414 member but ``response_types_supported``.

    authlib reads that member as REQUIRED, as RFC 8414 section 2 was published; the realm
    serves no response type and leaves it out, as section 3.2 and erratum 7793 have it
    (``TokenIssuer.metadata`` says why). The test below shows this is authlib's one objection.
    """
    metadata = AuthorizationServerMetadata(document)
    for member in metadata.REGISTRY_KEYS:
        if member != "response_types_supported":
            getattr(metadata, f"validate_{member}")()


@pytest.fixture
def insecure_transport_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """authlib insists on https but for loopback; the test service is http://rules.test."""
    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")


class TestDiscovery:
    @pytest.mark.parametrize("path", DISCOVERY_PATHS)
    async def test_the_metadata_names_the_token_endpoint_and_the_jwks_uri(
        self, http: httpx.AsyncClient, path: str
    ) -> None:
        document = await discovered(http, path)

        assert document["issuer"] == RULES_URL + REALM_PATH
        assert document["token_endpoint"] == RULES_URL + TOKEN_PATH
        assert document["jwks_uri"] == RULES_URL + JWKS_PATH

    @pytest.mark.parametrize("path", DISCOVERY_PATHS)
    async def test_the_issuer_is_the_one_the_location_was_derived_from(
        self, http: httpx.AsyncClient, path: str
    ) -> None:
        document = await discovered(http, path)

        assert document["issuer"] == issuer_of(path)

    async def test_both_locations_serve_the_same_document(self, http: httpx.AsyncClient) -> None:
        documents = [await discovered(http, path) for path in DISCOVERY_PATHS]

        assert documents[0] == documents[1]

    @pytest.mark.parametrize("path", DISCOVERY_PATHS)
    async def test_it_describes_a_server_of_the_client_credentials_grant_only(
        self, http: httpx.AsyncClient, path: str
    ) -> None:
        document = await discovered(http, path)

        assert document["grant_types_supported"] == ["client_credentials"]
        assert "authorization_endpoint" not in document
        assert "response_types_supported" not in document
        assert not [name for name, value in document.items() if value == []]

    @pytest.mark.usefixtures("insecure_transport_allowed")
    @pytest.mark.parametrize("path", DISCOVERY_PATHS)
    async def test_authlib_finds_the_metadata_valid_but_for_the_response_types_it_lacks(
        self, http: httpx.AsyncClient, path: str
    ) -> None:
        document = await discovered(http, path)

        validate_with_authlib(document)
        with pytest.raises(ValueError, match='"response_types_supported" is required'):
            AuthorizationServerMetadata(document).validate()

    @pytest.mark.usefixtures("insecure_transport_allowed")
    @pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
    async def test_authlib_gets_a_token_at_the_discovered_endpoint_with_each_advertised_method(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant, method: str
    ) -> None:
        document = await discovered(http, AUTHORIZATION_SERVER_METADATA_PATH)
        assert method in document["token_endpoint_auth_methods_supported"]

        async with AsyncOAuth2Client(
            client_id=tenant.client.client_id,
            client_secret=tenant.client.client_secret,
            token_endpoint_auth_method=method,
            transport=httpx.ASGITransport(app=stack.app),
        ) as oauth:
            token = await oauth.fetch_token(
                document["token_endpoint"], grant_type="client_credentials"
            )

        assert token["token_type"] == "Bearer"
        assert token["access_token"].count(".") == 2

    async def test_the_advertised_audience_and_scopes_are_those_of_the_tokens(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        document = await discovered(http, AUTHORIZATION_SERVER_METADATA_PATH)
        token = await client_token(http, tenant.client)
        keys = jwt.PyJWKSet.from_dict((await http.get(document["jwks_uri"])).json())

        signing_key = keys[jwt.get_unverified_header(token)["kid"]]
        claims = jwt.decode(
            token,
            signing_key.key,
            algorithms=["ES256"],
            audience=document[AUDIENCE_METADATA],
            issuer=document["issuer"],
        )
        assert document[AUDIENCE_METADATA] == API_AUDIENCE
        assert set(claims["scope"].split()) <= set(document["scopes_supported"])


class TestLogin:
    async def test_the_right_password_gives_a_bearer_token(
        self, http: httpx.AsyncClient, stack: RulesStack
    ) -> None:
        organisation = await stack.seeder.organisation()

        response = await http.post(
            "/v1/auth/login",
            json={"email": organisation.email, "password": "correct horse battery staple"},
        )

        assert response.status_code == 200, response.text
        body = response.json()
        assert body["tokenType"] == "Bearer"
        assert body["expiresIn"] > 0
        rules = await http.get("/v1/rules", headers=bearer(body["accessToken"]))
        assert rules.status_code == 200

    async def test_a_wrong_password_is_refused(
        self, http: httpx.AsyncClient, stack: RulesStack
    ) -> None:
        organisation = await stack.seeder.organisation()

        response = await http.post(
            "/v1/auth/login", json={"email": organisation.email, "password": "wrong password"}
        )

        assert response.status_code == 401
        assert "accessToken" not in response.json()

    async def test_a_viewer_cannot_create_a_rule(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant
    ) -> None:
        viewer = await stack.seeder.user(tenant.org_id, "viewer")
        headers = bearer(await login(http, viewer))

        response = await http.post("/v1/rules", json=rule_body(apiTrigger=False), headers=headers)

        assert response.status_code == 403
        assert response.json()["code"] == "READ_ONLY_ROLE"
        listed = await http.get("/v1/rules", headers=headers)
        assert listed.json()["items"] == []

    async def test_a_client_token_cannot_act_as_a_business_user(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        token = await client_token(http, tenant.client)

        response = await http.get("/v1/rules", headers=bearer(token))

        assert response.status_code == 401


class TestRuleLifecycle:
    async def test_a_new_rule_is_a_draft_at_version_one(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        rule = await create_rule(http, tenant)

        assert rule["status"] == "draft"
        assert rule["version"] == 1
        assert rule["authorizedClientIds"] == [tenant.client.client_id]
        fetched = await http.get(f"/v1/rules/{rule['id']}", headers=tenant.headers)
        assert fetched.json()["id"] == rule["id"]

    async def test_a_client_of_another_organisation_cannot_be_authorised(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant
    ) -> None:
        other = await stack.seeder.organisation("Other Org")
        foreign = await stack.seeder.client(other.id, "staging")

        response = await http.post(
            "/v1/rules",
            json=rule_body(authorizedClientIds=[foreign.client_id]),
            headers=tenant.headers,
        )

        assert response.status_code == 400
        assert response.json()["code"] == "INVALID_AUTHORIZED_CLIENTS"

    async def test_a_client_of_another_environment_cannot_be_authorised(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant
    ) -> None:
        production = await stack.seeder.client(tenant.org_id, "production")

        response = await http.post(
            "/v1/rules",
            json=rule_body(authorizedClientIds=[production.client_id]),
            headers=tenant.headers,
        )

        assert response.status_code == 400
        assert response.json()["code"] == "INVALID_AUTHORIZED_CLIENTS"

    async def test_a_rule_cannot_end_before_it_starts(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        starts = datetime.now(UTC) + timedelta(days=2)

        response = await http.post(
            "/v1/rules",
            json=rule_body(
                startsAt=starts.isoformat(), endsAt=(starts - timedelta(days=1)).isoformat()
            ),
            headers=tenant.headers,
        )

        assert response.status_code == 400
        assert response.json()["code"] == "INVALID_PERIOD"

    async def test_a_change_based_on_a_stale_version_is_refused(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        rule = await create_rule(http, tenant)
        first = await http.patch(
            f"/v1/rules/{rule['id']}", json={"version": 1, "name": "First"}, headers=tenant.headers
        )
        assert first.status_code == 200

        second = await http.patch(
            f"/v1/rules/{rule['id']}", json={"version": 1, "name": "Second"}, headers=tenant.headers
        )

        assert second.status_code == 409
        assert second.json()["code"] == "STALE_VERSION"
        current = (await http.get(f"/v1/rules/{rule['id']}", headers=tenant.headers)).json()
        assert (current["name"], current["version"]) == ("First", 2)

    async def test_an_api_triggered_rule_without_clients_cannot_be_activated(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        response = await http.post("/v1/rules", json=rule_body(), headers=tenant.headers)
        rule = response.json()

        activation = await transition(http, tenant, rule["id"], "activate")

        assert activation.status_code == 422
        assert activation.json()["code"] == "ACTIVATION_BLOCKED"
        current = (await http.get(f"/v1/rules/{rule['id']}", headers=tenant.headers)).json()
        assert current["status"] == "draft"

    async def test_a_rule_is_activated_paused_and_archived_in_turn(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        rule = await create_rule(http, tenant)

        seen = []
        for action in ("activate", "pause", "activate", "archive"):
            response = await transition(http, tenant, rule["id"], action)
            assert response.status_code == 200, response.text
            seen.append((response.json()["status"], response.json()["version"]))

        assert seen == [("active", 2), ("paused", 3), ("active", 4), ("archived", 5)]

    async def test_an_archived_rule_cannot_be_activated_again(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        rule = await create_rule(http, tenant)
        assert (await transition(http, tenant, rule["id"], "archive")).status_code == 200

        response = await transition(http, tenant, rule["id"], "activate")

        assert response.status_code == 409
        current = (await http.get(f"/v1/rules/{rule['id']}", headers=tenant.headers)).json()
        assert current["status"] == "archived"

    async def test_a_draft_cannot_be_paused(self, http: httpx.AsyncClient, tenant: Tenant) -> None:
        rule = await create_rule(http, tenant)

        response = await transition(http, tenant, rule["id"], "pause")

        assert response.status_code == 409
        assert response.json()["code"] == "INVALID_TRANSITION"

    async def test_the_type_cannot_change_after_activation(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        rule = await create_rule(http, tenant)
        active = (await transition(http, tenant, rule["id"], "activate")).json()

        response = await http.patch(
            f"/v1/rules/{rule['id']}",
            json={"version": active["version"], "type": "redeem"},
            headers=tenant.headers,
        )

        assert response.status_code == 409
        assert response.json()["code"] == "RULE_IMMUTABLE"

    async def test_the_environment_cannot_change_after_activation(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        rule = await create_rule(http, tenant)
        active = (await transition(http, tenant, rule["id"], "activate")).json()

        response = await http.patch(
            f"/v1/rules/{rule['id']}",
            json={"version": active["version"], "environment": "production"},
            headers=tenant.headers,
        )

        assert response.status_code == 400
        current = (await http.get(f"/v1/rules/{rule['id']}", headers=tenant.headers)).json()
        assert (current["environment"], current["version"]) == ("staging", active["version"])

    @pytest.mark.parametrize("field", ["name", "description", "apiTrigger", "type"])
    async def test_a_field_every_rule_has_cannot_be_cleared_with_null(
        self, http: httpx.AsyncClient, tenant: Tenant, field: str
    ) -> None:
        rule = await create_rule(http, tenant)

        response = await http.patch(
            f"/v1/rules/{rule['id']}", json={"version": 1, field: None}, headers=tenant.headers
        )

        assert response.status_code == 400
        assert response.json()["code"] == "INVALID_REQUEST"
        current = (await http.get(f"/v1/rules/{rule['id']}", headers=tenant.headers)).json()
        assert (current[field], current["version"]) == (rule[field], 1)

    async def test_an_optional_cap_can_be_cleared_with_null(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        rule = await create_rule(http, tenant)

        response = await http.patch(
            f"/v1/rules/{rule['id']}", json={"version": 1, "capMax": None}, headers=tenant.headers
        )

        assert response.status_code == 200
        assert response.json()["capMax"] is None

    @pytest.mark.parametrize("field", ["capMax", "capPerMember", "maxAmountPerRequest"])
    async def test_a_cap_or_limit_too_large_to_count_exactly_is_refused(
        self, http: httpx.AsyncClient, tenant: Tenant, field: str
    ) -> None:
        response = await http.post(
            "/v1/rules", json=rule_body(apiTrigger=False, **{field: 10**30}), headers=tenant.headers
        )

        assert response.status_code == 400
        assert response.json()["code"] == "INVALID_REQUEST"

    async def test_a_draft_can_still_change_its_type(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        rule = await create_rule(http, tenant)

        response = await http.patch(
            f"/v1/rules/{rule['id']}", json={"version": 1, "type": "redeem"}, headers=tenant.headers
        )

        assert response.status_code == 200
        assert response.json()["type"] == "redeem"


class TestShareInfo:
    async def test_share_info_has_exactly_the_fields_a_developer_needs(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        rule = await create_rule(http, tenant, name="Coffee stamps")
        assert (await transition(http, tenant, rule["id"], "activate")).status_code == 200

        response = await http.get(f"/v1/rules/{rule['id']}/share", headers=tenant.headers)

        assert response.status_code == 200
        assert response.json() == {
            "ruleName": "Coffee stamps",
            "ruleId": rule["id"],
            "ruleType": "Earn Points",
            "environment": "Staging",
            "urlEndpoint": "https://trigger-staging.example.com/v1/points/requests",
            "integrationGuideUrl": f"{RULES_URL}/docs/integration-guide?environment=staging",
            # The rule's expiry policy (issue 19): this rule's points never expire.
            "pointsExpireAfterDays": None,
            "pointsExpireAt": None,
        }

    async def test_a_production_rule_links_the_production_guide_which_names_its_url(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant
    ) -> None:
        production = await stack.seeder.client(tenant.org_id, "production")
        body = rule_body(environment="production", authorizedClientIds=[production.client_id])
        created = await http.post("/v1/rules", json=body, headers=tenant.headers)
        rule = created.json()
        assert (await transition(http, tenant, rule["id"], "activate")).status_code == 200
        share = (await http.get(f"/v1/rules/{rule['id']}/share", headers=tenant.headers)).json()

        guide = await http.get(share["integrationGuideUrl"])

        assert share["integrationGuideUrl"].endswith(
            "/docs/integration-guide?environment=production"
        )
        assert guide.status_code == 200
        assert guide.headers["content-type"].startswith("text/html")
        assert share["urlEndpoint"] in guide.text


class TestTenantIsolation:
    async def test_another_organisations_user_cannot_see_or_change_the_rule(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant
    ) -> None:
        rule = await create_rule(http, tenant)
        intruder = await stack.seeder.organisation("Intruder Inc")
        headers = bearer(await login(http, intruder.email))

        responses = [
            await http.get(f"/v1/rules/{rule['id']}", headers=headers),
            await http.get(f"/v1/rules/{rule['id']}/share", headers=headers),
            await http.patch(
                f"/v1/rules/{rule['id']}", json={"version": 1, "name": "Mine"}, headers=headers
            ),
            await http.post(f"/v1/rules/{rule['id']}/archive", headers=headers),
        ]

        assert [response.status_code for response in responses] == [404, 404, 404, 404]
        assert (await http.get("/v1/rules", headers=headers)).json()["items"] == []
        current = (await http.get(f"/v1/rules/{rule['id']}", headers=tenant.headers)).json()
        assert (current["name"], current["status"]) == (rule["name"], "draft")


class TestLifecycleEvents:
    async def test_every_change_puts_a_rule_snapshot_with_its_new_version_in_the_outbox(
        self, http: httpx.AsyncClient, stack: RulesStack, tenant: Tenant
    ) -> None:
        rule = await create_rule(http, tenant)
        await http.patch(
            f"/v1/rules/{rule['id']}", json={"version": 1, "capMax": 500}, headers=tenant.headers
        )
        for action in ("activate", "pause", "archive"):
            await transition(http, tenant, rule["id"], action)

        rows = await stack.runtime.pool.fetch(
            "SELECT topic, key, payload FROM outbox WHERE key = $1 ORDER BY id", rule["id"]
        )

        events = [RuleLifecycleEvent.model_validate_json(row["payload"]) for row in rows]
        assert {row["topic"] for row in rows} == {RULES_LIFECYCLE}
        assert [(event.type, event.data.version, event.data.status) for event in events] == [
            ("rule.created", 1, "draft"),
            ("rule.updated", 2, "draft"),
            ("rule.activated", 3, "active"),
            ("rule.paused", 4, "paused"),
            ("rule.archived", 5, "archived"),
        ]
        assert events[1].data.cap_max == 500
        assert all(event.org_id == tenant.org_id for event in events)

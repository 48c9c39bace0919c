"""Problem types as a developer meets them: an error's ``type`` opens the page that
explains it, on the rules service, whichever service answered."""

from __future__ import annotations

import httpx
import pytest

from infra.problem_types import PROBLEM_TYPES
from infra.problems import PROBLEM_JSON
from services.ledger.app import create_app as create_ledger_app
from services.ledger.settings import LedgerSettings
from services.notifier.app import create_app as create_notifier_app
from services.notifier.settings import NotifierSettings
from services.trigger.app import create_app as create_trigger_app
from services.trigger.settings import TriggerSettings
from tests.helpers import RULES_URL, RulesStack, Tenant, asgi_client

TYPES_URL = f"{RULES_URL}/problems"


async def page_of(http: httpx.AsyncClient, problem: dict[str, str]) -> str:
    """The page the problem's ``type`` names, fetched from the rules service."""
    assert problem["type"].startswith(f"{TYPES_URL}/"), problem["type"]
    page = await http.get(problem["type"])
    assert page.status_code == 200, problem["type"]
    assert page.headers["content-type"].startswith("text/html")
    return page.text


class TestTheRulesServiceExplainsEachType:
    async def test_every_type_has_a_page_with_its_title_code_and_what_to_do(
        self, http: httpx.AsyncClient
    ) -> None:
        for kind in PROBLEM_TYPES.values():
            page = await http.get(f"/problems/{kind.slug}")

            assert page.status_code == 200, kind.code
            assert f'<h1 id="title">{kind.title}</h1>' in page.text.replace("&#39;", "'")
            assert f'<code id="code">{kind.code}</code>' in page.text
            assert f"{TYPES_URL}/{kind.slug}" in page.text
            assert 'id="action"' in page.text

    async def test_the_list_links_every_type(self, http: httpx.AsyncClient) -> None:
        page = await http.get("/problems")

        assert page.status_code == 200
        for kind in PROBLEM_TYPES.values():
            assert f'href="{TYPES_URL}/{kind.slug}"' in page.text

    async def test_an_unknown_type_is_a_problem_that_points_to_the_list(
        self, http: httpx.AsyncClient
    ) -> None:
        answer = await http.get("/problems/no-such-thing")

        assert answer.status_code == 404
        assert answer.headers["content-type"] == PROBLEM_JSON
        assert answer.json()["type"] == f"{TYPES_URL}/not-found"
        assert "/problems lists them all" in answer.json()["detail"]

    async def test_a_rule_that_does_not_exist_links_to_its_explanation(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        answer = await http.get("/v1/rules/rul_missing", headers=tenant.headers)

        assert answer.status_code == 404
        problem = answer.json()
        assert problem["code"] == "RULE_NOT_FOUND"
        assert problem["title"] == "Rule not found"
        assert '<h1 id="title">Rule not found</h1>' in await page_of(http, problem)

    async def test_a_failed_sign_in_says_how_to_authenticate(
        self, http: httpx.AsyncClient, tenant: Tenant
    ) -> None:
        answer = await http.post(
            "/v1/auth/login", json={"email": "nobody@example.com", "password": "wrong password"}
        )

        assert answer.status_code == 401
        assert answer.headers["www-authenticate"] == 'Bearer realm="console"'
        await page_of(http, answer.json())

    async def test_a_method_the_path_does_not_take_is_answered_with_the_ones_it_does(
        self, http: httpx.AsyncClient
    ) -> None:
        answer = await http.delete("/docs/integration-guide")

        assert answer.status_code == 405
        assert answer.headers["allow"] == "GET"
        assert answer.json()["title"] == "Method not allowed"
        await page_of(http, answer.json())


@pytest.mark.parametrize(
    "make_app",
    [
        lambda: create_trigger_app(TriggerSettings(mode="development", token_issuer_url=RULES_URL))[
            0
        ],
        lambda: create_ledger_app(LedgerSettings(mode="development", token_issuer_url=RULES_URL))[
            0
        ],
        lambda: create_notifier_app(
            NotifierSettings(mode="development", problem_types_url=TYPES_URL)
        )[0],
    ],
    ids=["trigger", "ledger", "notifier"],
)
async def test_other_services_errors_link_to_the_rules_services_pages(
    make_app: object, stack: RulesStack
) -> None:
    async with asgi_client(make_app(), "http://service.test") as service:  # type: ignore[operator]
        missing = await service.get("/v1/nothing-here")
        wrong_method = await service.delete("/healthz")

    assert missing.status_code == 404
    assert missing.json()["title"] == "Not found"
    assert "Not found" in await page_of(stack.http, missing.json())
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "GET"
    await page_of(stack.http, wrong_method.json())

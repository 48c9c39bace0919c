"""The console's cookie session: sign in, CSRF protection on every change, sign out, and
the ledger reads and callback-log calls its pages make through the session.

One rules service runs for the whole module against a real PostgreSQL and a
real broker; every test seeds an organisation of its own and drives it through
a console (an HTTP client with a cookie jar) of its own.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest

from services.rules.readers import LedgerReader, NotifierClient, UpstreamClient
from tests.helpers import (
    PASSWORD,
    RULES_URL,
    RulesStack,
    bearer,
    login,
    rule_body,
)

COOKIE = "points_console_session"


@dataclass
class Console:
    """A browser's view of the service: its own cookie jar and, once signed in, a CSRF token."""

    http: httpx.AsyncClient
    email: str
    csrf_token: str = ""

    async def sign_in(self, password: str = PASSWORD) -> httpx.Response:
        response = await self.http.post(
            "/v1/auth/session", json={"email": self.email, "password": password}
        )
        if response.status_code == 200:
            self.csrf_token = response.json()["csrfToken"]
        return response

    def csrf(self, token: str | None = None) -> dict[str, str]:
        return {"X-CSRF-Token": token if token is not None else self.csrf_token}

    async def create_rule(self, headers: dict[str, str] | None = None) -> httpx.Response:
        return await self.http.post(
            "/v1/rules", json=rule_body(name=unique_name()), headers=headers
        )

    async def rule_names(self) -> list[str]:
        response = await self.http.get("/v1/rules")
        assert response.status_code == 200, response.text
        return [rule["name"] for rule in response.json()["items"]]


@pytest.fixture
async def console_factory(stack: RulesStack) -> AsyncIterator[Any]:
    clients: list[httpx.AsyncClient] = []

    async def console(email: str, address: str = "127.0.0.1") -> Console:
        transport = httpx.ASGITransport(app=stack.app, client=(address, 40000))
        http = httpx.AsyncClient(transport=transport, base_url=RULES_URL)
        clients.append(http)
        return Console(http, email)

    yield console
    for http in clients:
        await http.aclose()


@pytest.fixture
async def console(stack: RulesStack, console_factory: Any) -> Console:
    """A signed-in console of a new organisation's admin."""
    organisation = await stack.seeder.organisation()
    signed_in: Console = await console_factory(organisation.email)
    assert (await signed_in.sign_in()).status_code == 200
    return signed_in


@dataclass
class FakeLedger:
    """The ledger's read API as the console's proxy meets it, on a clock the test moves."""

    now: float = 0.0
    requests: list[httpx.Request] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(200, json={"balance": 0})

    @property
    def tokens(self) -> list[str]:
        return [
            request.headers["Authorization"].removeprefix("Bearer ") for request in self.requests
        ]


@asynccontextmanager
async def upstream_in_place(
    stack: RulesStack, name: str, upstream: UpstreamClient
) -> AsyncIterator[None]:
    """The console reaches ``upstream`` instead of its own ``app.state.<name>`` meanwhile."""
    real = getattr(stack.app.state, name)
    setattr(stack.app.state, name, upstream)
    try:
        yield
    finally:
        setattr(stack.app.state, name, real)
        await upstream.aclose()


@pytest.fixture
async def ledger(stack: RulesStack) -> AsyncIterator[FakeLedger]:
    """The module's console reads from a fake ledger for the test."""
    fake = FakeLedger()
    http = httpx.AsyncClient(transport=httpx.MockTransport(fake))
    reader = LedgerReader(stack.settings, stack.app.state.rules.issuer, http=http, clock=fake.clock)
    async with upstream_in_place(stack, "console_ledger", reader):
        yield fake


async def read_balance(console: Console) -> httpx.Response:
    response = await console.http.get(
        "/console/api/members/member-1/balance", params={"environment": "staging"}
    )
    assert response.status_code == 200, response.text
    return response


def unique_name() -> str:
    """A rule name no other test's rule has, so a console's list shows which rules it made."""
    return f"Rule {uuid.uuid4().hex[:6]}"


def session_cookie_header(response: httpx.Response) -> list[str]:
    """The attributes of the Set-Cookie header for the session cookie, lower case."""
    headers = [
        value for value in response.headers.get_list("set-cookie") if value.startswith(f"{COOKIE}=")
    ]
    assert len(headers) == 1, response.headers
    return [part.strip().lower() for part in headers[0].split(";")]


class TestSigningIn:
    async def test_signing_in_sets_an_http_only_strict_cookie_for_the_whole_site(
        self, stack: RulesStack, console_factory: Any
    ) -> None:
        organisation = await stack.seeder.organisation()
        console = await console_factory(organisation.email)

        response = await console.sign_in()

        assert response.status_code == 200, response.text
        attributes = session_cookie_header(response)
        assert "httponly" in attributes
        assert "samesite=strict" in attributes
        assert "path=/" in attributes
        assert f"max-age={stack.seeder.settings.user_token_lifetime_seconds}" in attributes
        assert "secure" not in attributes  # development mode serves plain http
        assert set(response.json()) == {"csrfToken"}

    async def test_a_wrong_password_is_refused_and_sets_no_cookie(
        self, stack: RulesStack, console_factory: Any
    ) -> None:
        organisation = await stack.seeder.organisation()
        console = await console_factory(organisation.email)

        response = await console.sign_in("wrong password")

        assert response.status_code == 401
        assert "set-cookie" not in response.headers

    async def test_failed_sign_ins_are_throttled_like_logins(
        self, stack: RulesStack, console_factory: Any
    ) -> None:
        organisation = await stack.seeder.organisation()
        console = await console_factory(organisation.email, f"10.99.{uuid.uuid4().int % 250}.7")
        failures = [await console.sign_in("wrong password") for _ in range(5)]

        response = await console.sign_in()

        assert [failure.status_code for failure in failures] == [401] * 5
        assert response.status_code == 429
        assert response.json()["code"] == "TOO_MANY_LOGIN_ATTEMPTS"
        assert "set-cookie" not in response.headers

    async def test_the_session_names_its_user_and_hands_out_a_fresh_working_csrf_token(
        self, console: Console
    ) -> None:
        response = await console.http.get("/v1/auth/session")

        assert response.status_code == 200, response.text
        body = response.json()
        assert body["email"] == console.email
        assert body["role"] == "admin"
        assert body["id"].startswith("usr_") and body["orgId"].startswith("org_")
        assert body["csrfToken"] != console.csrf_token
        created = await console.create_rule(console.csrf(body["csrfToken"]))
        assert created.status_code == 201, created.text

    async def test_the_session_id_is_stored_nowhere_in_clear(
        self, stack: RulesStack, console: Console
    ) -> None:
        session_id = console.http.cookies[COOKIE]
        assert (await console.create_rule(console.csrf())).status_code == 201

        # Every row of every table of the service's schema, as text.
        statements = await stack.runtime.pool.fetch(
            "SELECT format('SELECT coalesce(string_agg(t::text, chr(10)), '''')"
            " FROM rules.%I AS t', table_name) AS statement"
            " FROM information_schema.tables WHERE table_schema = 'rules'"
        )
        everything = "\n".join(
            [await stack.runtime.pool.fetchval(row["statement"]) for row in statements]
        )
        stored = await stack.runtime.pool.fetchval(
            "SELECT count(*) FROM console_sessions WHERE id_hash = $1",
            hashlib.sha256(session_id.encode()).digest(),
        )

        assert len(session_id) >= 32
        assert console.email in everything  # the dump does show what is stored in clear
        assert session_id not in everything
        assert stored == 1


class TestCsrfProtection:
    async def test_a_rule_created_with_the_csrf_header_is_saved(self, console: Console) -> None:
        response = await console.create_rule(console.csrf())

        assert response.status_code == 201, response.text
        assert await console.rule_names() == [response.json()["name"]]

    async def test_a_change_without_the_csrf_header_is_refused_and_nothing_is_saved(
        self, console: Console
    ) -> None:
        response = await console.create_rule()

        assert response.status_code == 403
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "CSRF_TOKEN_INVALID"
        assert await console.rule_names() == []

    async def test_another_sessions_csrf_token_is_refused(
        self, stack: RulesStack, console: Console, console_factory: Any
    ) -> None:
        other = await console_factory(console.email)
        assert (await other.sign_in()).status_code == 200

        response = await console.create_rule(console.csrf(other.csrf_token))

        assert response.status_code == 403
        assert response.json()["code"] == "CSRF_TOKEN_INVALID"
        assert await console.rule_names() == []

    @pytest.mark.parametrize("token", ["", "garbage", "AAAA.AAAA", "not base64!.x"])
    async def test_a_malformed_csrf_token_is_refused(self, console: Console, token: str) -> None:
        response = await console.create_rule(console.csrf(token))

        assert response.status_code == 403
        assert response.json()["code"] == "CSRF_TOKEN_INVALID"

    async def test_every_state_changing_route_checks_the_token(self, console: Console) -> None:
        rule = (await console.create_rule(console.csrf())).json()
        path = f"/v1/rules/{rule['id']}"

        patched = await console.http.patch(path, json={"version": 1, "name": "Renamed"})
        archived = await console.http.post(f"{path}/archive")
        read = await console.http.get(path)

        assert [patched.status_code, archived.status_code] == [403, 403]
        assert read.status_code == 200
        assert read.json()["name"] == rule["name"]
        assert read.json()["status"] == "draft"

    async def test_bearer_requests_need_no_csrf_token(
        self, stack: RulesStack, console_factory: Any
    ) -> None:
        organisation = await stack.seeder.organisation()
        http = (await console_factory(organisation.email)).http
        token = await login(http, organisation.email)

        response = await http.post(
            "/v1/rules", json=rule_body(name=unique_name()), headers=bearer(token)
        )

        assert response.status_code == 201, response.text

    async def test_a_viewer_signed_in_by_cookie_still_cannot_change_anything(
        self, stack: RulesStack, console: Console, console_factory: Any
    ) -> None:
        organisation = await stack.seeder.organisation()
        viewer = await console_factory(await stack.seeder.user(organisation.id, "viewer"))
        assert (await viewer.sign_in()).status_code == 200

        response = await viewer.create_rule(viewer.csrf())

        assert response.status_code == 403
        assert response.json()["code"] == "READ_ONLY_ROLE"


class TestSessionEnd:
    async def test_an_expired_session_is_refused(self, stack: RulesStack, console: Console) -> None:
        await stack.runtime.pool.execute(
            "UPDATE console_sessions SET expires_at = now() - interval '1 second'"
            " WHERE id_hash = $1",
            hashlib.sha256(console.http.cookies[COOKIE].encode()).digest(),
        )

        read = await console.http.get("/v1/rules")
        change = await console.create_rule(console.csrf())
        session = await console.http.get("/v1/auth/session")

        assert [read.status_code, change.status_code, session.status_code] == [401, 401, 401]

    async def test_a_deleted_session_is_refused(self, stack: RulesStack, console: Console) -> None:
        await stack.runtime.pool.execute(
            "DELETE FROM console_sessions WHERE id_hash = $1",
            hashlib.sha256(console.http.cookies[COOKIE].encode()).digest(),
        )

        response = await console.create_rule(console.csrf())

        assert response.status_code == 401
        assert response.json()["code"] == "UNAUTHORIZED"

    async def test_signing_out_ends_the_session_and_clears_the_cookie(
        self, stack: RulesStack, console: Console
    ) -> None:
        session_id = console.http.cookies[COOKIE]

        response = await console.http.delete("/v1/auth/session", headers=console.csrf())

        assert response.status_code == 204
        attributes = session_cookie_header(response)
        assert "max-age=0" in attributes and "path=/" in attributes
        assert COOKIE not in console.http.cookies
        remaining = await stack.runtime.pool.fetchval(
            "SELECT count(*) FROM console_sessions WHERE id_hash = $1",
            hashlib.sha256(session_id.encode()).digest(),
        )
        assert remaining == 0
        replayed = await console.http.get("/v1/rules", headers={"Cookie": f"{COOKIE}={session_id}"})
        assert replayed.status_code == 401

    async def test_signing_out_needs_the_csrf_token(self, console: Console) -> None:
        response = await console.http.delete("/v1/auth/session")

        assert response.status_code == 403
        assert (await console.http.get("/v1/auth/session")).status_code == 200

    async def test_signing_out_twice_is_harmless(self, console: Console) -> None:
        first = await console.http.delete("/v1/auth/session", headers=console.csrf())
        second = await console.http.delete("/v1/auth/session", headers=console.csrf())

        assert [first.status_code, second.status_code] == [204, 204]

    async def test_without_a_session_the_session_endpoint_answers_401(
        self, console_factory: Any
    ) -> None:
        console = await console_factory("nobody@example.com")

        response = await console.http.get("/v1/auth/session")

        assert response.status_code == 401


class TestLedgerReads:
    async def test_a_read_is_passed_to_the_ledger_for_the_signed_in_user(
        self, console: Console, ledger: FakeLedger
    ) -> None:
        response = await read_balance(console)

        [request] = ledger.requests
        assert (request.url.path, request.url.params["environment"]) == (
            "/v1/members/member-1/balance",
            "staging",
        )
        claims = jwt.decode(ledger.tokens[0], options={"verify_signature": False})
        assert claims["email"] == console.email
        assert response.json() == {"balance": 0}

    async def test_a_users_reads_share_one_token_while_it_is_fresh(
        self, console: Console, ledger: FakeLedger
    ) -> None:
        for _ in range(3):
            await read_balance(console)
            ledger.now += 1

        assert len(ledger.tokens) == 3
        assert len(set(ledger.tokens)) == 1

    async def test_a_token_about_to_expire_is_replaced(
        self, stack: RulesStack, console: Console, ledger: FakeLedger
    ) -> None:
        await read_balance(console)
        ledger.now += stack.settings.console_ledger_token_lifetime_seconds - 1
        await read_balance(console)

        first, second = ledger.tokens
        assert first != second

    async def test_each_user_reads_with_a_token_of_their_own(
        self, stack: RulesStack, console: Console, console_factory: Any, ledger: FakeLedger
    ) -> None:
        organisation = await stack.seeder.organisation()
        other: Console = await console_factory(organisation.email)
        assert (await other.sign_in()).status_code == 200

        await read_balance(console)
        await read_balance(other)

        emails = [
            jwt.decode(token, options={"verify_signature": False})["email"]
            for token in ledger.tokens
        ]
        assert emails == [console.email, other.email]


@dataclass
class FakeNotifier:
    """The notifier's delivery endpoints as the console's proxy meets them."""

    requests: list[httpx.Request] = field(default_factory=list)
    reachable: bool = True

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if not self.reachable:
            raise httpx.ConnectError("connection refused", request=request)
        self.requests.append(request)
        if request.method == "POST":
            return httpx.Response(202, json={"id": 7, "status": "pending"})
        return httpx.Response(200, json={"items": [], "nextCursor": None})


@pytest.fixture
async def notifier(stack: RulesStack) -> AsyncIterator[FakeNotifier]:
    """The module's console reaches a fake notifier for the test."""
    fake = FakeNotifier()
    http = httpx.AsyncClient(transport=httpx.MockTransport(fake))
    client = NotifierClient(stack.settings, stack.app.state.rules.issuer, http=http)
    async with upstream_in_place(stack, "console_notifier", client):
        yield fake


class TestCallbackLogThroughTheConsole:
    async def test_the_log_is_read_from_the_notifier_for_the_signed_in_user(
        self, console: Console, notifier: FakeNotifier
    ) -> None:
        response = await console.http.get(
            "/console/api/deliveries", params={"clientId": "client-1", "status": "parked"}
        )

        assert response.status_code == 200, response.text
        [request] = notifier.requests
        assert request.url.path == "/v1/deliveries"
        assert dict(request.url.params) == {
            "clientId": "client-1",
            "status": "parked",
            "limit": "25",
        }
        token = request.headers["Authorization"].removeprefix("Bearer ")
        claims = jwt.decode(token, options={"verify_signature": False})
        assert (claims["email"], claims["typ"]) == (console.email, "user")

    async def test_a_replay_with_the_csrf_token_reaches_the_notifier(
        self, console: Console, notifier: FakeNotifier
    ) -> None:
        response = await console.http.post(
            "/console/api/deliveries/7/replay", headers=console.csrf()
        )

        assert response.status_code == 202
        assert [request.url.path for request in notifier.requests] == ["/v1/deliveries/7/replay"]

    async def test_a_replay_without_the_csrf_token_is_refused_before_the_notifier(
        self, console: Console, notifier: FakeNotifier
    ) -> None:
        response = await console.http.post("/console/api/deliveries/7/replay")

        assert response.status_code == 403
        assert response.json()["code"] == "CSRF_TOKEN_INVALID"
        assert notifier.requests == []

    async def test_a_notifier_out_of_reach_is_a_503_to_retry(
        self, console: Console, notifier: FakeNotifier
    ) -> None:
        notifier.reachable = False

        response = await console.http.get("/console/api/deliveries")

        assert response.status_code == 503
        assert response.json()["code"] == "NOTIFIER_UNAVAILABLE"
        assert response.headers["Retry-After"] == "5"

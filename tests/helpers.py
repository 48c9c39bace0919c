"""Shared pieces for tests that run the rules service and the trigger gateway in-process.

The per-test ``database_url`` and ``kafka_bootstrap_servers`` fixtures of
``conftest.py`` give every test fresh infrastructure. Tests that share one
running stack per module (consumer-group joins on Tansu take seconds) get the
same kind of infrastructure here, as context managers a module-scoped fixture
can hold open.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import jwt
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI

from infra import db
from infra.dev.launcher import RunningPlatform, free_port, start_platform
from infra.dev.postgres import with_database
from infra.runtime import INFRA_MIGRATIONS, ServiceRuntime
from infra.tokens import TOKEN_PATH
from points_cli.main import run as run_points
from services.rules import accounts, clients
from services.rules.settings import RulesSettings

T = TypeVar("T")

RULES_URL = "http://rules.test"
TRIGGER_URL = "http://trigger.test"
PASSWORD = "correct horse battery staple"


@dataclass(frozen=True)
class Service:
    """What a service's ``create_app`` returns, held together by a test: its HTTP app
    (whose ``state`` has the service's context) and its runtime."""

    app: FastAPI
    runtime: ServiceRuntime


@asynccontextmanager
async def migrated_pool(
    database_url: str, schema: str, migrations: Path, *, max_size: int = 8
) -> AsyncIterator[asyncpg.Pool]:
    """A pool on ``database_url`` whose ``schema`` holds the outbox and inbox and the
    tables of ``migrations``, as the service that owns it would have it."""
    await db.migrate(database_url, schema, [INFRA_MIGRATIONS, migrations])
    pool = await db.create_pool(database_url, schema, min_size=1, max_size=max_size)
    try:
        yield pool
    finally:
        await pool.close()


@asynccontextmanager
async def fresh_database(server_dsn: str) -> AsyncIterator[str]:
    """A new, empty database on ``server_dsn`` for as long as the block runs."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield with_database(server_dsn, name)
    finally:
        admin = await asyncpg.connect(server_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def docker_answers() -> bool:
    """True when a Docker engine answers, so testcontainers can provide servers."""
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=2).ping()
    except Exception:
        return False
    return True


@contextmanager
def kafka_broker() -> Iterator[str]:
    """A Kafka-protocol broker's bootstrap servers: external if named, Apache Kafka in a
    container where Docker answers, else a fresh embedded Tansu."""
    external = os.environ.get("TEST_KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    if docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    from infra.dev.kafka import start_tansu

    with tempfile.TemporaryDirectory(prefix="tansu-") as directory:
        broker = start_tansu(free_port(), Path(directory) / "tansu.log")
        try:
            yield broker.bootstrap_servers
        finally:
            broker.stop()


def rules_settings(database_url: str, kafka_bootstrap_servers: str) -> RulesSettings:
    return RulesSettings(
        mode="development",
        database_url=database_url,
        kafka_bootstrap_servers=kafka_bootstrap_servers,
        public_url=RULES_URL,
        staging_trigger_url="https://trigger-staging.example.com",
        production_trigger_url="https://trigger.example.com",
        startup_timeout_seconds=15,
    )


def asgi_client(app: Any, base_url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url)


@asynccontextmanager
async def rules_transaction(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """One transaction in the rules schema (migrated by a started rules service)."""
    connection = await db.connect(database_url, "rules")
    try:
        async with connection.transaction():
            yield connection
    finally:
        await connection.close()


@dataclass(frozen=True)
class Client:
    """An API client as an operator hands it to a developer."""

    client_id: str
    client_secret: str


@dataclass(frozen=True)
class Organisation:
    """A seeded tenant: its id and an editor's e-mail address."""

    id: str
    email: str


class Seeder:
    """Creates organisations, users and API clients through the rules service's logic."""

    def __init__(self, database_url: str, settings: RulesSettings) -> None:
        self.database_url = database_url
        self.settings = settings

    async def organisation(self, name: str = "Acme Coffee", role: str = "admin") -> Organisation:
        email = f"{uuid.uuid4().hex[:10]}@example.com"
        async with rules_transaction(self.database_url) as connection:
            organisation = await accounts.create_organisation(connection, name)
            await accounts.create_user(connection, organisation["id"], email, PASSWORD, role)
        return Organisation(organisation["id"], email)

    async def user(self, org_id: str, role: str) -> str:
        email = f"{uuid.uuid4().hex[:10]}@example.com"
        async with rules_transaction(self.database_url) as connection:
            await accounts.create_user(connection, org_id, email, PASSWORD, role)
        return email

    async def client(
        self, org_id: str, environment: str = "staging", *, public_key: str | None = None
    ) -> Client:
        async with rules_transaction(self.database_url) as connection:
            issued = await clients.create_client(
                connection,
                org_id=org_id,
                environment=environment,
                name=f"{environment} app",
                platform_signing_key=self.settings.callback_signing_key,
                request_signing_key=public_key,
            )
        return Client(issued.client_id, issued.client_secret)

    async def set_public_key(self, client_id: str, public_key: str | None) -> None:
        async with rules_transaction(self.database_url) as connection:
            await clients.set_request_signing_key(connection, client_id, public_key)

    async def revoke(self, client_id: str) -> None:
        async with rules_transaction(self.database_url) as connection:
            await clients.revoke_client(connection, client_id)

    async def rotate(self, client_id: str) -> Client:
        async with rules_transaction(self.database_url) as connection:
            issued = await clients.rotate_client_secret(
                connection,
                client_id,
                platform_signing_key=self.settings.callback_signing_key,
                overlap=timedelta(seconds=self.settings.secret_rotation_overlap_seconds),
            )
        return Client(issued.client_id, issued.client_secret)


async def request_token(http: httpx.AsyncClient, client: Client) -> httpx.Response:
    return await http.post(
        TOKEN_PATH,
        data={
            "grant_type": "client_credentials",
            "client_id": client.client_id,
            "client_secret": client.client_secret,
        },
    )


async def client_token(http: httpx.AsyncClient, client: Client) -> str:
    response = await request_token(http, client)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


async def login(http: httpx.AsyncClient, email: str, password: str = PASSWORD) -> str:
    response = await http.post("/v1/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    return str(response.json()["accessToken"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass(frozen=True)
class Tenant:
    """An organisation with a logged-in admin and one active staging client."""

    org_id: str
    user_id: str
    headers: dict[str, str]
    client: Client


async def new_tenant(http: httpx.AsyncClient, seeder: Seeder) -> Tenant:
    """A new :class:`Tenant`, its admin logged in through ``http``."""
    organisation = await seeder.organisation()
    token = await login(http, organisation.email)
    client = await seeder.client(organisation.id, "staging")
    user_id = jwt.decode(token, options={"verify_signature": False})["sub"]
    return Tenant(organisation.id, user_id, bearer(token), client)


def rule_body(**overrides: Any) -> dict[str, Any]:
    """A staging earn rule's body for ``POST /v1/rules``, running from an hour ago for
    30 days, with every cap and limit set; ``overrides`` replace fields."""
    starts = datetime.now(UTC) - timedelta(hours=1)
    body: dict[str, Any] = {
        "name": "Double points weekend",
        "description": "Twice the points on Saturdays and Sundays",
        "type": "earn",
        "environment": "staging",
        "apiTrigger": True,
        "authorizedClientIds": [],
        "capMax": 10_000,
        "capPerMember": 500,
        "maxAmountPerRequest": 100,
        "startsAt": starts.isoformat(),
        "endsAt": (starts + timedelta(days=30)).isoformat(),
    }
    return {**body, **overrides}


async def produce(
    bootstrap_servers: str, topic: str, events: Sequence[Any], *, key: bytes | None = None
) -> None:
    """Produce ``events`` (contract events) to ``topic`` in order, each on its own key
    unless ``key`` puts them all on one partition."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all")
    await producer.start()
    try:
        for event in events:
            await producer.send_and_wait(
                topic, event.model_dump_json().encode(), key=key or event.key().encode()
            )
    finally:
        await producer.stop()


async def eventually(
    probe: Callable[[], Awaitable[T | None]], *, timeout: float = 30.0, what: str = "condition"
) -> T:
    """The first truthy result of ``probe``, polled until ``timeout`` seconds have passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await probe()
        if result:
            return result
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.1)


@dataclass
class TriggerStack:
    """The rules service and a gateway running in-process, with one active earn
    rule that one staging client may trigger (already in the gateway's projection)."""

    gateway: httpx.AsyncClient
    runtime: Any  # the gateway's ServiceRuntime
    rule_id: str
    developer: dict[str, str]
    #: The rules service and its seeded tenant, for tests that set up more.
    rules_http: httpx.AsyncClient
    seeder: Seeder
    org_id: str
    console: dict[str, str]
    database_url: str

    async def trigger(self, request_id: str, amount: int = 1) -> httpx.Response:
        return await self.gateway.post(
            "/v1/points/requests",
            headers=self.developer,
            json={
                "userId": "member-1",
                "ruleId": self.rule_id,
                "amount": amount,
                "requestId": request_id,
            },
        )


@asynccontextmanager
async def trigger_stack(
    database_url: str, bootstrap: str, *, gateway_database_url: str | None = None
) -> AsyncIterator[TriggerStack]:
    """Run the stack of :class:`TriggerStack`; the gateway may reach the database
    by another address (through a proxy, say)."""
    from contracts import TOPICS_TO_CREATE
    from infra.kafka_admin import create_topics
    from infra.tokens import JwksVerifier
    from services.rules.app import create_app as create_rules_app
    from services.trigger.app import create_app as create_trigger_app
    from services.trigger.settings import TriggerSettings

    await create_topics(bootstrap, TOPICS_TO_CREATE)
    settings = rules_settings(database_url, bootstrap)
    rules_app, rules_runtime = create_rules_app(settings)
    trigger_app, trigger_runtime = create_trigger_app(
        TriggerSettings(
            mode="development",
            database_url=gateway_database_url or database_url,
            kafka_bootstrap_servers=bootstrap,
            token_issuer_url=RULES_URL,
            rate_limit_per_second=10_000,
            rate_limit_burst=10_000,
        ),
        verifier=JwksVerifier(RULES_URL, http=asgi_client(rules_app, RULES_URL)),
    )
    await rules_runtime.start()
    try:
        await trigger_runtime.start()
        try:
            async with (
                asgi_client(rules_app, RULES_URL) as rules_http,
                asgi_client(trigger_app, TRIGGER_URL) as gateway,
            ):
                seeder = Seeder(database_url, settings)
                org = await seeder.organisation()
                client = await seeder.client(org.id)
                console = bearer(await login(rules_http, org.email))
                created = await rules_http.post(
                    "/v1/rules",
                    headers=console,
                    json={
                        "name": "Stack rule",
                        "type": "earn",
                        "environment": "staging",
                        "apiTrigger": True,
                        "authorizedClientIds": [client.client_id],
                    },
                )
                rule_id = created.json()["id"]
                activated = await rules_http.post(f"/v1/rules/{rule_id}/activate", headers=console)
                assert activated.status_code == 200, activated.text
                stack = TriggerStack(
                    gateway,
                    trigger_runtime,
                    rule_id,
                    bearer(await client_token(rules_http, client)),
                    rules_http,
                    seeder,
                    org.id,
                    console,
                    database_url,
                )

                async def projected() -> bool:
                    probe = await stack.trigger(f"probe-{uuid.uuid4().hex}")
                    return probe.status_code == 202

                await eventually(projected, timeout=60, what="the rule reaching the gateway")
                yield stack
        finally:
            with contextlib.suppress(Exception):  # a test may have cut its database
                await trigger_runtime.stop()
    finally:
        await rules_runtime.stop()


@asynccontextmanager
async def fresh_trigger_stack(server_dsn: str) -> AsyncIterator[TriggerStack]:
    """:func:`trigger_stack` on a broker and a database of its own."""
    with kafka_broker() as bootstrap:
        async with (
            fresh_database(server_dsn) as database_url,
            trigger_stack(database_url, bootstrap) as stack,
        ):
            yield stack


@dataclass(frozen=True)
class RulesStack:
    """A started rules service, in-process, on a fresh database and broker."""

    app: Any
    http: httpx.AsyncClient
    seeder: Seeder
    runtime: Any  # its ServiceRuntime
    settings: RulesSettings
    database_url: str
    bootstrap_servers: str


@asynccontextmanager
async def rules_stack(server_dsn: str) -> AsyncIterator[RulesStack]:
    """Run :class:`RulesStack` for as long as the block runs (topics created)."""
    from contracts import TOPICS_TO_CREATE
    from infra.kafka_admin import create_topics
    from services.rules.app import create_app as create_rules_app

    with kafka_broker() as bootstrap_servers:
        await create_topics(bootstrap_servers, TOPICS_TO_CREATE)
        async with fresh_database(server_dsn) as database_url:
            settings = rules_settings(database_url, bootstrap_servers)
            app, runtime = create_rules_app(settings)
            await runtime.start()
            try:
                async with asgi_client(app, RULES_URL) as http:
                    yield RulesStack(
                        app,
                        http,
                        Seeder(database_url, settings),
                        runtime,
                        settings,
                        database_url,
                        bootstrap_servers,
                    )
            finally:
                await runtime.stop()


@contextmanager
def running_platform(prefix: str, **settings: str) -> Iterator[RunningPlatform]:
    """The whole platform as `make run` starts it (``settings``: extra env vars), in a
    state directory of its own, ready for as long as the block runs; stopped and removed
    after."""
    running = start_platform(prefix=prefix, **settings)
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()
        running.remove_state()


async def points(*argv: str) -> int:
    """Run ``points ARGV`` in a thread (it runs its own event loop); its exit code."""
    return await asyncio.to_thread(run_points, list(argv))

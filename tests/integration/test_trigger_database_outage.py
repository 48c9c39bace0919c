"""With its database unreachable, the gateway answers 503, never a 202 it could lose.

The gateway reaches PostgreSQL through a small TCP proxy owned by the test;
cutting the proxy is a network outage between the two, with PostgreSQL itself
(and everyone else using it) untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import pytest

from infra import db
from infra.tokens import JwksVerifier
from services.rules.app import create_app as create_rules_app
from services.trigger.app import create_app as create_trigger_app
from services.trigger.settings import TriggerSettings
from tests.helpers import (
    RULES_URL,
    TRIGGER_URL,
    Seeder,
    asgi_client,
    bearer,
    client_token,
    eventually,
    login,
    rules_settings,
)


class DatabaseProxy:
    """Forwards TCP connections to PostgreSQL's unix socket until it is cut."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.port = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Refuse new connections and drop every open one."""
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for writer in list(self._open):
            writer.transport.abort()

    async def _forward(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        server_r, server_w = await asyncio.open_unix_connection(self.socket_path)
        self._open |= {client_w, server_w}

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.transport.abort()

        await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))
        self._open -= {client_w, server_w}


@pytest.fixture
async def proxy(database_url: str) -> AsyncIterator[tuple[DatabaseProxy, str]]:
    parts = urlsplit(database_url)
    socket_dir = parse_qs(parts.query).get("host", [""])[0]
    if not socket_dir.startswith("/"):
        pytest.fail("this test proxies the embedded PostgreSQL's unix socket")
    port = parts.port or 5432
    running = DatabaseProxy(f"{socket_dir}/.s.PGSQL.{port}")
    await running.start()
    yield running, f"postgresql://postgres@127.0.0.1:{running.port}{parts.path}"
    with contextlib.suppress(Exception):
        await running.cut()


class TestDatabaseOutage:
    async def test_the_gateway_answers_503_while_its_database_is_unreachable(
        self,
        database_url: str,
        kafka_bootstrap_servers: str,
        proxy: tuple[DatabaseProxy, str],
    ) -> None:
        cut, proxied_url = proxy
        settings = rules_settings(database_url, kafka_bootstrap_servers)
        rules_app, rules_runtime = create_rules_app(settings)
        trigger_app, trigger_runtime = create_trigger_app(
            TriggerSettings(
                mode="development",
                database_url=proxied_url,
                kafka_bootstrap_servers=kafka_bootstrap_servers,
                token_issuer_url=RULES_URL,
            ),
            verifier=JwksVerifier(RULES_URL, http=asgi_client(rules_app, RULES_URL)),
        )
        await rules_runtime.start()
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
                rule = (
                    await rules_http.post(
                        "/v1/rules",
                        headers=console,
                        json={
                            "name": "Outage",
                            "type": "earn",
                            "environment": "staging",
                            "apiTrigger": True,
                            "authorizedClientIds": [client.client_id],
                        },
                    )
                ).json()
                await rules_http.post(f"/v1/rules/{rule['id']}/activate", headers=console)
                developer = bearer(await client_token(rules_http, client))

                async def trigger(request_id: str) -> tuple[int, dict[str, object]]:
                    response = await gateway.post(
                        "/v1/points/requests",
                        headers=developer,
                        json={
                            "userId": "m-1",
                            "ruleId": rule["id"],
                            "amount": 5,
                            "requestId": request_id,
                        },
                    )
                    return response.status_code, response.json()

                async def projected() -> bool:
                    return (await trigger(f"probe-{uuid.uuid4().hex}"))[0] == 202

                await eventually(projected, timeout=60, what="the rule reaching the gateway")

                await cut.cut()
                status, body = await trigger("during-outage")

                assert status == 503
                assert body["code"] == "SERVICE_UNAVAILABLE"
        finally:
            with contextlib.suppress(Exception):
                await trigger_runtime.stop()
            await rules_runtime.stop()

        # Nothing was recorded for the refused request.
        recorded = await recorded_requests(database_url, "during-outage")
        assert recorded == 0


async def recorded_requests(database_url: str, request_id: str) -> int:
    connection = await db.connect(database_url, "trigger")
    try:
        return int(
            await connection.fetchval(
                "SELECT count(*) FROM requests WHERE request_id = $1", request_id
            )
        )
    finally:
        await connection.close()

"""With its database unreachable, the gateway answers 503, never a 202 it could lose.

The gateway reaches PostgreSQL through a small TCP proxy owned by the test;
cutting the proxy is a network outage between the two, with PostgreSQL itself
(and everyone else using it) untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import pytest

from infra import db
from tests.helpers import trigger_stack


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
        async with trigger_stack(
            database_url, kafka_bootstrap_servers, gateway_database_url=proxied_url
        ) as stack:
            await cut.cut()
            response = await stack.trigger("during-outage", amount=5)

            assert response.status_code == 503
            assert response.json()["code"] == "SERVICE_UNAVAILABLE"

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

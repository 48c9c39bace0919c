"""What the end-to-end tests share: a developer's callback receiver."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn

from tests.helpers import free_port


@dataclass
class CallbackReceiver:
    """A developer's HTTP endpoint that records every callback it is sent."""

    url: str = ""
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        headers = {key.decode().lower(): value.decode() for key, value in scope["headers"]}
        self.received.append((headers, body))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def read_body(receive: Any) -> bytes:
    """The whole body of an ASGI request."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def client_token_headers(
    rules_url: str, http: httpx.AsyncClient, client: dict[str, str]
) -> dict[str, str]:
    """The Authorization header of a token for ``client`` (as `points client create` printed
    it), fetched as a partner's app does."""
    token = await http.post(
        f"{rules_url}/realms/partner/protocol/openid-connect/token",
        data={
            "grant_type": "client_credentials",
            "client_id": client["clientId"],
            "client_secret": client["clientSecret"],
        },
    )
    assert token.status_code == 200, token.text
    return {"Authorization": f"Bearer {token.json()['access_token']}"}


@asynccontextmanager
async def serve_receiver(app: CallbackReceiver) -> AsyncIterator[CallbackReceiver]:
    """Serve ``app`` on a free port of 127.0.0.1 (its ``url`` set) for as long as the block runs."""
    port = free_port()
    app.url = f"http://127.0.0.1:{port}/points-callback"
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no started event
        await asyncio.sleep(0.05)
    try:
        yield app
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def receiver() -> AsyncIterator[CallbackReceiver]:
    async with serve_receiver(CallbackReceiver()) as app:
        yield app

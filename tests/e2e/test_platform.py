"""The whole platform, started the way `make run` starts it, used only through
its public interfaces: the `points` CLI an operator runs and the HTTP APIs a
business user and a third-party developer call."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import uvicorn

from infra.dev.launcher import RunningPlatform, start_platform
from infra.signing import EVENT_ID_HEADER, SIGNATURE_HEADER, verify
from tests.helpers import free_port

pytestmark = pytest.mark.e2e


Platform = RunningPlatform


@pytest.fixture(scope="module")
def platform() -> Iterator[Platform]:
    running = start_platform(prefix="points-e2e-")
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()
        running.remove_state()


@dataclass
class CallbackReceiver:
    """A developer's HTTP endpoint that records every callback it is sent."""

    url: str = ""
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {key.decode().lower(): value.decode() for key, value in scope["headers"]}
        self.received.append((headers, body))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture
async def receiver() -> AsyncIterator[CallbackReceiver]:
    app = CallbackReceiver()
    port = free_port()
    app.url = f"http://127.0.0.1:{port}/points-callback"
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no started event
        await asyncio.sleep(0.05)
    yield app
    server.should_exit = True
    await task


async def _eventually(probe: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.25)


class TestAnEarnTriggerTravelsThroughThePlatform:
    async def test_points_land_in_the_ledger_and_a_signed_callback_reports_them(
        self, platform: Platform, receiver: CallbackReceiver
    ) -> None:
        org = platform.points("org", "create", "Corner Bakery")
        platform.points(
            "user",
            "create",
            "--org",
            org["id"],
            "--email",
            "owner@bakery.example",
            "--password",
            "croissant-42",
        )
        client = platform.points(
            "client",
            "create",
            "--org",
            org["id"],
            "--environment",
            "staging",
            "--name",
            "Bakery app",
        )
        async with httpx.AsyncClient(timeout=10) as http:
            # The business user creates and activates an API-triggered earn rule.
            login = await http.post(
                f"{platform.urls['rules']}/v1/auth/login",
                json={"email": "owner@bakery.example", "password": "croissant-42"},
            )
            assert login.status_code == 200, login.text
            console = {"Authorization": f"Bearer {login.json()['accessToken']}"}
            created = await http.post(
                f"{platform.urls['rules']}/v1/rules",
                headers=console,
                json={
                    "name": "Croissant points",
                    "type": "earn",
                    "environment": "staging",
                    "apiTrigger": True,
                    "authorizedClientIds": [client["clientId"]],
                    "capMax": 10_000,
                },
            )
            assert created.status_code == 201, created.text
            rule_id = created.json()["id"]
            activated = await http.post(
                f"{platform.urls['rules']}/v1/rules/{rule_id}/activate", headers=console
            )
            assert activated.json()["status"] == "active"

            # The developer gets a token and triggers the rule.
            token = await http.post(
                f"{platform.urls['rules']}/realms/partner/protocol/openid-connect/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": client["clientId"],
                    "client_secret": client["clientSecret"],
                },
            )
            assert token.status_code == 200, token.text
            developer = {"Authorization": f"Bearer {token.json()['access_token']}"}
            trigger = {
                "userId": "member-7",
                "ruleId": rule_id,
                "amount": 250,
                "requestId": "order-1001",
                "callbackUrl": receiver.url,
            }

            async def accepted() -> httpx.Response | None:
                # The gateway learns of the rule through Kafka; until then it
                # truthfully answers that the rule does not exist.
                response = await http.post(
                    f"{platform.urls['trigger']}/v1/points/requests",
                    headers=developer,
                    json=trigger,
                )
                return response if response.status_code == 202 else None

            response = await _eventually(accepted)
            assert response is not None, "the gateway never accepted the trigger"
            transaction_id = response.json()["transactionId"]

            async def settled() -> dict[str, Any] | None:
                status = await http.get(
                    f"{platform.urls['trigger']}/v1/points/requests/order-1001", headers=developer
                )
                body = status.json()
                return body if body["status"] != "pending" else None

            outcome = await _eventually(settled)
            assert outcome == {
                "requestId": "order-1001",
                "transactionId": transaction_id,
                "status": "succeeded",
            }

            balance = await http.get(
                f"{platform.urls['ledger']}/v1/members/member-7/balance",
                params={"environment": "staging"},
                headers=developer,
            )
            assert balance.json() == {
                "userId": "member-7",
                "environment": "staging",
                "balance": 250,
            }

        async def called_back() -> bool:
            return bool(receiver.received)

        assert await _eventually(called_back), "no callback arrived"
        headers, body = receiver.received[0]
        assert verify(client["callbackSigningSecret"], body, headers[SIGNATURE_HEADER.lower()])
        assert headers[EVENT_ID_HEADER.lower()]
        callback = json.loads(body)
        assert callback["transactionId"] == transaction_id
        assert callback["status"] == "succeeded"
        assert callback["balance"] == 250
        assert len(receiver.received) == 1


class TestShareByEmail:
    async def test_send_email_reaches_the_smtp_sink_with_the_rule_and_no_secret(
        self, platform: Platform
    ) -> None:
        org = platform.points("org", "create", "Tea House")
        platform.points(
            "user",
            "create",
            "--org",
            org["id"],
            "--email",
            "owner@tea.example",
            "--password",
            "oolong-2026",
        )
        client = platform.points(
            "client", "create", "--org", org["id"], "--environment", "staging", "--name", "Tea app"
        )
        rules_url = platform.urls["rules"]
        async with httpx.AsyncClient(timeout=10) as http:
            login = await http.post(
                f"{rules_url}/v1/auth/login",
                json={"email": "owner@tea.example", "password": "oolong-2026"},
            )
            console = {"Authorization": f"Bearer {login.json()['accessToken']}"}
            rule = (
                await http.post(
                    f"{rules_url}/v1/rules",
                    headers=console,
                    json={
                        "name": "Matcha rewards",
                        "type": "earn",
                        "environment": "staging",
                        "apiTrigger": True,
                        "authorizedClientIds": [client["clientId"]],
                    },
                )
            ).json()
            activated = await http.post(
                f"{rules_url}/v1/rules/{rule['id']}/activate", headers=console
            )
            assert activated.status_code == 200, activated.text
            sent = await http.post(
                f"{rules_url}/v1/rules/{rule['id']}/share/email",
                headers=console,
                json={"to": ["partner-dev@example.com"]},
            )
            assert sent.status_code == 202, sent.text

        mail_dir = platform.state / "mail"

        async def delivered() -> list[Path]:
            return [
                path
                for path in sorted(mail_dir.glob("*.eml"))
                if rule["id"].encode() in path.read_bytes()
            ]

        messages = await _eventually(delivered)
        assert len(messages) == 1, "the share e-mail never reached the SMTP sink"
        raw = messages[0].read_bytes()
        assert b"partner-dev@example.com" in raw
        assert b"Matcha rewards" in raw
        for secret in (client["clientSecret"], client["callbackSigningSecret"]):
            assert secret.encode() not in raw


def _stack_processes(platform: Platform) -> list[psutil.Process]:
    """Every process that belongs to this platform: its children and their servers."""
    found = []
    for process in psutil.process_iter(["cmdline", "environ"]):
        try:
            cmdline = " ".join(process.info["cmdline"] or ())
            environ = process.info["environ"] or {}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        ours = str(platform.state) in cmdline or environ.get("POINTS_VAR_DIR") == str(
            platform.state
        )
        if ours and process.pid != os.getpid():
            found.append(process)
    return found


class TestStoppingThePlatform:
    """Runs last in this module: it stops the shared platform."""

    def test_sigterm_stops_every_process_and_frees_every_port(self, platform: Platform) -> None:
        assert len(_stack_processes(platform)) >= 6  # points dev, four services, PostgreSQL

        platform.process.send_signal(signal.SIGTERM)
        assert platform.process.wait(30) == 0

        deadline = time.monotonic() + 10
        while _stack_processes(platform) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _stack_processes(platform) == []
        for url in platform.urls.values():
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"{url}/healthz", timeout=2)
        with pytest.raises(ConnectionRefusedError):  # the embedded broker is gone too
            socket.create_connection(("127.0.0.1", int(platform.env["DEV_KAFKA_PORT"])), 2)

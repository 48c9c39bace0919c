"""The whole platform, started the way `make run` starts it, used only through
its public interfaces: the `points` CLI an operator runs and the HTTP APIs a
business user and a third-party developer call."""

from __future__ import annotations

import asyncio
import html
import json
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from infra.dev.launcher import RunningPlatform
from infra.signing import EVENT_ID_HEADER, SIGNATURE_HEADER, verify
from tests.e2e.conftest import CallbackReceiver
from tests.helpers import eventually, free_port, running_platform

pytestmark = pytest.mark.e2e


Platform = RunningPlatform


@pytest.fixture(scope="module")
def platform() -> Iterator[Platform]:
    with running_platform("points-e2e-") as running:
        yield running


@dataclass
class Business:
    """An organisation set up by an operator, its signed-in owner and one active rule."""

    org_id: str
    client: dict[str, str]  # as `points client create --json` printed it
    rule_id: str
    console: dict[str, str]  # the owner's Authorization header
    owner: dict[str, str]  # the owner's e-mail and password, as the console's login takes them


async def business_with_an_active_rule(
    platform: Platform, http: httpx.AsyncClient, name: str, rule_name: str
) -> Business:
    """What an operator and a business user do before a developer gets the rule's id."""
    slug = name.lower().replace(" ", "-")
    email, password = f"owner@{slug}.example", f"{slug}-password-42"
    org = platform.points("org", "create", name)
    platform.points("user", "create", "--org", org["id"], "--email", email, "--password", password)
    client = platform.points(
        "client", "create", "--org", org["id"], "--environment", "staging", "--name", "App"
    )
    login = await http.post(
        f"{platform.urls['rules']}/v1/auth/login", json={"email": email, "password": password}
    )
    assert login.status_code == 200, login.text
    console = {"Authorization": f"Bearer {login.json()['accessToken']}"}
    rule_id = await active_rule(
        platform, http, console, client["clientId"], rule_name, capMax=10_000
    )
    return Business(org["id"], client, rule_id, console, {"email": email, "password": password})


async def active_rule(
    platform: Platform,
    http: httpx.AsyncClient,
    console: dict[str, str],
    client_id: str,
    name: str,
    **extra: Any,
) -> str:
    """The id of a new staging earn rule that ``client_id`` may trigger, activated by the
    business user signed in as ``console``; ``extra`` adds fields (``capMax=…``)."""
    rules_url = platform.urls["rules"]
    created = await http.post(
        f"{rules_url}/v1/rules",
        headers=console,
        json={
            "name": name,
            "type": "earn",
            "environment": "staging",
            "apiTrigger": True,
            "authorizedClientIds": [client_id],
            **extra,
        },
    )
    assert created.status_code == 201, created.text
    rule_id: str = created.json()["id"]
    activated = await http.post(f"{rules_url}/v1/rules/{rule_id}/activate", headers=console)
    assert activated.json()["status"] == "active", activated.text
    return rule_id


class TestAnEarnTriggerTravelsThroughThePlatform:
    async def test_points_land_in_the_ledger_and_a_signed_callback_reports_them(
        self, platform: Platform, receiver: CallbackReceiver
    ) -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            business = await business_with_an_active_rule(
                platform, http, "Corner Bakery", "Croissant points"
            )
            client, rule_id = business.client, business.rule_id

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

            response = await eventually(accepted, what="the gateway accepting the trigger")
            transaction_id = response.json()["transactionId"]

            async def settled() -> dict[str, Any] | None:
                status = await http.get(
                    f"{platform.urls['trigger']}/v1/points/requests/order-1001", headers=developer
                )
                body = status.json()
                return body if body["status"] != "pending" else None

            outcome = await eventually(settled, what="the request settling")
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
                "expiring": [],
            }

        async def called_back() -> bool:
            return bool(receiver.received)

        await eventually(called_back, what="a callback")
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
        rules_url = platform.urls["rules"]
        async with httpx.AsyncClient(timeout=10) as http:
            business = await business_with_an_active_rule(
                platform, http, "Tea House", "Matcha rewards"
            )
            client, console = business.client, business.console
            sent = await http.post(
                f"{rules_url}/v1/rules/{business.rule_id}/share/email",
                headers=console,
                json={"to": ["partner-dev@example.com"]},
            )
            assert sent.status_code == 202, sent.text

        mail_dir = platform.state / "mail"

        async def delivered() -> list[Path]:
            return [
                path
                for path in sorted(mail_dir.glob("*.eml"))
                if business.rule_id.encode() in path.read_bytes()
            ]

        messages = await eventually(delivered, what="the share e-mail reaching the SMTP sink")
        assert len(messages) == 1
        raw = messages[0].read_bytes()
        assert b"partner-dev@example.com" in raw
        assert b"Matcha rewards" in raw
        for secret in (client["clientSecret"], client["callbackSigningSecret"]):
            assert secret.encode() not in raw


GUIDE_EXAMPLE = re.compile(
    r'<pre><code(?: class="[^"]*")?(?: id="([^"]*)")?>(.*?)</code></pre>', re.S
)


async def guide_examples(platform: Platform, http: httpx.AsyncClient) -> dict[str, str]:
    """The code blocks of the staging integration guide the platform serves, by id or opening."""
    page = await http.get(
        f"{platform.urls['rules']}/docs/integration-guide", params={"environment": "staging"}
    )
    assert page.status_code == 200, page.text
    examples = {}
    for block_id, code in GUIDE_EXAMPLE.findall(page.text):
        text = html.unescape(code)
        examples[block_id or text.split("\n", 1)[0]] = text
    return examples


def example_opening_with(examples: dict[str, str], opening: str) -> str:
    return next(text for first_line, text in examples.items() if first_line.startswith(opening))


def shell_script(path: Path, *lines: str) -> Path:
    """A bash script at ``path`` that runs ``lines`` in order and stops at the first failure."""
    path.write_text("set -eu\n" + "\n".join(lines) + "\n")
    return path


async def run_until_accepted(*command: str, env: dict[str, str], timeout: float = 30.0) -> str:
    """Run a developer's example until the gateway has learnt of the rule and accepts it.

    The rule reaches the gateway through Kafka; until then the gateway truthfully
    answers that it does not exist, and a developer would simply try again.
    """
    deadline = time.monotonic() + timeout
    while True:
        process = await asyncio.create_subprocess_exec(
            *command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        output = (await asyncio.wait_for(process.communicate(), timeout=60))[0].decode()
        assert process.returncode == 0, output
        if "202" in output.split("\n", 1)[0] or "202 Accepted" in output:
            return output
        assert time.monotonic() < deadline, f"the gateway never accepted the example: {output}"
        await asyncio.sleep(0.5)


class TestTheIntegrationGuidesExamples:
    """A developer copies the examples from the guide the platform serves and runs them as-is."""

    async def test_the_curl_examples_get_a_token_trigger_the_rule_and_read_its_status(
        self, platform: Platform, tmp_path: Path
    ) -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            business = await business_with_an_active_rule(
                platform, http, "Book Nook", "Chapter points"
            )
            examples = await guide_examples(platform, http)
        script = shell_script(
            tmp_path / "developer.sh",
            example_opening_with(examples, "TOKEN=$(curl"),
            example_opening_with(examples, "REQUEST_ID=$(python3"),
            "echo",
            example_opening_with(examples, "curl -s '" + platform.urls["trigger"]),
        )
        env = {
            **os.environ,
            "CLIENT_ID": business.client["clientId"],
            "CLIENT_SECRET": business.client["clientSecret"],
            "RULE_ID": business.rule_id,
        }

        output = await run_until_accepted("bash", str(script), env=env)

        assert "HTTP/1.1 202 Accepted" in output
        accepted = json.loads(output.split("\r\n\r\n", 1)[1].split("\n", 1)[0])
        status = json.loads(output.rstrip().rsplit("\n", 1)[1])
        assert status["requestId"] == accepted["requestId"]
        assert status["transactionId"] == accepted["transactionId"]
        assert status["status"] in {"pending", "succeeded"}

    async def test_the_expiry_examples_register_the_callback_and_read_the_balance(
        self, platform: Platform, tmp_path: Path
    ) -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            business = await business_with_an_active_rule(
                platform, http, "Oolong House", "Oolong points"
            )
            examples = await guide_examples(platform, http)
        script = shell_script(
            tmp_path / "expiry.sh",
            example_opening_with(examples, "TOKEN=$(curl"),
            examples["expiry-callback-curl"],
            "echo",
            examples["balance-curl"],
        )
        process = await asyncio.create_subprocess_exec(
            "bash",
            str(script),
            env={
                **os.environ,
                "CLIENT_ID": business.client["clientId"],
                "CLIENT_SECRET": business.client["clientSecret"],
                "ADMIN_EMAIL": business.owner["email"],
                "ADMIN_PASSWORD": business.owner["password"],
            },
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output = (await process.communicate())[0].decode()

        assert process.returncode == 0, output
        registered, balance = (json.loads(line) for line in output.strip().splitlines()[-2:])
        assert registered["clientId"] == business.client["clientId"]
        assert registered["expiryCallbackUrl"].startswith("http://127.0.0.1:")
        assert (balance["userId"], balance["balance"]) == ("member-42", 0)

    async def test_the_python_client_and_callback_receiver_see_the_points_arrive(
        self, platform: Platform, tmp_path: Path
    ) -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            business = await business_with_an_active_rule(
                platform, http, "Flower Stall", "Bouquet points"
            )
            examples = await guide_examples(platform, http)
        receiver_file = tmp_path / "receiver.py"
        receiver_file.write_text(
            examples["verify-signature-python"] + "\n\n" + examples["callback-receiver-python"]
        )
        client_file = tmp_path / "client.py"
        client_file.write_text(examples["trigger-client-python"])
        port = free_port()
        receiver = await asyncio.create_subprocess_exec(
            sys.executable,
            "-u",
            str(receiver_file),
            env={
                **os.environ,
                "CALLBACK_SIGNING_SECRET": business.client["callbackSigningSecret"],
                "PORT": str(port),
            },
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            output = await run_until_accepted(
                sys.executable,
                str(client_file),
                env={
                    **os.environ,
                    "CLIENT_ID": business.client["clientId"],
                    "CLIENT_SECRET": business.client["clientSecret"],
                    "RULE_ID": business.rule_id,
                    "CALLBACK_URL": f"http://127.0.0.1:{port}/points-callback",
                },
            )
            assert receiver.stdout is not None
            called_back = await asyncio.wait_for(receiver.stdout.readline(), timeout=30)
        finally:
            receiver.terminate()
            await receiver.wait()

        request_id = re.search(r"'requestId': '([^']+)'", output)
        assert request_id, output
        assert "'status': 'succeeded'" in output.rstrip().rsplit("\n", 1)[1]
        assert called_back.decode().split() == [request_id.group(1), "succeeded", "None", "10"]


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
        # Each service stopped as asked, draining its consumers and relay, rather than
        # dying of the signal halfway.
        for name in platform.urls:
            events = [
                json.loads(line)["event"]
                for line in (platform.state / "log" / f"{name}.log").read_text().splitlines()
                if line.startswith("{")
            ]
            assert "service.stopped" in events, name

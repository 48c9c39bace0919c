"""What a developer running `make run` sees: readable lines for the events that
matter in the terminal, and every service's JSON log whole in `var/log/`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra.dev.launcher import RunningPlatform
from infra.settings import SERVICES
from tests.e2e.conftest import client_token_headers
from tests.e2e.test_platform import business_with_an_active_rule
from tests.helpers import eventually, running_platform

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def platform() -> Iterator[RunningPlatform]:
    with running_platform("points-e2e-logs-") as running:
        yield running


def events_in(path: Path) -> list[str]:
    """The event name of every line of a service's log file, each of which must be JSON."""
    return [json.loads(line)["event"] for line in path.read_text().splitlines()]


async def shown(platform: RunningPlatform, *texts: str) -> bool:
    """Whether the platform's combined output shows every one of ``texts`` yet."""
    output = platform.log.read_text()
    return all(text in output for text in texts)


class TestTheTerminalOfMakeRun:
    async def test_shows_each_service_started_and_ready_and_no_per_message_lines(
        self, platform: RunningPlatform
    ) -> None:
        lines = [f"{name.ljust(8)} | started on port" for name in SERVICES]
        lines += [f"{name.ljust(8)} | ready" for name in SERVICES]
        # The banner follows once `points dev` has seen every /readyz answer 200.
        lines += [f"Full logs (JSON)      {platform.state / 'log'}/<service>.log"]

        await eventually(lambda: shown(platform, *lines), what="started and ready lines, banner")

        output = platform.log.read_text()
        per_message = [
            line for line in output.splitlines() if "Received" in line or "Processed" in line
        ]
        assert per_message == []

    async def test_shows_a_rule_activated_and_a_request_accepted_and_applied(
        self, platform: RunningPlatform
    ) -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            business = await business_with_an_active_rule(
                platform, http, "Log Bakery", "Readable points"
            )
            developer = await client_token_headers(platform.urls["rules"], http, business.client)
            trigger: dict[str, Any] = {
                "userId": "member-1",
                "ruleId": business.rule_id,
                "amount": 10,
                "requestId": "logs-1",
            }

            async def accepted() -> bool:
                response = await http.post(
                    f"{platform.urls['trigger']}/v1/points/requests",
                    headers=developer,
                    json=trigger,
                )
                return response.status_code == 202

            await eventually(accepted, what="the gateway accepting the trigger")

        await eventually(
            lambda: shown(
                platform,
                f"rules    | rule {business.rule_id} activated (staging)",
                f"trigger  | request logs-1 accepted for rule {business.rule_id}",
                "ledger   | 1 request applied, 0 rejected",
            ),
            what="the rule, request and batch lines",
        )


class TestTheLogFilesOfMakeRun:
    async def test_each_service_files_its_whole_json_log_in_var_log(
        self, platform: RunningPlatform
    ) -> None:
        files = {name: platform.state / "log" / f"{name}.log" for name in SERVICES}

        async def ready_in_every_file() -> bool:
            return all(
                path.exists() and "service.ready" in events_in(path) for path in files.values()
            )

        await eventually(ready_in_every_file, what="service.ready in every service's log file")

        events = {name: events_in(path) for name, path in files.items()}
        assert all("service.started" in logged for logged in events.values())
        # What the terminal leaves out is kept: FastStream's line per consumed message.
        assert any("Received" in logged for logged in events.values())

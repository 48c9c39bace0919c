"""``points deliveries``: an operator sees parked deliveries and sends them again.

The CLI runs in-process (``points_cli.main.main``) against the same PostgreSQL
database as a running notifier, as it would against ``make run``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.helpers import points
from tests.integration.test_notifier import (
    CallbackReceiver,
    client_event,
    notifier_settings,
    result_event,
    running_callbacks,
)


@pytest.fixture
async def failing_receiver() -> AsyncIterator[CallbackReceiver]:
    """A receiver that fails twice (enough to park a callback) and then succeeds."""
    server = CallbackReceiver(statuses=[500, 500])
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(autouse=True)
def quiet_logs() -> Iterator[None]:
    """Keep the notifier's log lines out of the CLI output the tests read."""
    with capture_logs():
        yield


@pytest.fixture
def cli_environment(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("POINTS_MODE", "development")
    # No var/dev.env of a real running stack may leak into the test.
    monkeypatch.setenv("POINTS_VAR_DIR", str(tmp_path))


@pytest.mark.usefixtures("cli_environment")
class TestDeliveriesCommands:
    async def test_list_shows_a_parked_callback_and_replay_delivers_it(
        self,
        database_url: str,
        failing_receiver: CallbackReceiver,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        settings = notifier_settings(database_url, retry_schedule_seconds=(0.1,))
        async with running_callbacks(settings) as notifier:
            await notifier.receive_client(client_event())
            event = result_event(failing_receiver.url())
            await notifier.receive_result(event)
            await notifier.wait_for_status(event, "parked")
            capsys.readouterr()

            listed_code = await points("deliveries", "list", "--parked", "--json")
            [item] = json.loads(capsys.readouterr().out)
            text_code = await points("deliveries", "list", "--parked")
            text = capsys.readouterr().out
            replay_code = await points("deliveries", "replay", str(item["id"]))
            replayed = capsys.readouterr().out
            delivery = await notifier.wait_for_status(event, "delivered")
            after_code = await points("deliveries", "list", "--parked")
            after = capsys.readouterr().out

        assert (listed_code, text_code, replay_code, after_code) == (0, 0, 0, 0)
        assert item["kind"] == "callback"
        assert item["status"] == "parked"
        assert item["eventId"] == str(event.event_id)
        assert (item["attempts"], item["lastError"]) == (2, "HTTP 500")
        assert "body" not in item
        assert str(item["id"]) in text and "parked" in text and failing_receiver.url() in text
        assert f"delivery {item['id']} queued again" in replayed
        assert len(failing_receiver.received) == 3
        assert delivery["attempts"] == 1
        assert after.strip() == "no parked deliveries"

    async def test_replay_all_sends_every_parked_delivery_again(
        self,
        database_url: str,
        failing_receiver: CallbackReceiver,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        failing_receiver.statuses = [500] * 4
        settings = notifier_settings(database_url, retry_schedule_seconds=(0.1,))
        async with running_callbacks(settings) as notifier:
            await notifier.receive_client(client_event())
            events = [result_event(failing_receiver.url()) for _ in range(2)]
            for event in events:
                await notifier.receive_result(event)
            for event in events:
                await notifier.wait_for_status(event, "parked")
            capsys.readouterr()

            code = await points("deliveries", "replay", "--all")
            output = capsys.readouterr().out
            for event in events:
                await notifier.wait_for_status(event, "delivered")

        assert code == 0
        assert "2 parked deliveries queued again" in output
        assert len(failing_receiver.received) == 6

    async def test_replaying_a_delivery_that_is_not_parked_fails_and_says_why(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code = await points("deliveries", "replay", "424242")

        assert code == 1
        assert "delivery 424242 does not exist" in capsys.readouterr().err

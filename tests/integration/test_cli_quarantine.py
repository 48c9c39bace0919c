"""``points quarantine``: an operator sees what the consumers quarantined and replays it.

The CLI runs in-process against real PostgreSQL, after a notifier consumer
quarantined a message that is not JSON.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import ConsumerRecord
from structlog.testing import capture_logs

from contracts import POINTS_RESULTS, PointsResultEvent
from infra import db
from infra.consumers import Consumer
from tests.helpers import points

POISON = b"\xffnot a points result"


@pytest.fixture(autouse=True)
def quiet_logs() -> Iterator[None]:
    with capture_logs():
        yield


@pytest.fixture
def cli_environment(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("POINTS_MODE", "development")
    monkeypatch.setenv("POINTS_VAR_DIR", str(tmp_path))


@pytest.fixture
async def notifier_pool(
    database_url: str, cli_environment: None, capsys: pytest.CaptureFixture[str]
) -> AsyncIterator[asyncpg.Pool]:
    assert await points("quarantine", "list") == 0  # migrates every schema, as a start would
    capsys.readouterr()
    pool = await db.create_pool(database_url, "notifier")
    try:
        yield pool
    finally:
        await pool.close()


async def quarantine_poison(pool: asyncpg.Pool) -> None:
    async def never_called(events: list[Any]) -> None:
        raise AssertionError("nothing here parses")

    record: ConsumerRecord[Any, Any] = ConsumerRecord(
        topic=POINTS_RESULTS,
        partition=7,
        offset=41,
        timestamp=1_700_000_000_000,
        timestamp_type=0,
        key=b"staging:org-1:member-1",
        value=POISON,
        checksum=None,
        serialized_key_size=22,
        serialized_value_size=len(POISON),
        headers=[],
    )
    consumer = Consumer(
        group_id="notifier.callbacks.staging",
        models={POINTS_RESULTS: PointsResultEvent},
        handler=never_called,
        pool=lambda: pool,
    )
    await consumer.process([record])


class TestQuarantineCommands:
    async def test_list_shows_a_quarantined_message_and_replay_puts_it_back_on_its_topic(
        self, notifier_pool: asyncpg.Pool, capsys: pytest.CaptureFixture[str]
    ) -> None:
        await quarantine_poison(notifier_pool)

        assert await points("quarantine", "list", "--json") == 0
        [listed] = json.loads(capsys.readouterr().out)
        assert await points("quarantine", "list") == 0
        text = capsys.readouterr().out
        assert await points("quarantine", "replay", "--service", "notifier", str(listed["id"])) == 0
        replayed = capsys.readouterr().out
        assert await points("quarantine", "list") == 0
        after = capsys.readouterr().out

        assert listed["service"] == "notifier"
        assert (listed["topic"], listed["partition"], listed["offset"]) == (POINTS_RESULTS, 7, 41)
        assert listed["consumer"] == "notifier.callbacks.staging"
        assert listed["errorType"] == "ValidationError"
        assert listed["resolution"] is None
        assert f"notifier  {listed['id']}  waiting" in text
        assert "notifier: 1 replayed" in replayed
        assert "nothing quarantined is waiting" in after
        [again] = await notifier_pool.fetch(
            "SELECT key, payload FROM outbox WHERE topic = $1", POINTS_RESULTS
        )
        assert (again["key"], bytes(again["payload"])) == ("staging:org-1:member-1", POISON)

    async def test_a_replayed_message_cannot_be_replayed_twice(
        self, notifier_pool: asyncpg.Pool, capsys: pytest.CaptureFixture[str]
    ) -> None:
        await quarantine_poison(notifier_pool)
        assert await points("quarantine", "replay", "--all") == 0
        capsys.readouterr()

        assert await points("quarantine", "replay", "--service", "notifier", "1") == 1
        assert "already resolved" in capsys.readouterr().err
        assert await points("quarantine", "replay", "--service", "notifier", "999") == 1
        assert "no quarantined message 999" in capsys.readouterr().err

    async def test_replaying_by_id_needs_the_service_that_quarantined_it(
        self, cli_environment: None, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert await points("quarantine", "replay", "1") == 2
        assert "add --service" in capsys.readouterr().err

"""A notifier process SIGKILLed while callbacks are in flight, then started again.

The notifier runs as ``python -m services.notifier`` against the test's
PostgreSQL and broker, and posts to a real HTTP receiver that answers slowly,
so the kill lands while workers hold leased deliveries. What the notifier had
recorded as delivered must not go out again; what it had not must still
arrive, once the dead process's leases run out.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID

import pytest
from aiokafka import AIOKafkaProducer

from contracts import ALL_TOPICS
from infra import db
from infra.kafka_admin import create_topics
from tests.helpers import eventually, free_port
from tests.integration.test_notifier import client_event, result_event

CALLBACKS = 50
RECEIVER_DELAY_SECONDS = 0.3
KILL_AFTER_DELIVERED = 10


@dataclass(frozen=True)
class Arrival:
    event_id: UUID
    at: float  # the test loop's clock, when the request was read


@dataclass
class SlowReceiver:
    """Records each callback as it arrives, then answers 200 after ``delay`` seconds."""

    delay: float
    arrivals: list[Arrival] = field(default_factory=list)
    #: Requests read and not answered yet: a kill now cuts them off mid-delivery.
    unanswered: int = 0
    port: int = 0
    _server: asyncio.Server | None = None

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/points"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in head.split("\r\n")[1:])
            }
            await reader.readexactly(int(headers.get("content-length", "0")))
            now = asyncio.get_running_loop().time()
            self.arrivals.append(Arrival(UUID(headers["x-points-event-id"]), now))
            self.unanswered += 1
            try:
                await asyncio.sleep(self.delay)
            finally:
                self.unanswered -= 1
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the notifier died mid-request: what it sent is recorded already
        finally:
            writer.close()


@pytest.fixture
async def slow_receiver() -> AsyncIterator[SlowReceiver]:
    receiver = SlowReceiver(delay=RECEIVER_DELAY_SECONDS)
    await receiver.start()
    yield receiver
    await receiver.stop()


async def start_notifier(
    database_url: str, bootstrap: str, log: Path
) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "POINTS_MODE": "development",
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "NOTIFIER_PORT": str(free_port()),
        "NOTIFIER_RETRY_SCHEDULE_SECONDS": "[0.5, 0.5, 0.5, 0.5, 0.5]",
        "NOTIFIER_POLL_INTERVAL_SECONDS": "0.2",
        # Leases of the killed process run out 3 s after it claimed them.
        "NOTIFIER_TOTAL_TIMEOUT": "2",
        "NOTIFIER_SMTP_TIMEOUT": "2",
        "NOTIFIER_LEASE_GRACE_SECONDS": "1",
        "LOG_JSON": "true",
    }
    with log.open("ab") as output:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.notifier",
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=output,
        )


async def publish_client_and_results(bootstrap: str, callback_url: str) -> set[UUID]:
    results = [result_event(callback_url) for _ in range(CALLBACKS)]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for event in (client_event(), *results):
            await producer.send_and_wait(
                event.TOPIC, event.model_dump_json().encode(), key=event.key().encode()
            )
    finally:
        await producer.stop()
    return {event.event_id for event in results}


async def deliveries_by_status(database_url: str) -> dict[UUID, str]:
    try:
        connection = await db.connect(database_url, "notifier")
    except OSError:
        return {}
    try:
        rows = await connection.fetch("SELECT event_id, status FROM deliveries")
    except Exception:
        return {}  # not migrated yet
    finally:
        await connection.close()
    return {row["event_id"]: row["status"] for row in rows}


@contextmanager
def log_tail_on_failure(log: Path) -> Iterator[None]:
    """A failed assertion in the block carries the end of the notifier's log."""
    try:
        yield
    except AssertionError as error:
        error.add_note(log.read_text()[-3000:])
        raise


def delivered(statuses: dict[UUID, str]) -> set[UUID]:
    return {event_id for event_id, status in statuses.items() if status == "delivered"}


class TestNotifierKilledMidDelivery:
    async def test_it_resumes_without_losing_or_resending_a_delivery_recorded_as_done(
        self,
        database_url: str,
        kafka_bootstrap_servers: str,
        slow_receiver: SlowReceiver,
        tmp_path: Path,
    ) -> None:
        await create_topics(kafka_bootstrap_servers, ALL_TOPICS)
        expected = await publish_client_and_results(kafka_bootstrap_servers, slow_receiver.url())
        log = tmp_path / "notifier.log"

        async def some_delivered_and_more_in_flight() -> bool:
            done = delivered(await deliveries_by_status(database_url))
            return len(done) >= KILL_AFTER_DELIVERED and slow_receiver.unanswered > 0

        async def all_delivered() -> bool:
            return delivered(await deliveries_by_status(database_url)) == expected

        notifier = await start_notifier(database_url, kafka_bootstrap_servers, log)
        try:
            with log_tail_on_failure(log):
                await eventually(
                    some_delivered_and_more_in_flight,
                    timeout=60,
                    what="some callbacks delivered and more in flight",
                )
        finally:
            notifier.send_signal(signal.SIGKILL)
            await notifier.wait()
        killed_at = asyncio.get_running_loop().time()
        done_before_kill = delivered(await deliveries_by_status(database_url))
        arrived_before_kill = {arrival.event_id for arrival in slow_receiver.arrivals}
        in_flight_at_kill = arrived_before_kill - done_before_kill

        notifier = await start_notifier(database_url, kafka_bootstrap_servers, log)
        try:
            with log_tail_on_failure(log):
                await eventually(all_delivered, timeout=60, what="every callback delivered")
            await asyncio.sleep(1.0)  # room for a wrongful resend to arrive
        finally:
            notifier.send_signal(signal.SIGTERM)
            await notifier.wait()

        assert len(done_before_kill) < CALLBACKS, "the kill came too late to prove anything"
        assert in_flight_at_kill, "no callback was in flight when the notifier was killed"
        sent_after_kill = {
            arrival.event_id for arrival in slow_receiver.arrivals if arrival.at >= killed_at
        }
        assert {arrival.event_id for arrival in slow_receiver.arrivals} == expected
        assert done_before_kill & sent_after_kill == set()
        # Cut off before it was recorded, a callback is sent again: at least once.
        assert in_flight_at_kill <= sent_after_kill

"""A steady stream of callbacks to one receiver, over real sockets.

What a partner sees when a business's members earn points all day: its
receiver gets the callbacks as fast as it answers them, within the share of
concurrent requests the notifier allows a host, over connections that are
kept rather than opened for every callback; and an answer it makes too long
costs the notifier nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn

from services.notifier import queueing
from tests.helpers import eventually
from tests.integration.test_notifier import (
    CallbackReceiver,
    client_event,
    notifier_settings,
    result_event,
    running_callbacks,
    serving,
)

CALLBACKS = 200


class KeepAliveReceiver:
    """A real HTTP/1.1 server (uvicorn) that answers 204 and notes which connection
    (the client's address and port) each callback came over, and how many were in
    flight at once."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.all_arrived = asyncio.Event()
        self.request_ids: list[str] = []
        self.connections: set[tuple[str, int]] = set()
        self.in_flight = 0
        self.most_in_flight = 0
        self.port = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            await asyncio.sleep(0.002)  # a receiver does some work
            self.connections.add(tuple(scope["client"]))
            self.request_ids.append(json.loads(body)["requestId"])
            if len(self.request_ids) >= self.expected:
                self.all_arrived.set()
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        finally:
            self.in_flight -= 1

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/points"


@asynccontextmanager
async def keep_alive_receiver(expected: int) -> AsyncIterator[KeepAliveReceiver]:
    receiver = KeepAliveReceiver(expected)
    config = uvicorn.Config(receiver, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    serving_task = asyncio.create_task(server.serve())

    async def started() -> bool:
        return server.started

    await eventually(started, timeout=10, what="the receiver to listen")
    receiver.port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield receiver
    finally:
        server.should_exit = True
        await serving_task


class TestASteadyStreamToOneReceiver:
    async def test_goes_as_fast_as_it_answers_within_the_hosts_share_over_kept_connections(
        self, database_url: str
    ) -> None:
        # A poll far longer than the whole stream should take: only wake-ups move it.
        settings = notifier_settings(database_url, poll_interval_seconds=30.0)
        async with (
            keep_alive_receiver(CALLBACKS) as receiver,
            running_callbacks(settings) as notifier,
        ):
            await notifier.receive_client(client_event())
            events = [result_event(receiver.url()) for _ in range(CALLBACKS)]
            started = asyncio.get_running_loop().time()
            # As the consumer does: a batch of results queued in one transaction.
            pool = notifier.runtime.pool
            async with pool.acquire() as connection, connection.transaction():
                await queueing.queue_callbacks(connection, events)
            notifier.dispatcher.wake()
            async with asyncio.timeout(20):
                await receiver.all_arrived.wait()
            elapsed = asyncio.get_running_loop().time() - started

        assert sorted(receiver.request_ids) == sorted(event.data.request_id for event in events)
        assert elapsed < 10.0, f"{CALLBACKS} callbacks took {elapsed:.1f} s"
        assert receiver.most_in_flight <= settings.per_host_concurrency
        assert len(receiver.connections) <= settings.per_host_concurrency


class HugeAnswer(CallbackReceiver):
    """Answers 200 with a body that announces 100 MB, sends 1 MB of it, and then
    nothing more (the connection stays open)."""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(
            next(
                line.split(b":", 1)[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
        )
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n" + b"x" * 1_000_000)
        await writer.drain()
        self.received.append(None)  # type: ignore[arg-type]
        await asyncio.sleep(60)


class TestAReceiverThatAnswersAtLength:
    async def test_counts_as_delivered_at_once_without_the_body_being_read(
        self, database_url: str
    ) -> None:
        settings = notifier_settings(database_url, total_timeout=5.0)
        async with serving(HugeAnswer()) as receiver, running_callbacks(settings) as notifier:
            await notifier.receive_client(client_event())
            event = result_event(receiver.url())
            started = asyncio.get_running_loop().time()
            await notifier.receive_result(event)
            delivery = await notifier.wait_for_status(event, "delivered", timeout=4.0)
            elapsed = asyncio.get_running_loop().time() - started

        assert delivery["attempts"] == 1
        assert delivery["last_status_code"] == 200
        assert elapsed < 3.0


class TestTwoReplicasClaimingSideBySide:
    async def test_send_each_callback_once(self, database_url: str) -> None:
        # Both claim batches from the same queue at once; a row one leased is the other's
        # to skip, and each is marked delivered after a single attempt.
        settings = notifier_settings(database_url, poll_interval_seconds=30.0)
        async with (
            keep_alive_receiver(CALLBACKS) as receiver,
            running_callbacks(settings) as one,
            running_callbacks(settings) as two,
        ):
            await one.receive_client(client_event())
            events = [result_event(receiver.url()) for _ in range(CALLBACKS)]
            async with one.runtime.pool.acquire() as connection, connection.transaction():
                await queueing.queue_callbacks(connection, events)
            one.dispatcher.wake()
            two.dispatcher.wake()
            async with asyncio.timeout(20):
                await receiver.all_arrived.wait()
            await asyncio.sleep(0.5)  # a second sending would have arrived by now
            deliveries = await one.runtime.pool.fetch("SELECT status, attempts FROM deliveries")

        assert sorted(receiver.request_ids) == sorted(event.data.request_id for event in events)
        assert [tuple(row.values()) for row in deliveries] == [("delivered", 1)] * CALLBACKS

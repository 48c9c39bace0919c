"""Starting a service's consumer groups side by side (``infra.broker.start_broker``)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from faststream.kafka import KafkaBroker

from infra.broker import start_broker


class Subscriber:
    """Joins its group after ``joining`` seconds, or fails then."""

    def __init__(self, name: str, joining: float, log: list[str], *, fails: bool = False) -> None:
        self.name, self.joining, self.log, self.fails = name, joining, log, fails

    async def start(self) -> None:
        self.log.append(f"{self.name} joining")
        await asyncio.sleep(self.joining)
        if self.fails:
            raise ConnectionError(f"{self.name} could not join")
        self.log.append(f"{self.name} joined")


class Broker:
    """What ``start_broker`` uses of FastStream's broker."""

    def __init__(self, subscribers: list[Subscriber], log: list[str]) -> None:
        self.subscribers, self.publishers, self.log = subscribers, [], log
        self.running = False

    async def connect(self) -> None:
        self.log.append("connected")

    async def stop(self) -> None:
        self.log.append("stopped")


def started(broker: Broker) -> Any:
    return start_broker(cast("KafkaBroker", broker))


async def test_groups_join_side_by_side_so_start_up_takes_one_join_not_one_per_group() -> None:
    log: list[str] = []
    broker = Broker([Subscriber(f"group-{n}", 0.2, log) for n in range(5)], log)

    await started(broker)

    # Every group began joining before any had joined: one join's wait, not five.
    assert log[:6] == ["connected", *(f"group-{n} joining" for n in range(5))]
    assert sorted(log[6:]) == [f"group-{n} joined" for n in range(5)]
    assert broker.running


async def test_a_group_that_fails_stops_the_broker_only_once_every_other_start_ended() -> None:
    log: list[str] = []
    broker = Broker(
        [Subscriber("failing", 0.01, log, fails=True), Subscriber("slow", 0.2, log)], log
    )

    with pytest.raises(ConnectionError, match="failing could not join"):
        await started(broker)

    assert log[-2:] == ["slow joined", "stopped"]
    assert not broker.running

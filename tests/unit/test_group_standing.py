"""Whether the rules service waits for a consumer group: one that runs, even mid-rebalance."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from infra.catchup import GroupProgress
from infra.settings import ServiceSettings


@dataclass
class DescribedGroup:
    """What a broker answers to DescribeGroups, as aiokafka hands it over."""

    state: str
    members: list[dict[str, Any]]
    error_code: int = 0

    def to_object(self) -> dict[str, Any]:
        return {"groups": [{"error_code": self.error_code, "state": self.state,
                            "members": self.members}]}  # fmt: skip


class Broker:
    """An admin connection that answers every DescribeGroups with one group."""

    def __init__(self, group: DescribedGroup) -> None:
        self.group = group

    async def describe_consumer_groups(self, group_ids: list[str]) -> list[DescribedGroup]:
        return [self.group]


def progress_against(group: DescribedGroup) -> GroupProgress:
    progress = GroupProgress(ServiceSettings())
    progress._admin = Broker(group)  # type: ignore[assignment]  # the broker's answer, given
    return progress


@pytest.mark.parametrize(
    ("state", "members", "runs"),
    [
        ("Stable", [{"member_id": "gateway-1"}], True),
        # A replica joining or leaving, or the gateway's consumer starting again: the group
        # consumes again once the rebalance is over, so a change is waited for.
        ("PreparingRebalance", [{"member_id": "gateway-1"}], True),
        ("CompletingRebalance", [{"member_id": "gateway-1"}], True),
        ("PreparingRebalance", [], True),
        # Nobody runs the group: waiting would only make every answer late.
        ("Empty", [], False),
        ("Dead", [], False),
        ("Stable", [], False),
    ],
)
async def test_a_group_is_waited_for_while_anyone_runs_it(
    state: str, members: list[dict[str, Any]], runs: bool
) -> None:
    assert await progress_against(DescribedGroup(state, members)).is_consuming("g") is runs


async def test_a_group_the_broker_cannot_describe_is_not_waited_for() -> None:
    group = DescribedGroup("Stable", [{"member_id": "gateway-1"}], error_code=16)

    assert await progress_against(group).is_consuming("g") is False

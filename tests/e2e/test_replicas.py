"""Several replicas of every service on one machine (``points dev --scale``), as an
operator scales them: the replicas of a service share its port, the gateway's
replicas split the triggers, the ledger's split the partitions, and nothing is
applied twice."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from infra.dev.launcher import RunningPlatform
from tests.e2e.test_platform import business_with_an_active_rule
from tests.e2e.test_poison_messages import developer_headers
from tests.helpers import eventually, running_platform

pytestmark = pytest.mark.e2e

SCALE = {"rules": 2, "trigger": 2, "ledger": 2, "notifier": 2}
TRIGGERS = 60


@pytest.fixture(scope="module")
def platform() -> Iterator[RunningPlatform]:
    scale = ",".join(f"{name}={count}" for name, count in SCALE.items())
    with running_platform("points-replicas-", DEV_SCALE=scale) as running:
        yield running


def events_logged(platform: RunningPlatform, child: str, event: str) -> int:
    """How many lines of ``child``'s JSON log are ``event``."""
    path = platform.state / "log" / f"{child}.log"
    if not path.exists():
        return 0
    return sum(_event_of(line) == event for line in path.read_text(errors="replace").splitlines())


def _event_of(line: str) -> str | None:
    try:
        fields = json.loads(line)
    except ValueError:
        return None
    return fields.get("event") if isinstance(fields, dict) else None


def what_points_dev_showed(platform: RunningPlatform) -> str:
    return Path(platform.log).read_text(errors="replace")


def replicas_of(name: str) -> list[str]:
    return [f"{name}.{number}" for number in range(1, SCALE[name] + 1)]


class TestReplicasOnOneMachine:
    async def test_every_replica_runs_under_its_own_name_and_is_ready(
        self, platform: RunningPlatform
    ) -> None:
        children = [child for name in SCALE for child in replicas_of(name)]

        async def all_ready() -> bool:
            return all(events_logged(platform, child, "service.ready") for child in children)

        await eventually(all_ready, timeout=60, what="every replica to be ready")
        assert set(children) <= set(platform.pids)
        shown = what_points_dev_showed(platform)
        assert all(f"{child} " in shown for child in children)  # each line's name prefix

    async def test_the_replicas_split_the_triggers_and_apply_each_once(
        self, platform: RunningPlatform
    ) -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            business = await business_with_an_active_rule(platform, http, "Twin Mills", "Grain")
            developer = await developer_headers(platform, http, business)
        gateway = f"{platform.urls['trigger']}/v1/points/requests"
        request_ids = [uuid.uuid4().hex for _ in range(TRIGGERS)]
        for number, request_id in enumerate(request_ids):
            # A connection per trigger, as many partners' apps would open: the kernel
            # picks a replica for each new connection.
            async with httpx.AsyncClient(timeout=10) as http:
                trigger = {"userId": f"member-{number}", "ruleId": business.rule_id,
                           "amount": 2, "requestId": request_id}  # fmt: skip
                answer = await http.post(gateway, headers=developer, json=trigger)
                assert answer.status_code == 202, answer.text

        async with httpx.AsyncClient(timeout=10, headers=developer) as http:

            async def settled() -> bool:
                for request_id in request_ids:
                    status = await http.get(f"{gateway}/{request_id}")
                    if status.json()["status"] != "succeeded":
                        return False
                return True

            await eventually(settled, timeout=60, what="every trigger to be applied")
            balances = [
                (await http.get(
                    f"{platform.urls['ledger']}/v1/members/member-{number}/balance",
                    params={"environment": "staging"},
                )).json()["balance"]
                for number in range(TRIGGERS)
            ]  # fmt: skip

        assert balances == [2] * TRIGGERS  # applied once each, whichever replica applied it
        accepted = [
            events_logged(platform, child, "points.request.accepted")
            for child in replicas_of("trigger")
        ]
        assert sum(accepted) == TRIGGERS and all(accepted), accepted
        applied = [
            events_logged(platform, child, "points.batch.applied")
            for child in replicas_of("ledger")
        ]
        assert all(applied), applied

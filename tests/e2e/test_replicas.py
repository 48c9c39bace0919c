"""Several replicas of every service on one machine (``points dev --scale``), as an
operator scales them: the replicas of a service share its port, the gateway's
replicas split the triggers, the ledger's split the partitions, and nothing is
applied twice, also while replicas are killed at random under load (the chaos test)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra.dev.launcher import RunningPlatform
from tests.e2e.conftest import CallbackReceiver
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


# --- chaos -----------------------------------------------------------------------------

CHAOS_SECONDS = 60.0
TRIGGERS_PER_SECOND = 15
KILL_EVERY_SECONDS = 4.0
MEMBERS = [f"chaos-member-{number}" for number in range(40)]


@dataclass
class Offered:
    """What the partner's app sent and the gateway accepted, and what was done to it."""

    accepted: dict[str, tuple[str, int]] = field(default_factory=dict)
    """requestId → (member, amount), for every trigger answered 202."""
    retried: Counter[str] = field(default_factory=Counter)
    """Why triggers were sent again (same requestId and body): no answer, or a 5xx code."""
    killed: list[str] = field(default_factory=list)
    scaled: list[dict[str, int]] = field(default_factory=list)


async def offer_triggers(
    gateway: str, developer: dict[str, str], rule_id: str, callback_url: str, until: float,
    offered: Offered,
) -> None:  # fmt: skip
    """A partner's app: triggers at a steady rate, each on a connection of its own, each
    sent again with the same requestId until it gets an answer that is not a server error."""
    loop = asyncio.get_running_loop()
    sending: set[asyncio.Task[None]] = set()
    number = 0
    # No connection is kept: the kernel picks a gateway replica for each trigger.
    fresh_connections = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=5, limits=fresh_connections) as http:
        while loop.time() < until:
            number += 1
            body = {"userId": random.choice(MEMBERS), "ruleId": rule_id,
                    "amount": number % 5 + 1, "requestId": uuid.uuid4().hex,
                    "callbackUrl": callback_url}  # fmt: skip
            task = asyncio.create_task(send_until_answered(http, gateway, developer, body, offered))
            sending.add(task)
            task.add_done_callback(sending.discard)
            await asyncio.sleep(1 / TRIGGERS_PER_SECOND)
        await asyncio.gather(*sending)


async def send_until_answered(
    http: httpx.AsyncClient,
    gateway: str,
    developer: dict[str, str],
    body: dict[str, Any],
    offered: Offered,
) -> None:
    for attempt in range(60):
        if attempt:
            await asyncio.sleep(0.5)
        try:
            answer = await http.post(gateway, headers=developer, json=body)
        except httpx.HTTPError as error:  # the replica with the connection was killed
            offered.retried[type(error).__name__] += 1
            continue
        if answer.status_code >= 500:
            offered.retried[f"{answer.status_code} {answer.json().get('code')}"] += 1
            continue
        assert answer.status_code == 202, answer.text
        offered.accepted[body["requestId"]] = (body["userId"], body["amount"])
        return
    raise AssertionError(f"trigger {body['requestId']} was never answered")


async def kill_replicas(platform: RunningPlatform, until: float, offered: Offered) -> None:
    """Every few seconds, SIGKILL a random replica of a random service (its whole process
    group, as a crash would); the stack starts it again."""
    loop = asyncio.get_running_loop()
    chaos = random.Random()
    while loop.time() + KILL_EVERY_SECONDS < until:
        await asyncio.sleep(KILL_EVERY_SECONDS)
        running = platform.pids
        service = chaos.choice(sorted(SCALE))
        child = chaos.choice(sorted(name for name in running if name.startswith(f"{service}.")))
        with contextlib.suppress(ProcessLookupError):  # already down, being restarted
            os.killpg(running[child], signal.SIGKILL)
            offered.killed.append(child)


async def add_then_remove_replicas(
    platform: RunningPlatform, until: float, offered: Offered
) -> None:
    """A third of the way in, a replica more of the ledger and the notifier, as an operator
    scales up under load; two thirds of the way in, back down."""
    loop = asyncio.get_running_loop()
    third = (until - loop.time()) / 3
    for scale in ("ledger=3,notifier=3", "ledger=2,notifier=2"):
        await asyncio.sleep(third)
        offered.scaled.append(await asyncio.to_thread(platform.points, "scale", scale))


class TestChaos:
    async def test_replicas_killed_under_load_lose_nothing_and_apply_nothing_twice(
        self, platform: RunningPlatform, receiver: CallbackReceiver
    ) -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            business = await business_with_an_active_rule(platform, http, "Chaos Co", "Storm")
            developer = await developer_headers(platform, http, business)
        gateway = f"{platform.urls['trigger']}/v1/points/requests"
        offered = Offered()
        until = asyncio.get_running_loop().time() + CHAOS_SECONDS

        await asyncio.gather(
            offer_triggers(gateway, developer, business.rule_id, receiver.url, until, offered),
            kill_replicas(platform, until, offered),
            add_then_remove_replicas(platform, until, offered),
        )

        assert len(offered.killed) >= CHAOS_SECONDS // KILL_EVERY_SECONDS - 2, offered.killed
        assert [(each["ledger"], each["notifier"]) for each in offered.scaled] == [(3, 3), (2, 2)]
        async with httpx.AsyncClient(timeout=10, headers=developer) as http:
            await eventually(
                lambda: all_settled(http, gateway, offered), timeout=120,
                what="every accepted trigger to be applied",
            )  # fmt: skip
            balances = {
                member: (await http.get(
                    f"{platform.urls['ledger']}/v1/members/{member}/balance",
                    params={"environment": "staging"},
                )).json()["balance"]
                for member in MEMBERS
            }  # fmt: skip
        expected = dict.fromkeys(MEMBERS, 0)
        for member, amount in offered.accepted.values():
            expected[member] += amount
        assert balances == expected  # every accepted trigger applied, none twice

        async def callbacks_for_all() -> bool:
            return called_back(receiver) >= set(offered.accepted)

        await eventually(callbacks_for_all, timeout=120, what="a callback for every trigger")
        assert called_back(receiver) == set(offered.accepted)
        async with httpx.AsyncClient(timeout=10, headers=business.console) as http:
            rule = (await http.get(f"{platform.urls['rules']}/v1/rules/{business.rule_id}")).json()
        assert rule["capUsed"] == sum(expected.values())  # the cap counts each once
        assert platform.points("ledger", "verify") == {"violations": []}
        print(  # the figures of this run, for the record
            f"\nchaos: {len(offered.accepted)} triggers accepted, sent again after "
            f"{dict(offered.retried)}, "
            f"{len(offered.killed)} replicas killed ({', '.join(offered.killed)}), a third "
            "ledger and notifier added and removed, "
            f"{len(receiver.received)} callbacks for {len(called_back(receiver))} requests"
        )


async def all_settled(http: httpx.AsyncClient, gateway: str, offered: Offered) -> bool:
    for request_id in offered.accepted:
        status = await http.get(f"{gateway}/{request_id}")
        if status.status_code != 200 or status.json()["status"] != "succeeded":
            return False
    return True


def called_back(receiver: CallbackReceiver) -> set[str]:
    """The requests the receiver was sent a succeeded callback for."""
    payloads = (json.loads(body) for _, body in receiver.received)
    return {payload["requestId"] for payload in payloads if payload["status"] == "succeeded"}

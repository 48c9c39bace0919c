"""Poison injected straight into every topic stops nobody.

Bytes that are not JSON, JSON of the wrong shape and a valid envelope whose
values the database refuses go onto every partition of every topic, as a
broken or hostile producer would put them there. Each consumer quarantines
what it cannot process (an operator sees it with ``points quarantine list``),
and a well-behaved developer's triggers, for members on every partition,
still settle with their callbacks within seconds.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from contracts import (
    ALL_TOPICS,
    CLIENTS_LIFECYCLE,
    NOTIFICATIONS_REQUESTED,
    POINTS_REQUESTED,
    POINTS_RESULTS,
    RULES_LIFECYCLE,
    member_key,
)
from infra.dev.launcher import RunningPlatform
from tests.e2e.conftest import CallbackReceiver, client_token_headers
from tests.e2e.test_platform import Business, business_with_an_active_rule
from tests.helpers import eventually, running_platform

pytestmark = pytest.mark.e2e

#: What each service's consumers read, by topic: every one must quarantine a message
#: that is not JSON, on every partition.
CONSUMING_SERVICES = {
    RULES_LIFECYCLE: ("trigger",),
    CLIENTS_LIFECYCLE: ("trigger", "notifier"),
    POINTS_REQUESTED: ("ledger",),
    POINTS_RESULTS: ("trigger", "rules", "notifier"),
    NOTIFICATIONS_REQUESTED: ("notifier",),
}
PARTITIONS = {topic.name: topic.partitions for topic in ALL_TOPICS}
#: How long the other members' requests may take to settle after the poison.
SETTLE_SECONDS = 5.0


@pytest.fixture(scope="module")
def platform() -> Iterator[RunningPlatform]:
    with running_platform("points-poison-") as running:
        yield running


def bootstrap_servers(platform: RunningPlatform) -> str:
    return platform.stack_setting("KAFKA_BOOTSTRAP_SERVERS")


def too_long_for_an_index() -> str:
    """Text PostgreSQL refuses in a B-tree index: longer than a page third, even compressed."""
    return base64.b64encode(os.urandom(6_000)).decode()


def refused_request(environment: str) -> bytes:
    """A points request that meets its contract but whose member id no account can hold."""
    now = datetime.now(UTC).isoformat()
    return json.dumps(
        {
            "event_id": str(uuid.uuid4()),
            "type": "points.requested",
            "version": 1,
            "occurred_at": now,
            "environment": environment,
            "org_id": "org-poison",
            "correlation_id": "poison",
            "data": {
                "request_id": "poison-1",
                "transaction_id": str(uuid.uuid4()),
                "client_id": "client-poison",
                "rule_id": "rule-poison",
                "rule_version": 1,
                "user_id": too_long_for_an_index(),
                "type": "earn",
                "amount": 10,
                "callback_url": None,
                "requested_at": now,
            },
        }
    ).encode()


async def inject_poison(bootstrap: str) -> None:
    """Not JSON and the wrong shape on every partition of every topic, keyless and keyed
    by each environment; and a request the ledger's database refuses, in each environment."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for topic, partitions in PARTITIONS.items():
            for partition in range(partitions):
                for key in (None, b"staging:poison:member", b"production:poison:member"):
                    for value in (b"\xffnot json at all", b'{"type": "wrong shape"}'):
                        await producer.send(topic, value, key=key, partition=partition)
        for environment in ("staging", "production"):
            await producer.send(
                POINTS_REQUESTED,
                refused_request(environment),
                key=f"{environment}:org-poison:member".encode(),
            )
        await producer.flush()
    finally:
        await producer.stop()


def members_on_every_partition(environment: str, org_id: str) -> list[str]:
    """One member id whose requests land on each partition of ``points.requested.v1``."""
    partitioner = DefaultPartitioner()
    partitions = list(range(PARTITIONS[POINTS_REQUESTED]))
    members: dict[int, str] = {}
    for n in range(10_000):
        user_id = f"member-{n}"
        key = member_key(environment, org_id, user_id).encode()
        members.setdefault(partitioner(key, partitions, partitions), user_id)
        if len(members) == len(partitions):
            return list(members.values())
    raise AssertionError("no member ids cover every partition")


async def developer_headers(
    platform: RunningPlatform, http: httpx.AsyncClient, business: Business
) -> dict[str, str]:
    return await client_token_headers(platform.urls["rules"], http, business.client)


class TestPoisonInEveryTopic:
    async def test_is_quarantined_and_every_partitions_members_still_settle(
        self, platform: RunningPlatform, receiver: CallbackReceiver
    ) -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            business = await business_with_an_active_rule(
                platform, http, "Poison Tasting", "Antidote points"
            )
            developer = await developer_headers(platform, http, business)
            org_id = business.org_id

            members = members_on_every_partition("staging", org_id)
            await inject_poison(bootstrap_servers(platform))
            # The triggers go right behind the poison, on the same partitions.
            sent_at = time.monotonic()
            for n, user_id in enumerate(members):
                trigger = {
                    "userId": user_id,
                    "ruleId": business.rule_id,
                    "amount": 5,
                    "requestId": f"after-poison-{n}",
                    "callbackUrl": receiver.url,
                }
                await eventually(
                    lambda t=trigger: accepted(http, platform, developer, t),
                    what=f"the gateway to accept {trigger}",
                )

            async def all_settled() -> bool:
                for n in range(len(members)):
                    status = await http.get(
                        f"{platform.urls['trigger']}/v1/points/requests/after-poison-{n}",
                        headers=developer,
                    )
                    if status.json()["status"] != "succeeded":
                        return False
                return True

            async def all_called_back() -> bool:
                return len(receiver.received) >= len(members)

            await eventually(all_settled, timeout=SETTLE_SECONDS, what="every request to settle")
            await eventually(all_called_back, timeout=SETTLE_SECONDS, what="every callback")
            settled_in = time.monotonic() - sent_at
            assert settled_in <= SETTLE_SECONDS

            async def everything_quarantined() -> bool:
                return not missing_quarantines(platform)

            await eventually(everything_quarantined, what="the poison to be quarantined")
            quarantined_in = time.monotonic() - sent_at
            print(
                f"poison quarantined in {quarantined_in:.1f} s; {len(members)} members "
                f"on every partition settled with callbacks in {settled_in:.2f} s"
            )

        verify = platform.points("ledger", "verify")
        assert verify["violations"] == [], verify

    async def test_a_request_the_ledger_cannot_apply_is_settled_as_failed_not_left_waiting(
        self, platform: RunningPlatform
    ) -> None:
        async def settled() -> list[dict[str, Any]]:
            rows = platform.points("quarantine", "list", "--service", "ledger", "--resolved")
            return [row for row in rows if row["resolution"] == "failed"]

        failed = await eventually(settled, what="the ledger's failed results")
        assert {row["topic"] for row in failed} == {POINTS_REQUESTED}
        assert len(failed) == 2  # one per environment


async def accepted(
    http: httpx.AsyncClient,
    platform: RunningPlatform,
    developer: dict[str, str],
    trigger: dict[str, Any],
) -> httpx.Response | None:
    response = await http.post(
        f"{platform.urls['trigger']}/v1/points/requests", headers=developer, json=trigger
    )
    return response if response.status_code == 202 else None


def missing_quarantines(platform: RunningPlatform) -> list[tuple[str, str, int]]:
    """(service, topic, partition) where a message that is not JSON is not quarantined yet."""
    rows = platform.points("quarantine", "list", "--resolved", "--limit", "10000")
    kept = {
        (row["service"], row["topic"], row["partition"])
        for row in rows
        if row["errorType"] == "ValidationError"
    }
    return [
        (service, topic, partition)
        for topic, services in CONSUMING_SERVICES.items()
        for service in services
        for partition in range(PARTITIONS[topic])
        if (service, topic, partition) not in kept
    ]

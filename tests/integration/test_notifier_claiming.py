"""The fair claim, a batch at a time, on a real PostgreSQL.

The notifier's claimer leases as many due deliveries as its workers have room
for in one statement. What a tenant relies on: the organisation with the
fewest deliveries in flight goes first and the others take turns, none goes
past its share or its host's, retries are not left behind fresh callbacks,
and a leased delivery is nobody else's.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest

from services.notifier import repository
from services.notifier.app import MIGRATIONS
from services.notifier.repository import NewDelivery
from tests.helpers import migrated_pool

LEASE_SECONDS = 60.0


@pytest.fixture
async def notifier_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with migrated_pool(database_url, "notifier", MIGRATIONS, max_size=4) as pool:
        yield pool


async def queue(
    pool: asyncpg.Pool, org_id: str, count: int, *, host: str = "hooks.example.com", age: float
) -> list[NewDelivery]:
    """``count`` callbacks of ``org_id`` to ``host``, due for ``age`` seconds (the first
    the oldest)."""
    deliveries = [
        NewDelivery(
            event_id=uuid.uuid4(),
            client_id=f"{org_id}-client",
            org_id=org_id,
            environment="staging",
            request_id=f"{org_id}-{number}",
            transaction_id=uuid.uuid4(),
            url=f"https://{host}/points",
            host=host,
            body=b"{}",
        )
        for number in range(count)
    ]
    async with pool.acquire() as connection:
        assert len(await repository.insert_deliveries(connection, deliveries)) == count
        for number, delivery in enumerate(deliveries):
            await connection.execute(
                "UPDATE deliveries SET next_attempt_at = now() - $2::interval WHERE event_id = $1",
                delivery.event_id,
                timedelta(seconds=age - number * 0.001),
            )
    return deliveries


async def claim(
    pool: asyncpg.Pool,
    limit: int,
    *,
    in_flight: dict[str, int] | None = None,
    organisation_limit: int = 8,
    hosts_in_flight: dict[tuple[str, str], int] | None = None,
    host_limit: int = 8,
) -> list[repository.ClaimedCallback]:
    claimed = await repository.claim_due(
        pool,
        kind="callback",
        lease_seconds=LEASE_SECONDS,
        limit=limit,
        in_flight=in_flight or {},
        organisation_limit=organisation_limit,
        hosts_in_flight=hosts_in_flight or {},
        host_limit=host_limit,
    )
    assert all(isinstance(delivery, repository.ClaimedCallback) for delivery in claimed)
    return claimed  # type: ignore[return-value]


def by_organisation(claimed: list[repository.ClaimedCallback]) -> Counter[str]:
    return Counter(delivery.org_id for delivery in claimed)


class TestABatchClaim:
    async def test_organisations_take_turns_the_one_with_fewest_in_flight_first(
        self, notifier_pool: asyncpg.Pool
    ) -> None:
        # The busy organisation's queue is older and longer; it has 2 in flight already.
        await queue(notifier_pool, "org-busy", 10, age=60)
        await queue(notifier_pool, "org-quiet", 10, age=30)

        claimed = await claim(notifier_pool, 4, in_flight={"org-busy": 2})

        # Places: quiet 1, 2, 3 and busy 3 (2 in flight + its first), the older first.
        assert by_organisation(claimed) == {"org-quiet": 3, "org-busy": 1}

    async def test_a_long_queue_gets_no_more_than_its_share_of_a_big_batch(
        self, notifier_pool: asyncpg.Pool
    ) -> None:
        await queue(notifier_pool, "org-flood", 500, age=60)
        await queue(notifier_pool, "org-other", 3, age=1)

        claimed = await claim(notifier_pool, 32, in_flight={"org-flood": 5}, organisation_limit=8)

        assert by_organisation(claimed) == {"org-flood": 3, "org-other": 3}

    async def test_a_host_at_its_limit_is_passed_over_for_the_organisations_other_host(
        self, notifier_pool: asyncpg.Pool
    ) -> None:
        await queue(notifier_pool, "org-1", 5, host="slow.example.com", age=60)
        await queue(notifier_pool, "org-1", 2, host="fast.example.com", age=30)

        claimed = await claim(
            notifier_pool, 8, hosts_in_flight={("org-1", "slow.example.com"): 2}, host_limit=2
        )

        assert Counter(delivery.host for delivery in claimed) == {"fast.example.com": 2}

    async def test_a_host_takes_no_more_than_its_room_in_one_batch(
        self, notifier_pool: asyncpg.Pool
    ) -> None:
        await queue(notifier_pool, "org-1", 6, host="one.example.com", age=60)

        claimed = await claim(
            notifier_pool, 8, hosts_in_flight={("org-1", "one.example.com"): 1}, host_limit=3
        )

        assert len(claimed) == 2

    async def test_a_due_retry_goes_before_callbacks_queued_after_it_fell_due(
        self, notifier_pool: asyncpg.Pool
    ) -> None:
        [retry] = await queue(notifier_pool, "org-1", 1, age=5)
        await notifier_pool.execute(
            "UPDATE deliveries SET attempts = 2, last_error = 'HTTP 503' WHERE event_id = $1",
            retry.event_id,
        )
        await queue(notifier_pool, "org-1", 20, age=1)

        [first] = await claim(notifier_pool, 1)

        assert (first.event_id, first.attempt) == (retry.event_id, 3)

    async def test_what_is_not_due_is_left_and_its_time_is_known(
        self, notifier_pool: asyncpg.Pool
    ) -> None:
        [later] = await queue(notifier_pool, "org-1", 1, age=0)
        await notifier_pool.execute(
            "UPDATE deliveries SET next_attempt_at = now() + interval '30 seconds' "
            "WHERE event_id = $1",
            later.event_id,
        )

        claimed = await claim(notifier_pool, 8)
        seconds = await repository.seconds_until_next_due(notifier_pool, "callback")

        assert claimed == []
        assert seconds is not None and 25 < seconds <= 30

    async def test_a_leased_delivery_is_not_claimed_again_while_its_lease_lasts(
        self, notifier_pool: asyncpg.Pool
    ) -> None:
        await queue(notifier_pool, "org-1", 3, age=10)

        first = await claim(notifier_pool, 2)
        second = await claim(notifier_pool, 8)
        third = await claim(notifier_pool, 8)

        assert len(first) == 2
        assert len(second) == 1
        assert {d.id for d in first}.isdisjoint(d.id for d in second)
        assert third == []

    async def test_a_callback_comes_with_its_clients_salts_and_none_for_an_unknown_client(
        self, notifier_pool: asyncpg.Pool
    ) -> None:
        await queue(notifier_pool, "org-known", 1, age=10)
        await queue(notifier_pool, "org-unknown", 1, age=10)
        await notifier_pool.execute(
            "INSERT INTO clients (client_id, org_id, environment, status, signing_key_salt, "
            "previous_signing_key_salt, previous_salt_valid_until, occurred_at) "
            "VALUES ('org-known-client', 'org-known', 'staging', 'active', 'salt-new', "
            "'salt-old', now() + interval '1 hour', now())"
        )

        claimed = {delivery.org_id: delivery.salts for delivery in await claim(notifier_pool, 8)}

        assert claimed == {"org-known": ("salt-new", "salt-old"), "org-unknown": ()}

"""`make bench-restart`: how long `make run` takes to start on a state it kept, against a
fresh start.

Starts the whole platform (``points dev`` on free ports) in a new state
directory and times it, seeds a client and an active earn rule, gives
``--members`` members (10,000) points with one trigger each through the
gateway, waits until every one is applied and called back, stops it with
SIGINT (Ctrl-C), and starts it again on the same state, twice. Each start is
timed to ready (every service answers ``/readyz``) and to caught up: every
event the relays published again to the new, empty broker consumed, which is
what a restart costs beyond a fresh start.

Figures are printed; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time

import asyncpg
import httpx
from gateway import seed

from infra.dev.launcher import RunningPlatform, start_platform

RATE_LIMIT = {"TRIGGER_RATE_LIMIT_PER_SECOND": "1000000", "TRIGGER_RATE_LIMIT_BURST": "1000000"}


async def give_points(platform: RunningPlatform, rule_id: str, token: str, members: int) -> None:
    """One trigger for each of ``members`` members, 32 at a time."""
    numbers = iter(range(members))
    headers = {"Authorization": f"Bearer {token}"}

    async def send(http: httpx.AsyncClient) -> None:
        for number in numbers:
            body = {
                "userId": f"member-{number}",
                "ruleId": rule_id,
                "amount": 10,
                "requestId": f"restart-bench-{number}",
            }
            response = await http.post("/v1/points/requests", headers=headers, json=body)
            response.raise_for_status()

    async with httpx.AsyncClient(base_url=platform.urls["trigger"], timeout=30) as http:
        await asyncio.gather(*(send(http) for _ in range(32)))


async def settled(dsn: str) -> None:
    """Until no request is pending and the ledger holds every one."""
    connection = await asyncpg.connect(dsn)
    try:
        while await connection.fetchval(  # noqa: ASYNC110 - polling another process's work
            "SELECT count(*) FROM trigger.requests WHERE status = 'pending'"
        ):
            await asyncio.sleep(0.5)
    finally:
        await connection.close()


async def caught_up(dsn: str, since: float) -> float:
    """Seconds from ``since`` until every outbox has published everything it holds."""
    connection = await asyncpg.connect(dsn)
    try:
        while True:
            waiting = 0
            for schema in ("rules", "trigger", "ledger", "notifier"):
                waiting += await connection.fetchval(
                    f"SELECT count(*) FROM {schema}.outbox WHERE published_at IS NULL"  # noqa: S608 - fixed names
                )
            if waiting == 0:
                break
            await asyncio.sleep(0.2)
    finally:
        await connection.close()
    return time.monotonic() - since


def consumer_lag(platform: RunningPlatform) -> int:
    total = 0
    for url in platform.urls.values():
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        for match in re.finditer(r"^points_consumer_lag\{[^}]*\} (\S+)$", metrics, re.MULTILINE):
            total += int(float(match.group(1)))
    return total


def timed_start(platform: RunningPlatform) -> tuple[float, float]:
    """Seconds until ready, and until caught up (outboxes published, consumer lag 0)."""
    started = time.monotonic()
    platform.wait_ready(timeout=600)
    ready = time.monotonic() - started
    asyncio.run(caught_up(platform.stack_setting("DATABASE_URL"), started))
    while consumer_lag(platform) > 0:
        time.sleep(0.5)
    return ready, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=10_000)
    options = parser.parse_args()

    platform = start_platform("bench-restart-", **RATE_LIMIT)
    try:
        ready, _ = timed_start(platform)
        print(f"fresh start: ready in {ready:.1f} s")
        rule_id, token = seed(platform)
        loading = time.monotonic()
        asyncio.run(give_points(platform, rule_id, token, options.members))
        asyncio.run(settled(platform.stack_setting("DATABASE_URL")))
        print(f"{options.members} members given points in {time.monotonic() - loading:.1f} s")
        for attempt in (1, 2):
            stopping = time.monotonic()
            code = platform.interrupt()
            print(f"Ctrl-C: stopped in {time.monotonic() - stopping:.1f} s (exit {code})")
            platform = platform.start_again()
            ready, caught = timed_start(platform)
            print(
                f"start {attempt} on the kept state: ready in {ready:.1f} s, "
                f"everything republished and consumed in {caught:.1f} s"
            )
        log = platform.log.read_text()
        for line in re.findall(r'"rows": \d+[^\n]*?"published_since"[^,]*', log)[-4:]:
            print("  ", line)
    finally:
        platform.stop()
        platform.remove_state()


if __name__ == "__main__":
    main()

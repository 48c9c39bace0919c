"""`make bench-soak`: steady load for minutes, and every table's size flat once its
retention has passed.

Runs the whole platform (``points dev`` on free ports) with every retention
shortened to ``--retention-seconds`` (default: a tenth of the run, at least
10 s) through the settings the services read: the outbox's, the event topics'
``retention.ms`` and ``segment.ms`` (so the inboxes' horizon, three of them,
shortens too), the gateway's settled requests and the notifier's delivered
callbacks; the purges run every ``--purge-seconds``. Then it offers ``--rate``
triggers a second with callbacks, open loop, for ``--minutes`` (default 10),
and every ``--sample-seconds`` prints the rows and on-disk size of every table
of every service's schema (exact counts: the bench's tables are small).

Last, per table: the rows and size at the end against their largest after the
first inbox horizon, so growth shows as a ratio above 1. Figures only; nothing
is asserted (machines are noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import asyncpg
from e2e import LeanHttp, Seeded, Sent, on_seeded_platform, start_receiver, trigger, warm_up

from infra.dev.launcher import RunningPlatform
from infra.settings import SERVICES

TABLES = """
SELECT n.nspname AS schema, c.relname AS name, pg_total_relation_size(c.oid) AS bytes
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY($1::text[]) AND c.relkind = 'r' AND c.relname NOT LIKE '\\_yoyo%'
  AND c.relname NOT LIKE 'yoyo%'
ORDER BY 1, 2
"""

Sizes = dict[str, tuple[int, int]]  # schema.table -> (rows, bytes)


@dataclass
class Samples:
    taken: list[tuple[float, Sizes]] = field(default_factory=list)


async def sizes(connection: asyncpg.Connection) -> Sizes:
    tables = await connection.fetch(TABLES, list(SERVICES))
    measured: Sizes = {}
    for table in tables:
        name = f'"{table["schema"]}"."{table["name"]}"'
        rows = await connection.fetchval(f"SELECT count(*) FROM {name}")  # noqa: S608
        measured[f"{table['schema']}.{table['name']}"] = (int(rows), int(table["bytes"]))
    return measured


def show(elapsed: float, measured: Sizes, previous: Sizes | None) -> None:
    print(f"\n-- after {elapsed / 60:4.1f} min --", flush=True)
    for name, (rows, size) in measured.items():
        if rows == 0 and (previous is None or previous.get(name, (0, 0))[0] == 0):
            continue
        print(f"  {name:42} {rows:>9,} rows {size / 1024:>9,.0f} KiB", flush=True)


def summary(samples: Samples, horizon: float) -> None:
    after = [(at, measured) for at, measured in samples.taken if at >= horizon]
    if len(after) < 2:
        print("\n(the run was shorter than the first inbox horizon: no summary)")
        return
    last = after[-1][1]
    print(f"\nper table, after the first inbox horizon ({horizon / 60:.1f} min):")
    print(f"  {'table':42} {'rows now':>9} {'most':>9} {'KiB now':>9} {'most':>9}")
    for name, (rows, size) in last.items():
        most_rows = max(measured.get(name, (0, 0))[0] for _, measured in after)
        most_bytes = max(measured.get(name, (0, 0))[1] for _, measured in after)
        if most_rows == 0:
            continue
        print(
            f"  {name:42} {rows:>9,} {most_rows:>9,} {size / 1024:>9,.0f}"
            f" {most_bytes / 1024:>9,.0f}"
        )


#: How often the load takes new client tokens: well inside a token's lifetime.
TOKEN_RENEWAL_SECONDS = 60.0


async def load(
    platform: RunningPlatform,
    gateway: LeanHttp,
    seeded: Seeded,
    receiver_url: str,
    rate: int,
    until: float,
) -> Counter[int]:
    """Offer ``rate`` triggers a second until ``until`` (monotonic); how many were answered
    with each status."""
    tasks: set[asyncio.Task[None]] = set()
    answered: Counter[int] = Counter()
    start, number = time.perf_counter(), 0
    renew_at = time.monotonic() + TOKEN_RENEWAL_SECONDS
    while time.monotonic() < until:
        if time.monotonic() >= renew_at:
            await asyncio.to_thread(seeded.renew_tokens, platform)
            renew_at = time.monotonic() + TOKEN_RENEWAL_SECONDS
        delay = start + number / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        item = Sent(f"soak-{number}-{uuid.uuid4().hex[:8]}", time.time())
        token = seeded.tokens[number % len(seeded.tokens)]
        task = asyncio.create_task(
            trigger(gateway, token, seeded.rule_id, receiver_url, number, item, None)
        )
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        task.add_done_callback(lambda _, sent=item: answered.update([sent.status]))
        number += 1
    await asyncio.gather(*tasks)
    return answered


async def run(platform: RunningPlatform, seeded: Seeded, options: argparse.Namespace) -> None:
    receiver, receiver_url, log = start_receiver(platform)
    gateway = LeanHttp(platform.urls["trigger"])
    connection = await asyncpg.connect(platform.stack_setting("DATABASE_URL"))
    samples = Samples()
    try:
        await warm_up(gateway, seeded, receiver_url, log)
        began = time.monotonic()
        until = began + options.minutes * 60
        sending = asyncio.create_task(
            load(platform, gateway, seeded, receiver_url, options.rate, until)
        )
        previous = None
        while not sending.done():
            elapsed = time.monotonic() - began
            measured = await sizes(connection)
            samples.taken.append((elapsed, measured))
            show(elapsed, measured, previous)
            previous = measured
            await asyncio.wait({sending}, timeout=options.sample_seconds)
        answered = await sending
        statuses = ", ".join(f"{count:,} {status}" for status, count in sorted(answered.items()))
        print(
            f"\nsent {answered.total():,} triggers in {options.minutes:g} min, answered: "
            f"{statuses}",
            flush=True,
        )
        measured = await sizes(connection)
        samples.taken.append((time.monotonic() - began, measured))
        show(time.monotonic() - began, measured, previous)
        summary(samples, horizon=3 * options.retention_seconds + options.purge_seconds)
    finally:
        await connection.close()
        await gateway.close()
        receiver.kill()


def shortened(retention_seconds: float, purge_seconds: float) -> dict[str, str]:
    """The settings that shorten every retention to ``retention_seconds``."""
    hours, days = retention_seconds / 3600, retention_seconds / 86400
    return {
        "OUTBOX_RETENTION_HOURS": f"{hours:.6f}",
        "KAFKA_TOPIC_RETENTION_HOURS": f"{hours:.6f}",
        "KAFKA_TOPIC_SEGMENT_HOURS": f"{hours:.6f}",
        "INBOX_RETENTION_MARGIN_HOURS": "0",
        "TRIGGER_IDEMPOTENCY_RETENTION_DAYS": f"{days:.8f}",
        "NOTIFIER_DELIVERED_RETENTION_DAYS": f"{days:.8f}",
        "RETENTION_INTERVAL_SECONDS": f"{purge_seconds:g}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10, help="how long the load runs")
    parser.add_argument("--rate", type=int, default=50, help="triggers a second")
    parser.add_argument("--clients", type=int, default=2, help="API clients sharing the load")
    parser.add_argument(
        "--retention-seconds", type=float, default=None,
        help="every retention, shortened (default: a tenth of the run, at least 10 s)",
    )  # fmt: skip
    parser.add_argument("--purge-seconds", type=float, default=10, help="the purges' interval")
    parser.add_argument("--sample-seconds", type=float, default=30, help="between two readings")
    options = parser.parse_args()
    if options.retention_seconds is None:
        options.retention_seconds = max(10.0, options.minutes * 6)
    settings = {
        "LOG_LEVEL": "WARNING",
        **shortened(options.retention_seconds, options.purge_seconds),
    }

    on_seeded_platform(
        "bench-soak-",
        settings,
        options.clients,
        options.rate * 2,
        f"platform up; {options.rate} triggers/s for {options.minutes:g} min; every "
        f"retention {options.retention_seconds:g} s (inbox: three of them), purged every "
        f"{options.purge_seconds:g} s",
        lambda platform, seeded: run(platform, seeded, options),
    )


if __name__ == "__main__":
    main()

"""`make bench-scale`: what a second replica of every service costs and gives on this
machine, and how long a replica leaving or joining holds up the work.

For one, then two replicas of every service (``points dev --scale``), back to back,
it starts the platform, seeds it as ``make bench-e2e`` does (several clients, one
earn rule, a callback receiver in its own process) and offers each rate of
``--rates`` for ``--seconds``, open loop, printing what was accepted and the
trigger → ledger applied and trigger → callback latencies.

Then, on two replicas, a steady ``--rebalance-rate`` for ``--rebalance-seconds``:
a third of the way in, the ledger's second replica is stopped cleanly (SIGTERM: it
leaves its consumer groups, and the stack starts it again a second later, when it
joins them again); two thirds of the way in, the notifier's second replica is. It
prints, second by second, the worst trigger → applied and trigger → callback of the
triggers sent in that second, so the pause each leave and join caused can be read
against the seconds before it.

Figures only; nothing is asserted (machines are noisy, and this one has two cores,
so a second replica of everything mostly costs: the figure is what a replica and a
rebalance cost).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import time
from collections import defaultdict

import asyncpg
import uvloop
from e2e import (
    SETTLE_SECONDS,
    LeanHttp,
    Round,
    Seeded,
    line,
    offer,
    read_arrivals,
    seed,
    serve_receiver,
    stored_times,
    wait_for_callbacks,
    warm_up,
)

from infra.dev.launcher import RunningPlatform, free_port, start_platform
from infra.settings import SERVICES

SCALES = (1, 2)
#: Poll the status of one trigger in this many: the first only (the bench-e2e times it).
NO_STATUS = 10**9


def scale_setting(replicas: int) -> str:
    return ",".join(f"{name}={replicas}" for name in SERVICES)


class Receiver:
    """The callback receiver, in a process of its own, and where it logs arrivals."""

    def __init__(self, platform: RunningPlatform) -> None:
        port = free_port()
        self.log = platform.state / "callbacks.log"
        self.url = f"http://127.0.0.1:{port}/points-callback"
        self._process = multiprocessing.get_context("spawn").Process(
            target=serve_receiver, args=(port, str(self.log)), daemon=True
        )
        self._process.start()

    def stop(self) -> None:
        self._process.kill()


async def measure_rates(
    platform: RunningPlatform, seeded: Seeded, options: argparse.Namespace
) -> None:
    receiver = Receiver(platform)
    gateway = LeanHttp(platform.urls["trigger"])
    dsn = platform.stack_setting("DATABASE_URL")
    try:
        await warm_up(gateway, seeded, receiver.url, receiver.log)
        for rate in options.rates:
            round_ = await offer(
                gateway, seeded, receiver.url, rate, options.seconds, NO_STATUS, 0.01
            )
            accepted = {item.request_id for item in round_.sent if item.status == 202}
            await wait_for_callbacks(receiver.log, accepted, SETTLE_SECONDS)
            stored = await stored_times(dsn, sorted(accepted))
            arrivals = read_arrivals(receiver.log)
            applied, called = latencies(round_, stored, arrivals)
            missing = len(accepted) - len(called)
            print(
                f"  {rate} req/s offered: {len(accepted) / options.seconds:,.0f} accepted/s"
                + (f", {missing:,} without a callback" if missing else "")
            )
            print(line("trigger -> ledger applied", list(applied.values())))
            print(line("trigger -> callback received", list(called.values())))
            await asyncio.sleep(2)
    finally:
        await gateway.close()
        receiver.stop()


def latencies(
    round_: Round, stored: dict[str, asyncpg.Record], arrivals: dict[str, float]
) -> tuple[dict[str, float], dict[str, float]]:
    """Milliseconds from each accepted trigger to its ledger transaction and its callback."""
    applied, called = {}, {}
    for item in round_.sent:
        row = stored.get(item.request_id)
        if row is not None and row["applied"] is not None:
            applied[item.request_id] = (float(row["applied"]) - item.sent) * 1000
        if item.request_id in arrivals:
            called[item.request_id] = (arrivals[item.request_id] - item.sent) * 1000
    return applied, called


async def measure_rebalances(
    platform: RunningPlatform, seeded: Seeded, options: argparse.Namespace
) -> None:
    receiver = Receiver(platform)
    gateway = LeanHttp(platform.urls["trigger"])
    dsn = platform.stack_setting("DATABASE_URL")
    seconds, rate = options.rebalance_seconds, options.rebalance_rate
    events: list[tuple[float, str]] = []

    async def stop_a_replica(child: str, after: float) -> None:
        await asyncio.sleep(after)
        events.append((time.time(), f"{child} stopped (it leaves; started again 1 s later)"))
        os.killpg(platform.pids[child], signal.SIGTERM)

    try:
        await warm_up(gateway, seeded, receiver.url, receiver.log)
        load = offer(gateway, seeded, receiver.url, rate, seconds, NO_STATUS, 0.01)
        round_, *_ = await asyncio.gather(
            load,
            stop_a_replica("ledger.2", seconds / 3),
            stop_a_replica("notifier.2", 2 * seconds / 3),
        )
        accepted = {item.request_id for item in round_.sent if item.status == 202}
        await wait_for_callbacks(receiver.log, accepted, SETTLE_SECONDS)
        stored = await stored_times(dsn, sorted(accepted))
        applied, called = latencies(round_, stored, read_arrivals(receiver.log))
    finally:
        await gateway.close()
        receiver.stop()
    start = round_.sent[0].sent
    worst_applied: dict[int, float] = defaultdict(float)
    worst_called: dict[int, float] = defaultdict(float)
    for item in round_.sent:
        second = int(item.sent - start)
        worst_applied[second] = max(worst_applied[second], applied.get(item.request_id, 0.0))
        worst_called[second] = max(worst_called[second], called.get(item.request_id, 0.0))
    print(f"  {rate} req/s for {seconds:g} s on two replicas of every service")
    for at, what in events:
        print(f"  at {at - start:5.1f} s: {what}")
    print("  second  worst trigger->applied  worst trigger->callback  (ms, triggers sent then)")
    for second in sorted(worst_applied):
        print(f"  {second:6d}  {worst_applied[second]:22.0f}  {worst_called[second]:23.0f}")
    lost = len(accepted) - len(called)
    if lost:
        print(f"  {lost:,} accepted triggers had no callback within {SETTLE_SECONDS:g} s")


def run_scale(replicas: int, options: argparse.Namespace) -> None:
    settings = {"LOG_LEVEL": "WARNING", "DEV_SCALE": scale_setting(replicas)}
    platform = start_platform(prefix="bench-scale-", **settings)
    try:
        platform.wait_ready()
        seeded = seed(platform, options.clients, per_second=max(options.rates) * 2)
        print(f"\n{replicas} replica(s) of every service", flush=True)
        uvloop.run(measure_rates(platform, seeded, options))
        if replicas > 1 and options.rebalance_seconds > 0:
            print("\nrebalances under load", flush=True)
            uvloop.run(measure_rebalances(platform, seeded, options))
    finally:
        platform.stop()
        platform.remove_state()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rates", type=lambda text: [int(rate) for rate in text.split(",")],
        default=[100, 400], help="offered loads, triggers a second (default 100,400)",
    )  # fmt: skip
    parser.add_argument("--seconds", type=float, default=20, help="how long each rate is offered")
    parser.add_argument("--clients", type=int, default=4, help="API clients sharing the load")
    parser.add_argument("--rebalance-rate", type=int, default=100)
    parser.add_argument(
        "--rebalance-seconds", type=float, default=30, help="0 leaves the rebalances out"
    )
    options = parser.parse_args()
    print(
        f"{options.seconds:g} s at each of {options.rates} req/s, "
        f"with {' then '.join(str(n) for n in SCALES)} replica(s) of every service"
    )
    for replicas in SCALES:
        run_scale(replicas, options)


if __name__ == "__main__":
    main()

"""`make bench-token-flood`: the rules service's JWKS latency while wrong secrets flood it.

Runs the whole platform (``points dev`` on free ports) and times ``GET`` of the
JWKS, which the gateway and the ledger fetch to verify every token: first on a
quiet service, then while 40 callers send token requests with wrong secrets
for random client ids as fast as they are answered. Each wrong secret costs an
argon2 check unless the sign-in throttle turns it away first.

Figures are printed; nothing here is asserted. Run it on the code before a
change and after, back to back, to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections import Counter

import httpx
from propagation import percentile

from infra.dev.launcher import start_platform
from infra.tokens import JWKS_PATH, TOKEN_PATH


async def jwks_latencies(rules: httpx.AsyncClient, count: int) -> list[float]:
    """``count`` JWKS fetches one after another, each in ms."""
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        answer = await rules.get(JWKS_PATH)
        answer.raise_for_status()
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


async def flood(rules: httpx.AsyncClient, stop: asyncio.Event, answers: Counter[int | str]) -> None:
    """Wrong secrets for random client ids until ``stop`` is set."""
    while not stop.is_set():
        try:
            answer = await rules.post(
                TOKEN_PATH,
                data={
                    "grant_type": "client_credentials",
                    "client_id": f"cli_{uuid.uuid4().hex}",
                    "client_secret": "not-the-secret",
                },
            )
        except httpx.HTTPError as error:
            answers[type(error).__name__] += 1
        else:
            answers[answer.status_code] += 1


async def measure(url: str, samples: int, callers: int) -> None:
    limits = httpx.Limits(max_connections=callers + 5)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as rules:
        await jwks_latencies(rules, 20)  # warm up
        quiet = await jwks_latencies(rules, samples)
        stop, answers = asyncio.Event(), Counter[int | str]()
        flooding = [asyncio.create_task(flood(rules, stop, answers)) for _ in range(callers)]
        await asyncio.sleep(1.0)  # let the flood build up
        started = time.perf_counter()
        loaded = await jwks_latencies(rules, samples)
        elapsed = time.perf_counter() - started
        stop.set()
        await asyncio.gather(*flooding)
    print(f"JWKS, {samples} fetches one after another (ms):")
    for name, values in (("quiet", quiet), (f"{callers} callers flooding", loaded)):
        print(
            f"  {name:>22}: p50 {percentile(values, 0.5):7.1f}  p99 {percentile(values, 0.99):7.1f}"
            f"  max {max(values):7.1f}"
        )
    rate = sum(answers.values()) / elapsed
    print(f"  token answers during the flood: {dict(answers)} (~{rate:.0f}/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200, help="JWKS fetches to time")
    parser.add_argument("--callers", type=int, default=40, help="parallel wrong-secret callers")
    options = parser.parse_args()

    platform = start_platform(prefix="bench-token-flood-", LOG_LEVEL="WARNING")
    try:
        platform.wait_ready()
        asyncio.run(measure(platform.urls["rules"], options.samples, options.callers))
    finally:
        platform.stop()
        platform.remove_state()


if __name__ == "__main__":
    main()

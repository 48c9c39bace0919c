"""`make bench-propagation`: how long a rule change takes to reach the trigger gateway.

Runs the whole platform (``points dev`` on free ports), seeds a client and an
active earn rule, then N times pauses or re-activates the rule through the
rules API and polls the gateway until it answers according to the new state.
The time counted runs from sending the change to the first gateway answer
that reflects it: the rules service's transaction and outbox row, the relay's
publish to ``rules.lifecycle.v1``, the gateway's consumer and its projection
upsert.

The probe is a trigger with ``amount: 0``. The gateway checks the rule before
the amount, so while the rule is active the probe is refused with
``INVALID_AMOUNT`` and while it is paused with ``RULE_INACTIVE``: the answer
tells which state the gateway sees, and nothing is recorded or sent to the
ledger however often it is polled.

Since the rules API answers a change only once the gateway's projection has it
(read your writes, issue 17), the first probe after the answer should already
see it: the bench counts the changes where it did, and times every probe (a
refusal) to show what refusals cost. ``--propagation-timeout 0`` runs the
platform without that wait, for a back-to-back comparison.

Figures are printed; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from dataclasses import dataclass, field

import httpx
from gateway import seed

from infra.dev.launcher import start_platform

#: What the gateway answers the probe with, by the rule state it sees.
EXPECTED_CODE = {"active": "INVALID_AMOUNT", "paused": "RULE_INACTIVE"}


async def gateway_sees(
    gateway: httpx.AsyncClient,
    token: str,
    rule_id: str,
    state: str,
    refusals: list[float],
    timeout: float = 30.0,
) -> int:
    """Poll until the gateway answers as for a rule in ``state``; the probes it took. Each
    probe's time (a refusal, in ms) is added to ``refusals``."""
    deadline = time.monotonic() + timeout
    probes = 0
    while time.monotonic() < deadline:
        probes += 1
        sent = time.perf_counter()
        answer = await gateway.post(
            "/v1/points/requests",
            headers={"Authorization": f"Bearer {token}"},
            json={
                "userId": "member-probe",
                "ruleId": rule_id,
                "amount": 0,
                "requestId": f"probe-{uuid.uuid4().hex}",
            },
        )
        refusals.append((time.perf_counter() - sent) * 1000)
        if answer.status_code == 400 and answer.json()["code"] == EXPECTED_CODE[state]:
            return probes
    raise TimeoutError(f"the gateway did not see the rule {state} within {timeout:g} s")


@dataclass
class Timings:
    propagation: list[float] = field(default_factory=list)  # change sent -> gateway agrees
    api: list[float] = field(default_factory=list)  # the rules API's answer
    refusals: list[float] = field(default_factory=list)  # every probe
    probes: int = 0
    seen_at_once: int = 0  # changes the first probe after the answer already saw


async def measure(
    urls: dict[str, str], console: dict[str, str], token: str, rule_id: str, rounds: int
) -> Timings:
    """Each change's propagation and rules-API times, and the probes'."""
    timings = Timings()
    async with (
        httpx.AsyncClient(base_url=urls["rules"], headers=console) as rules,
        httpx.AsyncClient(base_url=urls["trigger"]) as gateway,
    ):
        await gateway_sees(gateway, token, rule_id, "active", [])
        for round_number in range(rounds):
            action, state = ("pause", "paused") if round_number % 2 == 0 else ("activate", "active")
            await asyncio.sleep(0.2)  # let the previous change settle everywhere
            started = time.perf_counter()
            changed = await rules.post(f"/v1/rules/{rule_id}/{action}")
            answered = time.perf_counter()
            changed.raise_for_status()
            probes = await gateway_sees(gateway, token, rule_id, state, timings.refusals)
            seen = time.perf_counter()
            timings.probes += probes
            timings.seen_at_once += probes == 1
            timings.propagation.append((seen - started) * 1000)
            timings.api.append((answered - started) * 1000)
    return timings


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="rule changes to time")
    parser.add_argument(
        "--propagation-timeout",
        help="RULES_PROPAGATION_TIMEOUT_SECONDS for the platform (0: answer without waiting)",
    )
    options = parser.parse_args()

    settings = {"LOG_LEVEL": "WARNING"}
    if options.propagation_timeout is not None:
        settings["RULES_PROPAGATION_TIMEOUT_SECONDS"] = options.propagation_timeout
    platform = start_platform(prefix="bench-propagation-", **settings)
    try:
        platform.wait_ready()
        rule_id, token = seed(platform)
        login = httpx.post(
            f"{platform.urls['rules']}/v1/auth/login",
            json={"email": "bench@example.com", "password": "bench-password"},
        )
        console = {"Authorization": f"Bearer {login.json()['accessToken']}"}
        print(f"platform up; rule {rule_id}; timing {options.rounds} changes …", flush=True)
        timings = asyncio.run(measure(platform.urls, console, token, rule_id, options.rounds))
        propagation, api, refusals = timings.propagation, timings.api, timings.refusals

        print()
        print("rule-change propagation, rules API -> gateway (2-core machine, everything on it)")
        print(
            f"  {len(propagation)} changes (pause/activate alternately), "
            f"{timings.probes:,} gateway probes"
        )
        print(
            f"  change request to the gateway answering by it: "
            f"p50 {percentile(propagation, 0.5):.1f} ms,"
            f" p95 {percentile(propagation, 0.95):.1f} ms, max {max(propagation):.1f} ms"
            f" (mean {statistics.fmean(propagation):.1f} ms)"
        )
        print(
            f"  of which the rules API call itself: p50 {percentile(api, 0.5):.1f} ms, "
            f"p95 {percentile(api, 0.95):.1f} ms, max {max(api):.1f} ms"
        )
        print(
            f"  changes the first trigger after the answer was judged on: "
            f"{timings.seen_at_once}/{len(propagation)}"
        )
        print(
            f"  a refusal (the probe): p50 {percentile(refusals, 0.5):.2f} ms, "
            f"p99 {percentile(refusals, 0.99):.2f} ms"
        )
    finally:
        platform.stop()
        platform.remove_state()


if __name__ == "__main__":
    main()

"""One organisation's hanging callback receiver delays no other organisation's callbacks.

The whole platform runs as ``make run`` starts it, with the notifier's default
settings. One organisation's developer points ``callbackUrl`` at a tarpit on
127.0.0.1 (it accepts connections and never answers); another organisation's
developer triggers as usual. The second one's callbacks keep arriving within
the bound docs/operations.md gives, and the measured latencies are printed
(run with ``-s``) so they can be quoted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from infra.dev.launcher import RunningPlatform
from services.notifier.settings import NotifierSettings
from tests.e2e.conftest import CallbackReceiver
from tests.e2e.test_platform import business_with_an_active_rule
from tests.e2e.test_poison_messages import accepted, developer_headers
from tests.helpers import eventually, running_platform
from tests.integration.test_notifier import serving
from tests.integration.test_notifier_fairness import Tarpit, report

pytestmark = pytest.mark.e2e

#: Trigger to callback for the other organisation, beside the tarpit: the bound the
#: poison suite holds the platform to, well above what fair delivery needs.
CALLBACK_BOUND_SECONDS = 5.0
TARPIT_TRIGGERS = 30
#: What one organisation may hold of a notifier's callback workers by default.
DEFAULT_SHARE = NotifierSettings.model_fields["per_organisation_concurrency"].default
MEASURED_CALLBACKS = 10


@pytest.fixture(scope="module")
def platform() -> Iterator[RunningPlatform]:
    with running_platform("points-fair-") as running:
        yield running


async def callback_latency(
    http: httpx.AsyncClient,
    platform: RunningPlatform,
    developer: dict[str, str],
    trigger: dict[str, object],
    receiver: CallbackReceiver,
) -> float:
    """Seconds from sending ``trigger`` until its callback reached ``receiver``."""
    before = len(receiver.received)
    sent_at = time.monotonic()
    await eventually(
        lambda: accepted(http, platform, developer, trigger),
        what=f"the gateway to accept {trigger}",
    )

    async def called_back() -> bool:
        return len(receiver.received) > before

    await eventually(called_back, timeout=30, what=f"the callback of {trigger['requestId']}")
    return time.monotonic() - sent_at


class TestATarpitCallbackReceiver:
    async def test_leaves_another_organisations_callbacks_on_time(
        self, platform: RunningPlatform, receiver: CallbackReceiver
    ) -> None:
        async with serving(Tarpit()) as tarpit, httpx.AsyncClient(timeout=10) as http:
            hanging = await business_with_an_active_rule(
                platform, http, "Tarpit Traders", "Slow points"
            )
            other = await business_with_an_active_rule(
                platform, http, "Punctual Bakery", "Bread points"
            )
            hanging_developer = await developer_headers(platform, http, hanging)
            other_developer = await developer_headers(platform, http, other)

            def other_trigger(name: str) -> dict[str, object]:
                return {
                    "userId": f"member-{name}",
                    "ruleId": other.rule_id,
                    "amount": 5,
                    "requestId": name,
                    "callbackUrl": receiver.url,
                }

            quiet = [
                await callback_latency(
                    http, platform, other_developer, other_trigger(f"quiet-{n}"), receiver
                )
                for n in range(MEASURED_CALLBACKS)
            ]
            for n in range(TARPIT_TRIGGERS):
                trigger = {
                    "userId": f"member-{n}",
                    "ruleId": hanging.rule_id,
                    "amount": 5,
                    "requestId": f"tarpit-{n}",
                    "callbackUrl": tarpit.url("/points-callback"),
                }
                await eventually(
                    lambda t=trigger: accepted(http, platform, hanging_developer, t),
                    what="the gateway to accept a trigger",
                )

            async def tarpit_holds_attempts() -> bool:
                return tarpit.open_connections > 0

            await eventually(tarpit_holds_attempts, what="the tarpit to hold callback attempts")
            beside = [
                await callback_latency(
                    http, platform, other_developer, other_trigger(f"beside-{n}"), receiver
                )
                for n in range(MEASURED_CALLBACKS)
            ]
            held = tarpit.most_open

        print(report("quiet: trigger to callback", quiet))
        print(report(f"beside a tarpit holding {held} attempts: trigger to callback", beside))
        assert max(beside) <= CALLBACK_BOUND_SECONDS
        assert held <= DEFAULT_SHARE  # of 32 workers

"""What the gateway tells a client about its rate-limit bucket."""

from __future__ import annotations

from services.trigger.rate_limits import RateLimit


class TestRateLimit:
    def test_a_nearly_full_bucket_reports_whole_tokens_and_refills_within_a_second(self) -> None:
        limit = RateLimit(granted=True, tokens=99.6, per_second=50, burst=100)

        assert (limit.remaining, limit.reset_seconds) == (99, 1)

    def test_an_empty_bucket_says_when_to_retry_and_when_it_is_full(self) -> None:
        limit = RateLimit(granted=False, tokens=0.2, per_second=5, burst=5)

        assert limit.remaining == 0
        assert limit.retry_after_seconds == 1
        assert limit.reset_seconds == 1

    def test_a_slow_limit_asks_for_a_longer_wait(self) -> None:
        limit = RateLimit(granted=False, tokens=0.0, per_second=0.1, burst=2)

        assert limit.retry_after_seconds == 10
        assert limit.reset_seconds == 20

    def test_a_full_bucket_has_nothing_to_wait_for(self) -> None:
        limit = RateLimit(granted=True, tokens=5.0, per_second=5, burst=5)

        assert limit.reset_seconds == 0

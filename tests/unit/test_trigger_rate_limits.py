"""What the gateway tells a client about its rate-limit bucket."""

from __future__ import annotations

import http_sf
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.trigger.rate_limits import (
    LARGEST_SF_INTEGER as LARGEST,
)
from services.trigger.rate_limits import (
    RateLimit,
    rate_limit_headers,
    sf_integer,
    sf_item,
    sf_string,
)


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


def parsed(field: str) -> list[tuple[str, dict[str, int]]]:
    """A field parsed as the Structured Field List the draft defines it as."""
    parsed_list = http_sf.parse(field.encode("ascii"), tltype="list")
    assert isinstance(parsed_list, list)
    return [(member, parameters) for member, parameters in parsed_list]


class TestRateLimitFields:
    def test_the_policy_is_the_burst_over_the_time_an_empty_bucket_takes_to_fill(self) -> None:
        headers = rate_limit_headers(RateLimit(granted=True, tokens=99.6, per_second=50, burst=100))

        assert headers["RateLimit-Policy"] == '"burst";q=100;w=2'
        assert headers["RateLimit"] == '"burst";r=99;t=1'

    def test_a_window_of_part_of_a_second_is_rounded_up_so_the_rate_is_never_overstated(
        self,
    ) -> None:
        uneven = RateLimit(granted=True, tokens=5, per_second=3, burst=10)
        quick = RateLimit(granted=True, tokens=4, per_second=10, burst=5)

        assert uneven.window_seconds == 4  # 10 in 4 s: 2.5 a second, under the 3 it refills
        assert quick.window_seconds == 1  # the draft's windows are whole seconds

    def test_a_refused_trigger_has_none_left_and_its_reset_is_its_retry_after(self) -> None:
        limit = RateLimit(granted=False, tokens=0.25, per_second=0.5, burst=10)

        headers = rate_limit_headers(limit)

        assert headers["RateLimit"] == '"burst";r=0;t=2'
        assert limit.retry_after_seconds == 2

    def test_a_full_bucket_has_nothing_more_to_come(self) -> None:
        limit = RateLimit(granted=True, tokens=5.0, per_second=5, burst=5)

        assert rate_limit_headers(limit)["RateLimit"] == '"burst";r=5;t=0'

    def test_a_limit_too_slow_to_count_in_seconds_still_makes_valid_fields(self) -> None:
        limit = RateLimit(granted=False, tokens=0.0, per_second=1e-300, burst=2)

        headers = rate_limit_headers(limit)

        assert parsed(headers["RateLimit-Policy"]) == [("burst", {"q": 2, "w": LARGEST})]
        assert parsed(headers["RateLimit"]) == [("burst", {"r": 0, "t": LARGEST})]

    @given(
        tokens=st.floats(min_value=0, max_value=10_000),
        per_second=st.floats(min_value=0.001, max_value=100_000),
        burst=st.integers(min_value=1, max_value=10_000),
        granted=st.booleans(),
    )
    def test_any_bucket_gives_fields_a_structured_field_parser_reads_and_the_old_headers_agree(
        self, tokens: float, per_second: float, burst: int, granted: bool
    ) -> None:
        limit = RateLimit(granted, min(tokens, burst), per_second, burst)

        headers = rate_limit_headers(limit)
        [(policy, quota)] = parsed(headers["RateLimit-Policy"])
        [(name, state)] = parsed(headers["RateLimit"])

        assert type(policy) is str and policy == name == "burst"  # a String, not a Token
        assert set(quota) == {"q", "w"} and set(state) == {"r", "t"}
        assert all(type(value) is int for value in (*quota.values(), *state.values()))
        assert quota["w"] >= 1
        assert quota["q"] / quota["w"] <= per_second * (1 + 1e-9)
        assert int(headers["RateLimit-Limit"]) == quota["q"]
        assert int(headers["RateLimit-Remaining"]) == state["r"]
        assert int(headers["RateLimit-Reset"]) >= state["t"]


class TestStructuredFieldSerialisation:
    def test_a_string_escapes_quotes_and_backslashes(self) -> None:
        item = sf_item('say "hi" \\ bye', q=1)

        assert item == '"say \\"hi\\" \\\\ bye";q=1'
        assert parsed(item) == [('say "hi" \\ bye', {"q": 1})]

    @pytest.mark.parametrize("value", ["café", "line\nbreak", "tab\there"])
    def test_a_string_refuses_what_it_cannot_hold(self, value: str) -> None:
        with pytest.raises(ValueError):
            sf_string(value)

    @pytest.mark.parametrize("value", [10**15, -(10**15), True])
    def test_an_integer_refuses_what_it_cannot_hold(self, value: int) -> None:
        with pytest.raises(ValueError):
            sf_integer(value)

    @pytest.mark.parametrize("key", ["Q", "1q", "q w", ""])
    def test_a_parameter_key_refuses_what_the_grammar_does_not_allow(self, key: str) -> None:
        with pytest.raises(ValueError):
            sf_item("burst", **{key: 1})

"""What `points dev` prints on a first and a later start, and how `points outbox republish`
reads its ``--since``."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

import pytest

from points_cli.dev import DEMO_PASSWORD, banner
from points_cli.main import since_time

PORTS = {"rules": 8001, "trigger": 8002, "ledger": 8003, "notifier": 8004}
SEEDED = {
    "org_id": "org_1",
    "clientId": "cli_1",
    "clientSecret": "first-secret",
    "callbackSigningSecret": "first-signing-secret",
}


class TestTheBanner:
    def test_the_first_start_shows_the_demo_clients_secrets_once(self) -> None:
        text = banner(PORTS, SEEDED, 1.0)
        assert "first-secret" in text and "first-signing-secret" in text

    def test_a_later_start_shows_the_demo_login_but_no_secret(self) -> None:
        text = banner(PORTS, None, 1.0)
        assert DEMO_PASSWORD in text
        assert "secret" not in text.replace("secrets were shown", "").replace("rotate-secret", "")

    def test_every_start_says_how_to_start_fresh(self) -> None:
        assert "ARGS=--reset" in banner(PORTS, None, 1.0, seeds=False)


class TestSinceTime:
    def test_a_time_ago_counts_back_from_now(self) -> None:
        moment = since_time("90m")
        expected = datetime.now(UTC) - timedelta(minutes=90)
        assert abs(moment - expected) < timedelta(seconds=5)

    def test_an_iso_time_without_a_zone_is_utc(self) -> None:
        assert since_time("2026-12-06T22:00:00") == datetime(2026, 12, 6, 22, tzinfo=UTC)

    def test_an_iso_time_keeps_its_zone(self) -> None:
        moment = since_time("2026-12-06T23:00:00+01:00")
        assert moment == datetime(2026, 12, 6, 22, tzinfo=UTC)

    def test_anything_else_is_refused_with_the_forms_it_takes(self) -> None:
        with pytest.raises(argparse.ArgumentTypeError, match="90m, 6h or 1d"):
            since_time("yesterday")

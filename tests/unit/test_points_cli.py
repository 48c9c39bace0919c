"""What `points dev` prints on a first and a later start, how it reads ``--scale``, and how
`points outbox republish` reads its ``--since``."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

import pytest

from infra.errors import StartupError
from points_cli.dev import DEMO_PASSWORD, banner, replica_names, replicas
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


class TestScale:
    def test_names_services_replicas_and_leaves_the_rest_at_one(self) -> None:
        counts = replicas(" trigger=2, ledger=3 ")
        assert counts == {"rules": 1, "trigger": 2, "ledger": 3, "notifier": 1}

    def test_nothing_asked_is_one_of_each(self) -> None:
        assert set(replicas("").values()) == {1} and set(replicas(None).values()) == {1}

    @pytest.mark.parametrize(
        ("scale", "says"),
        [
            ("gateway=2", "unknown service 'gateway'"),
            ("trigger", "'trigger' needs a number of replicas"),
            ("trigger=0", "from 1 to 8"),
            ("trigger=9", "from 1 to 8"),
            ("trigger=two", "needs a number"),
            ("trigger=-1", "needs a number"),
        ],
    )
    def test_a_wrong_scale_is_refused_with_what_is_wrong(self, scale: str, says: str) -> None:
        with pytest.raises(StartupError, match=says):
            replicas(scale)

    def test_a_service_with_replicas_names_each_and_one_alone_keeps_its_name(self) -> None:
        assert replica_names("ledger", 2) == ["ledger.1", "ledger.2"]
        assert replica_names("ledger", 1) == ["ledger"]

    def test_the_banner_lists_the_services_scaled(self) -> None:
        text = banner(PORTS, None, 1.0, replicas={"rules": 1, "trigger": 2, "ledger": 1})
        assert "2 trigger" in text and "rules" not in text.split("Replicas")[1].splitlines()[0]


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

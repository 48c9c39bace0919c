"""One variable points every service somewhere; a prefixed one overrides it for one service."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.ledger.settings import LedgerSettings
from services.rules.settings import RulesSettings
from services.trigger.settings import TriggerSettings


class TestSharedAndPrefixedSettings:
    def test_an_unprefixed_database_url_reaches_every_service(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("DATABASE_URL", "postgresql://db.example/points")
        assert TriggerSettings().database_url == "postgresql://db.example/points"
        assert LedgerSettings().database_url == "postgresql://db.example/points"

    def test_a_prefixed_variable_wins_for_its_own_service_only(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka:9092")
        monkeypatch.setenv("TRIGGER_KAFKA_BOOTSTRAP_SERVERS", "gateway-kafka:9092")
        assert TriggerSettings().kafka_bootstrap_servers == "gateway-kafka:9092"
        assert LedgerSettings().kafka_bootstrap_servers == "kafka:9092"

    def test_generic_names_like_port_and_host_are_not_shared(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("PORT", "1234")
        monkeypatch.setenv("HOST", "10.1.2.3")
        settings = TriggerSettings()
        assert (settings.port, settings.host) == (8002, "127.0.0.1")

    def test_production_refuses_to_start_without_a_callback_signing_key(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("CALLBACK_SIGNING_KEY", raising=False)
        monkeypatch.delenv("POINTS_MODE", raising=False)
        with pytest.raises(ValidationError, match="CALLBACK_SIGNING_KEY"):
            RulesSettings()
        assert RulesSettings(mode="development").callback_signing_key

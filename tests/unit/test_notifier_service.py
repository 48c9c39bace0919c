"""The notifier's pure logic: callback bodies, retry delays, the SSRF guard, settings."""

from __future__ import annotations

import ipaddress
import json
import secrets
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from contracts import PointsResult
from infra.signing import DEVELOPMENT_SIGNING_KEY
from services.notifier.attempts import retry_delay
from services.notifier.callbacks import RefusedTarget, vet_callback_url
from services.notifier.fairness import SlotCounter, organisation_limit
from services.notifier.metrics import DeliveryMetrics
from services.notifier.queueing import callback_body, callback_host
from services.notifier.resolver import BoundedResolver
from services.notifier.settings import NotifierSettings


def points_result(**changes: object) -> PointsResult:
    values: dict[str, object] = {
        "request_id": "req-1",
        "transaction_id": uuid.UUID("00000000-0000-4000-8000-000000000001"),
        "client_id": "client-1",
        "rule_id": "rule-1",
        "user_id": "user-1",
        "type": "redeem",
        "amount": 20,
        "status": "applied",
        "balance": 80,
        "callback_url": "https://partner.example/hooks",
        "processed_at": datetime(2026, 11, 3, 13, 0, tzinfo=timezone(timedelta(hours=1))),
        **changes,
    }
    return PointsResult.model_validate(values)


class TestCallbackBody:
    def test_is_compact_camel_case_json_with_a_utc_timestamp(self) -> None:
        body = callback_body(points_result())

        assert body == (
            b'{"requestId":"req-1","transactionId":"00000000-0000-4000-8000-000000000001",'
            b'"ruleId":"rule-1","userId":"user-1","type":"redeem","amount":20,'
            b'"status":"succeeded","reason":null,"balance":80,"processedAt":"2026-11-03T12:00:00Z"}'
        )

    def test_reports_a_rejection_as_failed_with_its_reason(self) -> None:
        result = points_result(status="rejected", reason="INSUFFICIENT_BALANCE", balance=None)

        body = json.loads(callback_body(result))

        assert (body["status"], body["reason"]) == ("failed", "INSUFFICIENT_BALANCE")

    def test_keeps_the_instant_the_ledger_processed_it(self) -> None:
        body = json.loads(callback_body(points_result()))

        assert datetime.fromisoformat(body["processedAt"]) == datetime(2026, 11, 3, 12, tzinfo=UTC)


class TestRetryDelay:
    def test_follows_the_schedule_within_ten_percent(self) -> None:
        schedule = (10.0, 60.0)

        delays = [retry_delay(schedule, 2) for _ in range(200)]

        assert all(delay is not None and 54.0 <= delay <= 66.0 for delay in delays)
        assert len(set(delays)) > 1

    def test_parks_once_the_schedule_is_used_up(self) -> None:
        assert retry_delay((10.0, 60.0), 3) is None
        assert retry_delay((), 1) is None


async def system_resolve(
    host: str, port: int
) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    resolver = BoundedResolver(timeout=5.0, threads=1)
    try:
        return await resolver.resolve(host, port, on_orphaned=lambda: lambda: None)
    finally:
        resolver.close()


class TestVetCallbackUrl:
    async def test_pins_a_public_https_target_and_keeps_its_name_for_host_and_tls(self) -> None:
        target = await vet_callback_url(
            "https://93.184.216.34:8443/cb?x=1", development=False, resolve=system_resolve
        )

        assert str(target.url) == "https://93.184.216.34:8443/cb?x=1"
        assert target.host_header == "93.184.216.34:8443"
        assert target.extensions == {"sni_hostname": "93.184.216.34"}

    @pytest.mark.parametrize(
        "url",
        [
            "file:///etc/passwd",
            "gopher://93.184.216.34/",
            "http:///no-host",
            "http://localhost:8080/",
            "http://[::1]/",
            "http://0.0.0.0/",
            "http://[::ffff:127.0.0.1]/",
        ],
    )
    async def test_refuses_what_production_must_never_call(self, url: str) -> None:
        with pytest.raises(RefusedTarget):
            await vet_callback_url(url, development=False, resolve=system_resolve)

    def test_callback_host_is_lower_cased_and_empty_when_missing(self) -> None:
        assert callback_host("https://Partner.Example:8443/x") == "partner.example"
        assert callback_host("not a url") == ""


class TestSlotCounter:
    def test_only_a_key_at_its_limit_wakes_the_claimer_when_it_frees_a_slot(self) -> None:
        freed: list[bool] = []
        slots: SlotCounter[str] = SlotCounter(2, lambda: freed.append(True))
        for org_id in ("org-tarpit", "org-tarpit", "org-other"):
            slots.take(org_id)

        slots.give_back("org-other")  # it was not full: nobody needs waking
        woken_by_other = list(freed)
        slots.give_back("org-tarpit")

        assert woken_by_other == []
        assert slots.in_flight() == {"org-tarpit": 1}
        assert freed == [True]

    def test_an_organisation_never_gets_every_worker_while_there_are_two(self) -> None:
        assert organisation_limit(per_organisation=2, workers=8) == 2
        assert organisation_limit(per_organisation=8, workers=8) == 7
        assert organisation_limit(per_organisation=2, workers=2) == 1
        assert organisation_limit(per_organisation=2, workers=1) == 1


class TestNotifierSettings:
    @pytest.fixture(autouse=True)
    def invitation_sealing_key(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("INVITATION_SEALING_KEY", secrets.token_urlsafe(32))

    def test_development_uses_the_development_signing_key(self) -> None:
        settings = NotifierSettings(mode="development")

        assert settings.callback_signing_key == DEVELOPMENT_SIGNING_KEY

    def test_production_refuses_a_missing_key(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("CALLBACK_SIGNING_KEY", raising=False)
        monkeypatch.delenv("NOTIFIER_CALLBACK_SIGNING_KEY", raising=False)

        with pytest.raises(ValidationError, match="CALLBACK_SIGNING_KEY"):
            NotifierSettings(mode="production")

    @pytest.mark.parametrize("key", [DEVELOPMENT_SIGNING_KEY, "changeme", "short-key"])
    def test_production_refuses_a_placeholder_key(self, key: str) -> None:
        with pytest.raises(ValidationError, match=r"placeholder|too short"):
            NotifierSettings(mode="production", callback_signing_key=key)

    def test_reads_the_unprefixed_platform_key(self, monkeypatch: pytest.MonkeyPatch) -> None:
        key = secrets.token_urlsafe(32)
        monkeypatch.setenv("CALLBACK_SIGNING_KEY", key)
        monkeypatch.setenv("NOTIFIER_RETRY_SCHEDULE_SECONDS", "[1, 5]")

        settings = NotifierSettings(mode="production")

        assert settings.callback_signing_key == key
        assert settings.retry_schedule_seconds == (1.0, 5.0)


class TestDeliveryMetrics:
    def test_two_notifiers_in_one_process_count_their_attempts_apart(self) -> None:
        first, second = DeliveryMetrics(), DeliveryMetrics()
        first.count_attempt("callback", "delivered")
        first.count_attempt("callback", "delivered")
        second.count_attempt("email", "parked")

        def attempts(metrics: DeliveryMetrics, kind: str, outcome: str) -> float | None:
            return metrics.registry.get_sample_value(
                "points_notifier_delivery_attempts_total", {"kind": kind, "outcome": outcome}
            )

        assert attempts(first, "callback", "delivered") == 2
        assert attempts(second, "callback", "delivered") == 0
        assert attempts(second, "email", "parked") == 1

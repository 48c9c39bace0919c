"""Settings of the trigger gateway (env prefix ``TRIGGER_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from infra.request_signing import DEFAULT_WINDOW_SECONDS
from infra.settings import ServiceSettings


class TriggerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="TRIGGER_")
    service_name: ClassVar[str] = "trigger"

    port: int = 8002
    db_pool_max: int = 20
    token_issuer_url: str = Field(
        default="http://127.0.0.1:8001",
        description="Base URL of the rules service, whose realm issues the tokens "
        "(TOKEN_ISSUER_URL).",
    )
    idempotency_retention_days: float = Field(
        default=7,
        gt=0,
        description="How long a requestId is remembered (settled requests are then purged; "
        "pending ones stay). At least 7 outside development.",
    )
    pending_redrive_after_seconds: float = Field(
        default=300.0,
        gt=0,
        description="A request still pending this long after it was accepted is published "
        "again (its event or its result was lost), then again at doubling intervals up to "
        "64 times this.",
    )
    pending_report_after_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="A request still pending this long is reported: a `requests.overdue` "
        "error in the log and the `points_trigger_requests_overdue` gauge.",
    )
    reconcile_interval_seconds: float = Field(
        default=60.0, gt=0, description="How often pending requests are looked at."
    )
    status_catch_up_seconds: float = Field(
        default=1.0,
        ge=0,
        description="Before answering that a request is pending, the gateway waits up to "
        "this long for its results consumer to catch up with what the ledger has published "
        "(so the status never contradicts a callback already delivered); 0 answers at once.",
    )
    rate_limit_per_second: float = Field(
        default=50.0,
        gt=0,
        description="Triggers per second a client may send, unless an operator gave it its "
        "own (`points client set-rate-limit`); shared by all gateway replicas.",
    )
    rate_limit_burst: int = Field(
        default=100, ge=1, description="Triggers a client may send at once after a quiet spell."
    )
    request_signature_window_seconds: int = Field(
        default=DEFAULT_WINDOW_SECONDS,
        ge=1,
        description="How far a signed request's X-Points-Timestamp may be from the gateway's "
        "clock, either way, for clients that sign their requests.",
    )
    db_batch_max: int = Field(
        default=200,
        ge=1,
        description="Most triggers admitted, or recorded, in one statement and one commit.",
    )
    db_batches_in_flight: int = Field(
        default=2,
        ge=1,
        description="Batches of triggers that may run at once, each on its own connection; "
        "triggers arriving while all are busy go together in the next one.",
    )
    activity_flush_seconds: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="How often each gateway adds the triggers it accepted and refused, counted "
        "in memory, to the activity table; a gateway that crashes loses at most this long of "
        "counts (one stopping cleanly writes them).",
    )
    callback_dns_timeout_seconds: float = Field(
        default=2.0, gt=0, description="How long checking a callbackUrl's host may take."
    )

    @model_validator(mode="after")
    def _requests_remembered_a_week(self) -> TriggerSettings:
        # A partner retries a requestId for days; only development (the soak bench)
        # forgets sooner.
        if self.mode != "development" and self.idempotency_retention_days < 7:
            raise ValueError("TRIGGER_IDEMPOTENCY_RETENTION_DAYS must be at least 7")
        return self

    def rules_service_url(self) -> str | None:
        return self.token_issuer_url

"""Settings of the ledger service (env prefix ``LEDGER_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from infra.settings import ServiceSettings


class LedgerSettings(ServiceSettings):
    """What the ledger reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="LEDGER_", extra="ignore", env_ignore_empty=True)

    service_name: ClassVar[str] = "ledger"

    port: int = Field(default=8003, description="Port the ledger's HTTP API binds.")
    token_issuer_url: str = Field(
        default="http://127.0.0.1:8001",
        description="Base URL of the token issuer (the rules service) whose JWKS signs "
        "the tokens the read API accepts (also TOKEN_ISSUER_URL).",
    )
    batch_max_records: int = Field(
        default=4_000,
        ge=1,
        description="Most points requests in one consumed batch. Under steady traffic "
        "batches are what has arrived; this bounds catching up, where larger batches apply "
        "faster (make bench-ledger measures it).",
    )
    batch_parts: int = Field(
        default=4,
        ge=1,
        le=8,
        description="A consumed batch is cut into up to this many parts with no member in common, "
        "applied at the same time, each in its own PostgreSQL transaction, so PostgreSQL "
        "works on one part while this process prepares another; the batch's offsets are "
        "committed once every part has committed. A part has at least 500 requests, so "
        "the small batches of steady traffic stay whole.",
    )
    consumer_session_timeout_ms: int | None = Field(
        default=None,
        ge=1_000,
        description="KAFKA_SESSION_TIMEOUT_MS for the consumer of points requests alone; "
        "unset, that setting (kept for installations that set it before it was shared).",
    )
    consumer_heartbeat_interval_ms: int | None = Field(
        default=None,
        ge=100,
        description="KAFKA_HEARTBEAT_INTERVAL_MS for the consumer of points requests alone; "
        "unset, that setting.",
    )
    expiry_interval_seconds: float = Field(
        default=60,
        gt=0,
        le=86_400,
        description="How often the ledger expires what is left of lots whose expiry passed "
        "(a pass also runs at start). A member cannot spend due points meanwhile, and the "
        "balance's `expiring` lists them until the pass takes them.",
    )
    expiry_chunk: int = Field(
        default=1_000,
        ge=1,
        le=1_000,
        description="Most lots one expiry transaction takes: it locks their members, as a "
        "batch of requests does, for as long as it runs.",
    )

    def rules_service_url(self) -> str | None:
        return self.token_issuer_url

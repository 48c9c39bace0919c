"""Settings of the trigger gateway (env prefix ``TRIGGER_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

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
    idempotency_retention_days: int = Field(
        default=7, ge=7, description="How long a requestId is remembered."
    )

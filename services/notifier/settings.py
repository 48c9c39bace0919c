"""Settings of the notifier service (env prefix ``NOTIFIER_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import SettingsConfigDict

from infra.settings import ServiceSettings
from infra.signing import DEVELOPMENT_SIGNING_KEY

#: Values that show a key was copied from an example rather than generated.
PLACEHOLDER_KEYS = frozenset({"changeme", "change-me", "placeholder", "secret", "example"})
MIN_SIGNING_KEY_LENGTH = 32


class NotifierSettings(ServiceSettings):
    """What the notifier reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="NOTIFIER_", validate_by_name=True)

    service_name: ClassVar[str] = "notifier"

    port: int = Field(default=8004, description="Port the notifier's HTTP API binds.")
    callback_signing_key: str = Field(
        default="",
        validation_alias=AliasChoices("NOTIFIER_CALLBACK_SIGNING_KEY", "CALLBACK_SIGNING_KEY"),
        description="Platform key from which each client's callback-signing secret is "
        "derived; the rules service needs the same value (also CALLBACK_SIGNING_KEY).",
    )
    retry_schedule_seconds: tuple[float, ...] = Field(
        default=(10, 60, 300, 1800, 7200, 21600, 43200, 86400),
        description="Delay before each retry of a failed callback (jittered by ±10%); "
        "after the last one the delivery is parked.",
    )
    connect_timeout: float = Field(
        default=5.0, gt=0, description="Seconds to open a connection to a callback URL."
    )
    total_timeout: float = Field(
        default=15.0, gt=0, description="Seconds one callback attempt may take in all."
    )
    workers: int = Field(default=4, ge=1, description="Concurrent callback deliveries.")
    per_host_concurrency: int = Field(
        default=4, ge=1, description="Concurrent deliveries to one receiving host."
    )
    poll_interval_seconds: float = Field(
        default=1.0,
        gt=0,
        description="Longest a delivery worker sleeps before looking for due callbacks.",
    )
    operator_token: str = Field(
        default="",
        description="Bearer token for the operator endpoints (`/v1/deliveries`); without "
        "one they answer only in development mode.",
    )

    @model_validator(mode="after")
    def _signing_key_outside_development(self) -> NotifierSettings:
        if not self.callback_signing_key:
            if not self.is_development:
                raise ValueError(
                    "CALLBACK_SIGNING_KEY (or NOTIFIER_CALLBACK_SIGNING_KEY) must be set "
                    "outside development mode"
                )
            self.callback_signing_key = DEVELOPMENT_SIGNING_KEY
        elif not self.is_development and _is_placeholder(self.callback_signing_key):
            raise ValueError(
                "CALLBACK_SIGNING_KEY is a placeholder; set a random key of at least "
                f"{MIN_SIGNING_KEY_LENGTH} characters"
            )
        return self


def _is_placeholder(key: str) -> bool:
    return (
        key == DEVELOPMENT_SIGNING_KEY
        or key.strip().lower() in PLACEHOLDER_KEYS
        or len(key) < MIN_SIGNING_KEY_LENGTH
    )

"""Settings of the notifier service (env prefix ``NOTIFIER_``)."""

from __future__ import annotations

from typing import ClassVar
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from infra.sealing import DEVELOPMENT_SEALING_KEY
from infra.settings import ServiceSettings, refuse_weak_secrets, reveal
from infra.signing import DEVELOPMENT_SIGNING_KEY

#: Where ``points dev`` runs its SMTP sink; the default SMTP server in development.
DEVELOPMENT_SMTP_URL = "smtp://127.0.0.1:1025"


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
    invitation_sealing_key: str = Field(
        default="",
        validation_alias=AliasChoices("NOTIFIER_INVITATION_SEALING_KEY", "INVITATION_SEALING_KEY"),
        description="Platform key that opens invitation links' tokens, only to compose the "
        "invitation e-mail; the rules service needs the same value (also "
        "INVITATION_SEALING_KEY).",
    )
    retry_schedule_seconds: tuple[float, ...] = Field(
        default=(10, 60, 300, 1800, 7200, 21600, 43200, 86400),
        description="Delay before each retry of a failed callback or e-mail (jittered by ±10%); "
        "after the last one the delivery is parked.",
    )
    connect_timeout: float = Field(
        default=5.0, gt=0, description="Seconds to open a connection to a callback URL."
    )
    total_timeout: float = Field(
        default=15.0,
        gt=0,
        description="Seconds one callback attempt may take in all, once its host is "
        "resolved (connecting included).",
    )
    lease_grace_seconds: float = Field(
        default=60.0,
        gt=0,
        description="How long a delivery's lease outlives its longest possible attempt "
        "(`dns_timeout_seconds` plus `total_timeout` for a callback, `smtp_timeout` for an "
        "e-mail); a delivery whose notifier died mid-send is "
        "retried once the lease has run out.",
    )
    dns_timeout_seconds: float = Field(
        default=3.0,
        gt=0,
        description="Seconds to resolve a callback URL's host; a name that has no answer by "
        "then fails the attempt, which is retried on the schedule.",
    )
    workers: int = Field(
        default=32,
        ge=1,
        description="Concurrent callback deliveries (share e-mails have their own "
        "`email_workers`, so neither can starve the other).",
    )
    email_workers: int = Field(default=2, ge=1, description="Concurrent share e-mail deliveries.")
    per_organisation_concurrency: int = Field(
        default=8,
        ge=1,
        description="Most callbacks, and separately most e-mails, one organisation may have "
        "in flight in this process; capped at one less than `workers` (or `email_workers`), "
        "so another organisation always finds a free worker.",
    )
    per_host_concurrency: int = Field(
        default=8,
        ge=1,
        description="Concurrent callbacks from one organisation to one receiving host. "
        "A host's throughput is this over its answer time: 8 in flight to a receiver that "
        "answers in 50 ms carry 160 callbacks a second.",
    )
    poll_interval_seconds: float = Field(
        default=1.0,
        gt=0,
        description="Longest a delivery worker sleeps before looking for due callbacks.",
    )
    operator_token: str = Field(
        default="",
        description="Bearer token for the operator endpoints (`/v1/deliveries`); without "
        "one they answer operators only in development mode.",
    )
    token_issuer_url: str = Field(
        default="http://127.0.0.1:8001",
        description="Base URL of the token issuer (the rules service) whose JWKS signs the "
        "business users' tokens `/v1/deliveries` also accepts, for their organisation's "
        "callbacks (also TOKEN_ISSUER_URL).",
    )

    smtp_url: str | None = Field(
        default=None,
        description="SMTP server for share e-mails: `smtp://host:port`, or `smtps://host:port` "
        "for implicit TLS (also SMTP_URL). Defaults to the local sink in development; "
        "without it elsewhere, e-mails wait (and are retried) until it is set.",
    )
    smtp_starttls: bool = Field(
        default=False, description="Upgrade an `smtp://` connection with STARTTLS."
    )
    smtp_username: str | None = Field(default=None, description="SMTP login, if any.")
    smtp_password: SecretStr | None = Field(default=None, description="SMTP password, if any.")
    smtp_connect_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds to resolve, connect to and be greeted by the SMTP server.",
    )
    smtp_timeout: float = Field(
        default=30.0, gt=0, description="Seconds one SMTP conversation may take in all."
    )
    mail_from: str = Field(
        default="Points platform <no-reply@points.localhost>",
        description="From address of share e-mails.",
    )
    mail_reply_to: str | None = Field(
        default=None, description="Reply-To address of share e-mails, if any."
    )
    delivered_retention_days: float = Field(
        default=30.0,
        gt=0,
        description="How long delivered callbacks and sent share e-mails stay in the delivery "
        "log businesses and operators read; then they are purged. Pending, parked and failed "
        "deliveries are kept until delivered or replayed. Keep it longer than the inbox "
        "retention: a delivery row also stops a redelivered result from calling back twice.",
    )

    def rules_service_url(self) -> str | None:
        return self.token_issuer_url

    @field_validator("smtp_url")
    @classmethod
    def _smtp_url_names_a_server(cls, url: str | None) -> str | None:
        if url is not None:
            parts = urlsplit(url)
            if parts.scheme not in {"smtp", "smtps"} or not parts.hostname:
                raise ValueError("SMTP_URL must look like smtp://host:port or smtps://host:port")
        return url

    @model_validator(mode="after")
    def _local_smtp_sink_in_development(self) -> NotifierSettings:
        if self.smtp_url is None and self.is_development:
            self.smtp_url = DEVELOPMENT_SMTP_URL
        return self

    @model_validator(mode="after")
    def _real_secrets_outside_development(self) -> NotifierSettings:
        if self.is_development:
            self.callback_signing_key = self.callback_signing_key or DEVELOPMENT_SIGNING_KEY
            self.invitation_sealing_key = self.invitation_sealing_key or DEVELOPMENT_SEALING_KEY
            return self
        if not self.callback_signing_key:
            raise ValueError(
                "CALLBACK_SIGNING_KEY (or NOTIFIER_CALLBACK_SIGNING_KEY) must be set "
                "outside development mode"
            )
        if not self.invitation_sealing_key:
            raise ValueError(
                "INVITATION_SEALING_KEY (or NOTIFIER_INVITATION_SEALING_KEY) must be set "
                "outside development mode"
            )
        keys = {
            "CALLBACK_SIGNING_KEY": self.callback_signing_key,
            "INVITATION_SEALING_KEY": self.invitation_sealing_key,
            # Without one the operator endpoints stay shut outside development.
            "NOTIFIER_OPERATOR_TOKEN": self.operator_token or None,
        }
        refuse_weak_secrets(keys, generated=True)
        refuse_weak_secrets({"NOTIFIER_SMTP_PASSWORD": reveal(self.smtp_password)}, generated=False)
        return self

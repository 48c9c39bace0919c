"""Settings of the rules service (env prefix ``RULES_``)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlencode

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import SettingsConfigDict

from infra.callback_urls import check_callback_url
from infra.sealing import DEVELOPMENT_SEALING_KEY as DEV_INVITATION_SEALING_KEY
from infra.settings import ServiceSettings, refuse_weak_secrets, var_dir
from infra.signing import DEVELOPMENT_SIGNING_KEY as DEV_CALLBACK_SIGNING_KEY
from infra.tokens import TOKEN_PATH
from services.rules.key_vault import DEVELOPMENT_KEY_ENCRYPTION_KEY as DEV_KEY_ENCRYPTION_KEY

#: Where this service serves the API Integration Guide.
INTEGRATION_GUIDE_PATH = "/docs/integration-guide"


class RulesSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="RULES_")
    service_name: ClassVar[str] = "rules"

    port: int = 8001
    public_url: str = Field(
        default="http://127.0.0.1:8001",
        description="Base URL developers and services reach this service at; "
        "the token issuer is `<public_url>/realms/partner`.",
    )
    staging_trigger_url: str = Field(
        default="http://127.0.0.1:8002", description="Trigger gateway URL shared for staging rules."
    )
    production_trigger_url: str = Field(
        default="http://127.0.0.1:8002",
        description="Trigger gateway URL shared for production rules.",
    )
    integration_guide_url: str | None = Field(
        default=None,
        description="Address of the API Integration Guide shared with developers; the rule's "
        "environment is added as `?environment=…`. Unset, it is this service's own page, "
        "`<public_url>/docs/integration-guide`.",
    )
    ledger_url: str = Field(
        default="http://127.0.0.1:8003",
        description="Where the console's same-origin proxy reads members' balances and rules' "
        "transactions from the ledger.",
    )
    notifier_url: str = Field(
        default="http://127.0.0.1:8004",
        description="Where the console's same-origin proxy reads the organisation's callback "
        "log from the notifier, and replays parked callbacks.",
    )
    ledger_guide_url: str | None = Field(
        default=None,
        description="The ledger's URL as developers reach it, shown in the integration guide "
        "for balance reads; unset, `RULES_LEDGER_URL`.",
    )
    propagation_timeout_seconds: float = Field(
        default=2.0,
        ge=0,
        description="A change (a rule activated, a client revoked, ...) is answered once the "
        "trigger gateway (and, for a member blocked or unblocked, the ledger) has it, so a "
        "trigger sent next is judged on it; the answer waits at "
        "most this long (then a `rules.change_not_yet_at_gateway` warning is logged). 0 "
        "answers at once.",
    )
    console_ledger_token_lifetime_seconds: int = Field(
        default=60,
        ge=5,
        le=3600,
        description="Lifetime of the token the console mints for the signed-in user's "
        "ledger reads and callback-log calls to the notifier.",
    )
    dev_mail_dir: Path | None = Field(
        default=None,
        description="Where the embedded SMTP sink keeps received mail, listed by the console in "
        "development mode; unset, `<POINTS_VAR_DIR>/mail`.",
    )
    client_token_lifetime_seconds: int = Field(
        default=300, description="Lifetime of an API client's access token."
    )
    user_token_lifetime_seconds: int = Field(
        default=3600, description="Lifetime of a business user's access token and console session."
    )
    secret_rotation_overlap_seconds: int = Field(
        default=86400, description="How long a rotated client secret keeps working."
    )
    login_max_attempts_per_email: int = Field(
        default=5,
        ge=1,
        description="Logins one address may try at one e-mail address before each further "
        "one must wait twice as long as the one before (1 s, 2 s, 4 s, ...); the same e-mail "
        "address from any other address is not slowed down.",
    )
    login_max_attempts_per_ip: int = Field(
        default=20,
        ge=1,
        description="Logins one address may try, at any e-mail addresses, before it is slowed "
        "down the same way; higher than per e-mail because offices share an address.",
    )
    login_throttle_window_seconds: int = Field(
        default=900,
        ge=1,
        description="The longest a throttled login or token request waits; an address that "
        "tries nothing for this long starts afresh.",
    )
    token_max_attempts_per_client: int = Field(
        default=10,
        ge=1,
        description="Token requests one address may make for one client id before each "
        "further one must wait twice as long as the one before; a success starts afresh.",
    )
    token_max_attempts_per_ip: int = Field(
        default=100,
        ge=1,
        description="Token requests one address may make, for any client ids, before it is "
        "slowed down the same way; each success gives its attempt back.",
    )
    callback_dns_timeout_seconds: float = Field(
        default=2.0,
        gt=0,
        description="How long checking the host of a client's `points.expired` callback URL "
        "may take.",
    )
    share_email_recipients_per_day: int = Field(
        default=200,
        ge=1,
        description="Addresses one organisation may send share e-mails to in any 24 hours; "
        "past it, POST /v1/rules/{id}/share/email answers 429 SHARE_EMAIL_LIMIT.",
    )
    callback_signing_key: str = Field(
        default="",
        validation_alias=AliasChoices("RULES_CALLBACK_SIGNING_KEY", "CALLBACK_SIGNING_KEY"),
        description="Platform key from which per-client callback-signing secrets are derived; "
        "the notifier needs the same value.",
    )
    signing_key_encryption_key: str = Field(
        default="",
        description="Key that seals the token issuer's private signing keys in the database; "
        "without it a copy of the database cannot mint tokens. Keep it stable: keys sealed "
        "under another value cannot be opened.",
    )
    invitation_sealing_key: str = Field(
        default="",
        validation_alias=AliasChoices("RULES_INVITATION_SEALING_KEY", "INVITATION_SEALING_KEY"),
        description="Platform key that seals invitation links' tokens on their way to the "
        "notifier (the topic and the notifier's database never hold one in the clear); the "
        "notifier needs the same value.",
    )
    invitation_lifetime_hours: float = Field(
        default=72,
        gt=0,
        le=24 * 30,
        description="How long an invitation's one-time link works; inviting the same address "
        "again replaces the link.",
    )

    @model_validator(mode="after")
    def _platform_keys_outside_development(self) -> RulesSettings:
        self.callback_signing_key = self._platform_key(
            "CALLBACK_SIGNING_KEY", self.callback_signing_key, DEV_CALLBACK_SIGNING_KEY
        )
        self.signing_key_encryption_key = self._platform_key(
            "RULES_SIGNING_KEY_ENCRYPTION_KEY",
            self.signing_key_encryption_key,
            DEV_KEY_ENCRYPTION_KEY,
        )
        self.invitation_sealing_key = self._platform_key(
            "INVITATION_SEALING_KEY", self.invitation_sealing_key, DEV_INVITATION_SEALING_KEY
        )
        return self

    def _platform_key(self, name: str, value: str, placeholder: str) -> str:
        """``value``, or the development placeholder where that is allowed."""
        if self.is_development:
            return value or placeholder
        if not value:
            raise ValueError(f"{name} must be set outside development mode")
        refuse_weak_secrets({name: value}, generated=True)
        return value

    def rules_service_url(self) -> str | None:
        return self.public_url

    @property
    def longest_token_lifetime(self) -> timedelta:
        """How long a token signed now may be presented: retired keys must verify that long."""
        return timedelta(
            seconds=max(self.client_token_lifetime_seconds, self.user_token_lifetime_seconds)
        )

    @property
    def mail_dir(self) -> Path:
        """The directory of the local SMTP sink's messages."""
        return self.dev_mail_dir or var_dir() / "mail"

    async def check_callback_url(self, url: str) -> None:
        """Refuse, naming the field ``url``, a URL callbacks may not be posted to (SSRF):
        outside development, anything but https to a public address."""
        await check_callback_url(
            url,
            development=self.is_development,
            timeout=self.callback_dns_timeout_seconds,
            field="url",
        )

    @property
    def invitation_lifetime(self) -> timedelta:
        return timedelta(hours=self.invitation_lifetime_hours)

    @property
    def invitation_page_prefix(self) -> str:
        """The console's invitation page, to which an invitation's link adds its token."""
        return self.public_url.rstrip("/") + "/console/invitations/"

    @property
    def ledger_public_url(self) -> str:
        """Where developers read balances (the integration guide names it)."""
        return self.ledger_guide_url or self.ledger_url

    def trigger_url(self, environment: str) -> str:
        return (
            self.production_trigger_url if environment == "production" else self.staging_trigger_url
        )

    @property
    def token_url(self) -> str:
        """Where API clients get their access tokens."""
        return self.public_url.rstrip("/") + TOKEN_PATH

    def integration_guide_for(self, environment: str) -> str:
        """The API Integration Guide of ``environment``, as shared with developers."""
        base = self.integration_guide_url or self.public_url.rstrip("/") + INTEGRATION_GUIDE_PATH
        separator = "&" if "?" in base else "?"
        return f"{base}{separator}{urlencode({'environment': environment})}"

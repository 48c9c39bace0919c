"""Settings shared by every service.

Each service has one pydantic-settings class with its own env prefix
(``RULES_``, ``TRIGGER_``, ...). The infrastructure settings also read the
unprefixed names (``DATABASE_URL``, ``KAFKA_BOOTSTRAP_SERVERS``, ``SMTP_URL``,
``LOG_LEVEL``, ...), so one variable points every service at an external
server while a prefixed one still overrides it for a single service.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from contracts import Environment, TopicSpec
from contracts.topics import ALL_TOPICS, EVENT_RETENTION_MS, EVENT_SEGMENT_MS, TOPICS_TO_CREATE
from infra.problem_types import PROBLEM_TYPES_PATH

RunMode = Literal["development", "production"]
KafkaSecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
KafkaSaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

#: The platform's services, in the order they start: each has a package under
#: ``services/``, a schema of its own, and an env prefix of its name.
SERVICES = ("rules", "trigger", "ledger", "notifier")

#: Whole values that show a secret was copied from an example rather than chosen.
PLACEHOLDER_SECRETS = frozenset({"secret", "password", "test", "admin", "dev", "development"})
#: Words that, anywhere in a secret (case and punctuation aside), show the same:
#: ``change-me``, ``REPLACE_ME_WITH_A_KEY``, the development keys, ``example…``.
PLACEHOLDER_WORDS = ("changeme", "replaceme", "placeholder", "example", "developmentonly")
#: The fewest characters of a key the platform's operator generates. Thirty-two
#: random bytes, as ``python -c "import secrets; print(secrets.token_urlsafe(32))"``
#: writes them, are 43 characters.
MIN_GENERATED_SECRET_LENGTH = 32
#: The fewest different characters such a key has; a random one has about 30.
MIN_GENERATED_SECRET_VARIETY = 12


def secret_weakness(value: str, *, generated: bool) -> str | None:
    """What makes ``value`` unfit as a secret outside development, or None.

    Every secret is refused when it is a placeholder from an example. A key the
    operator generates for the platform (``generated``: the callback-signing key,
    the token-key encryption key, the operator token) must also be long and
    varied enough to be random; passwords of outside servers (PostgreSQL, Kafka,
    SMTP) are whatever those servers were given, so they are not held to that.
    """
    folded = "".join(character for character in value.lower() if character.isalnum())
    if value.strip().lower() in PLACEHOLDER_SECRETS or any(
        word in folded for word in PLACEHOLDER_WORDS
    ):
        return "is a placeholder from an example; set the real one"
    if generated and len(value) < MIN_GENERATED_SECRET_LENGTH:
        return (
            f"is shorter than {MIN_GENERATED_SECRET_LENGTH} characters, too short to be a "
            "random key; generate one with "
            "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    if generated and len(set(value)) < MIN_GENERATED_SECRET_VARIETY:
        return "repeats too few characters to be a random key; generate one"
    return None


def refuse_weak_secrets(secrets: dict[str, str | None], *, generated: bool) -> None:
    """Raise naming the first of ``secrets`` (variable name → value) unfit to be one."""
    for name, value in secrets.items():
        weakness = None if value is None else secret_weakness(value, generated=generated)
        if weakness is not None:
            raise ValueError(f"{name} {weakness}")


#: The largest request body a service accepts unless MAX_BODY_BYTES says otherwise.
DEFAULT_MAX_BODY_BYTES = 65_536

#: Settings every service also reads without its prefix.
SHARED_NAMES = frozenset(
    {
        "mode",
        "database_url",
        "kafka_bootstrap_servers",
        "kafka_idempotent_producer",
        "kafka_active_fetch_wait_ms",
        "kafka_session_timeout_ms",
        "kafka_heartbeat_interval_ms",
        "kafka_security_protocol",
        "kafka_sasl_mechanism",
        "kafka_sasl_username",
        "kafka_sasl_password",
        "kafka_ssl_cafile",
        "kafka_ssl_certfile",
        "kafka_ssl_keyfile",
        "kafka_ssl_keyfile_password",
        "smtp_url",
        "log_level",
        "log_json",
        "max_body_bytes",
        "problem_types_url",
        "token_issuer_url",
        "shutdown_grace_seconds",
        "http_reuse_port",
        "kafka_topic_retention_hours",
        "kafka_topic_segment_hours",
        "outbox_retention_hours",
        "inbox_retention_margin_hours",
        "retention_interval_seconds",
        "retention_batch_size",
    }
)


def shared_env_name(field_name: str) -> str:
    """The unprefixed variable of a shared setting: ``DATABASE_URL``, and ``POINTS_MODE``."""
    return f"POINTS_{field_name.upper()}" if field_name == "mode" else field_name.upper()


class SharedEnvSource(PydanticBaseSettingsSource):
    """Reads the unprefixed, platform-wide names of :data:`SHARED_NAMES`."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        name = shared_env_name(field_name)
        return os.environ.get(name), name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for field_name, field in self.settings_cls.model_fields.items():
            if field_name not in SHARED_NAMES:
                continue
            value, _, _ = self.get_field_value(field, field_name)
            if value not in (None, ""):
                values[field_name] = value
        return values


class ServiceSettings(BaseSettings):
    """The infrastructure part of every service's settings."""

    model_config = SettingsConfigDict(extra="ignore", env_ignore_empty=True)

    service_name: ClassVar[str] = "service"

    mode: RunMode = Field(
        default="production",
        description="`development` relaxes checks meant for the open internet, such as "
        "callbacks to 127.0.0.1; `points dev` sets it (POINTS_MODE).",
    )
    host: str = Field(default="127.0.0.1", description="Address the HTTP server binds.")
    port: int = Field(default=8000, description="Port the HTTP server binds.")
    http_reuse_port: bool = Field(
        default=False,
        description="Bind the HTTP port with SO_REUSEPORT, so that several replicas of a "
        "service on one machine share it and the kernel spreads connections across them; "
        "`points dev --scale` sets it for a service with more than one replica "
        "(HTTP_REUSE_PORT).",
    )
    database_url: str = Field(
        default="postgresql://postgres@127.0.0.1:5432/points",
        description="PostgreSQL DSN; each service keeps its tables in its own schema.",
    )
    max_body_bytes: int = Field(
        default=DEFAULT_MAX_BODY_BYTES,
        ge=1024,
        description="Largest HTTP request body accepted, in bytes; a larger one is refused "
        "with 413 `BODY_TOO_LARGE`, whether it declares its length or is sent chunked.",
    )
    problem_types_url: str = Field(
        default="http://127.0.0.1:8001/problems",
        description="Where the rules service explains each problem type: `<RULES_PUBLIC_URL>"
        "/problems`. An error's `type` is `<this>/<type>`, such as `…/problems/rule-not-found` "
        "(PROBLEM_TYPES_URL).",
    )
    db_pool_min: int = Field(default=1, description="Connections the database pool keeps open.")
    db_pool_max: int = Field(default=10, description="Most connections the database pool opens.")
    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092", description="Comma-separated Kafka bootstrap servers."
    )
    kafka_idempotent_producer: bool = Field(
        default=False,
        description="Idempotent producer with acks=all: turn on with Apache Kafka. "
        "The embedded Tansu broker refuses idempotent producers.",
    )
    kafka_active_fetch_wait_ms: int = Field(
        default=500,
        ge=1,
        le=30_000,
        description="Longest a consumer's fetch waits at the broker while its records flow "
        "(an idle consumer waits 500 ms, Kafka's default). Apache Kafka answers a waiting "
        "fetch as soon as a record arrives, so the default costs no latency there; the "
        "embedded Tansu broker answers only as slices of the wait end, so `points dev` sets "
        "50 for it.",
    )
    kafka_session_timeout_ms: int = Field(
        default=10_000,
        ge=1_000,
        le=300_000,
        description="How long the broker waits for a silent consumer before handing its "
        "partitions to the rest of its group: after a crash, the messages of those partitions "
        "wait this long. The embedded Tansu broker also waits half of it for the members to "
        "rejoin on every rebalance, so `points dev` sets 2000 for it.",
    )
    kafka_heartbeat_interval_ms: int = Field(
        default=1_000,
        ge=100,
        description="How often a consumer tells its group it is alive, and so how soon it "
        "hears of a rebalance: Apache Kafka finishes one once every member has rejoined, so "
        "this bounds the pause when a replica joins or leaves. At most a third of "
        "KAFKA_SESSION_TIMEOUT_MS.",
    )
    kafka_security_protocol: KafkaSecurityProtocol = Field(
        default="PLAINTEXT",
        description="`SSL` or `SASL_SSL` encrypt the broker connection; the `SASL_` ones "
        "authenticate with KAFKA_SASL_MECHANISM.",
    )
    kafka_sasl_mechanism: KafkaSaslMechanism = Field(
        default="PLAIN", description="SASL mechanism of the `SASL_` protocols."
    )
    kafka_sasl_username: str | None = Field(
        default=None, description="SASL user name of the `SASL_` protocols."
    )
    kafka_sasl_password: SecretStr | None = Field(
        default=None, description="SASL password of the `SASL_` protocols."
    )
    kafka_ssl_cafile: Path | None = Field(
        default=None,
        description="PEM file of the CA that signed the brokers' certificates; without it "
        "the system's trusted CAs are used.",
    )
    kafka_ssl_certfile: Path | None = Field(
        default=None, description="PEM client certificate, for brokers that require mutual TLS."
    )
    kafka_ssl_keyfile: Path | None = Field(
        default=None, description="PEM private key of the client certificate."
    )
    kafka_ssl_keyfile_password: SecretStr | None = Field(
        default=None, description="Password of KAFKA_SSL_KEYFILE, when it is encrypted."
    )
    log_level: str = Field(
        default="INFO", description="Least level logged: DEBUG, INFO, WARNING or ERROR."
    )
    log_json: bool | None = Field(
        default=None, description="JSON log lines; by default JSON unless stderr is a terminal."
    )
    startup_timeout_seconds: float = Field(
        default=20.0, description="How long start-up waits for PostgreSQL and Kafka."
    )
    shutdown_grace_seconds: float = Field(
        default=4.0,
        ge=0,
        description="On SIGINT/SIGTERM, how long each stage of a clean stop may take: HTTP "
        "requests in progress, then the batch each consumer has in hand, then the outbox "
        "relay publishing what is still pending.",
    )
    kafka_topic_retention_hours: float = Field(
        default=EVENT_RETENTION_MS / 3_600_000,
        gt=0,
        description="How long the event topics (`points.requested.v1`, `points.results.v1`, "
        "`notifications.requested.v1`) keep a message, given to them when the platform creates "
        "them (`points topics create`, the embedded stack). Each consumer's inbox remembers an "
        "event at least this long plus the segment time, the outbox retention and the margin; "
        "it reads a topic's real retention from the broker at start-up where it can.",
    )
    kafka_topic_segment_hours: float = Field(
        default=EVENT_SEGMENT_MS / 3_600_000,
        gt=0,
        description="How long an event topic's log segment stays open (`segment.ms`): Kafka "
        "deletes whole segments, so a message can outlive the topic's retention by this much.",
    )
    outbox_retention_hours: float = Field(
        default=24.0,
        gt=0,
        description="How long published outbox rows are kept: how far back the outbox can "
        "publish again after a Kafka cluster lost its log. Give every service the same value "
        "(the inboxes count on the producers' retention).",
    )
    inbox_retention_margin_hours: float = Field(
        default=24.0,
        ge=0,
        description="Added to how long a redelivery of an event stays possible (topic "
        "retention + segment time + outbox retention) before its inbox row may be purged.",
    )
    retention_interval_seconds: float = Field(
        default=300.0,
        gt=0,
        description="How often each process purges the rows past their retention (outbox, "
        "inbox and the service's own tables), a batch at a time, until a batch is short.",
    )
    retention_batch_size: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="Most rows one purge statement deletes: each batch is a short "
        "transaction of its own, and replicas purging at once skip each other's rows.",
    )
    environments: Annotated[tuple[Environment, ...], NoDecode] = Field(
        default=get_args(Environment),
        min_length=1,
        description="The environments whose messages this process consumes, comma-separated "
        "(`production`, `staging`): each has consumer groups of its own, so one environment's "
        "load or failures never hold up the other's, and each can run in processes of its own.",
    )

    def topics(self) -> tuple[TopicSpec, ...]:
        """Every topic the platform needs created, the event topics with the retention and
        segment time of these settings."""
        return tuple(
            topic
            if topic.compacted or topic not in ALL_TOPICS
            else replace(
                topic,
                retention_ms=round(self.kafka_topic_retention_hours * 3_600_000),
                segment_ms=round(self.kafka_topic_segment_hours * 3_600_000),
            )
            for topic in TOPICS_TO_CREATE
        )

    @field_validator("environments", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
        return value

    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism", mode="before")
    @classmethod
    def _upper_case(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _kafka_security_is_complete(self) -> ServiceSettings:
        protocol = self.kafka_security_protocol
        if protocol.startswith("SASL_") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_USERNAME and "
                "KAFKA_SASL_PASSWORD"
            )
        tls_files = {
            "KAFKA_SSL_CAFILE": self.kafka_ssl_cafile,
            "KAFKA_SSL_CERTFILE": self.kafka_ssl_certfile,
            "KAFKA_SSL_KEYFILE": self.kafka_ssl_keyfile,
        }
        given = [name for name, path in tls_files.items() if path is not None]
        if given and not protocol.endswith("SSL"):
            raise ValueError(
                f"{', '.join(given)} set, but KAFKA_SECURITY_PROTOCOL={protocol} does not use "
                "TLS; choose SSL or SASL_SSL"
            )
        if self.kafka_ssl_keyfile is not None and self.kafka_ssl_certfile is None:
            raise ValueError("KAFKA_SSL_KEYFILE needs KAFKA_SSL_CERTFILE, its certificate")
        return self

    @model_validator(mode="after")
    def _heartbeats_fit_in_the_session(self) -> ServiceSettings:
        if self.kafka_heartbeat_interval_ms * 3 > self.kafka_session_timeout_ms:
            raise ValueError(
                f"KAFKA_HEARTBEAT_INTERVAL_MS ({self.kafka_heartbeat_interval_ms}) must be at most "
                f"a third of KAFKA_SESSION_TIMEOUT_MS ({self.kafka_session_timeout_ms}), so a "
                "late heartbeat or two does not cost a consumer its partitions"
            )
        return self

    @model_validator(mode="after")
    def _problem_types_where_the_rules_service_is(self) -> ServiceSettings:
        """Unset, the problem types are explained by the rules service at the URL this
        service already knows it by, so an operator sets that URL once."""
        rules_url = self.rules_service_url()
        if "problem_types_url" not in self.model_fields_set and rules_url:
            self.problem_types_url = rules_url.rstrip("/") + PROBLEM_TYPES_PATH
        return self

    def rules_service_url(self) -> str | None:
        """The rules service's base URL, where this service knows it."""
        return None

    @model_validator(mode="after")
    def _no_placeholder_secrets_outside_development(self) -> ServiceSettings:
        if self.is_development:
            return self
        passwords = {
            "DATABASE_URL's password": urlsplit(self.database_url).password,
            "KAFKA_SASL_PASSWORD": reveal(self.kafka_sasl_password),
            "KAFKA_SSL_KEYFILE_PASSWORD": reveal(self.kafka_ssl_keyfile_password),
        }
        refuse_weak_secrets(passwords, generated=False)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, SharedEnvSource(settings_cls), file_secret_settings)

    @property
    def is_development(self) -> bool:
        return self.mode == "development"


def reveal(secret: SecretStr | None) -> str | None:
    return None if secret is None else secret.get_secret_value()


def project_root() -> Path:
    """The repository root (the project is installed in editable mode)."""
    return Path(__file__).resolve().parent.parent


def var_dir() -> Path:
    """Where the embedded stack keeps its state (``POINTS_VAR_DIR``, else ``<root>/var``)."""
    return Path(os.environ.get("POINTS_VAR_DIR") or project_root() / "var")


def load_stack_environment(path: Path) -> bool:
    """Adopt the connection settings a running ``points dev`` wrote to ``path``.

    Variables already set win, so an operator can still aim elsewhere.
    Returns False when there is no such file.
    """
    if not path.is_file():
        return False
    for name, value in read_stack_environment(path).items():
        os.environ.setdefault(name, value)
    return True


def read_stack_environment(path: Path) -> dict[str, str]:
    """The connection settings a running ``points dev`` wrote to ``path``, by name."""
    settings = {}
    for line in path.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() and not name.startswith("#"):
            settings[name.strip()] = value.strip()
    return settings


def environment_overrides() -> dict[str, str]:
    """The current process environment, for children that should inherit it."""
    return dict(os.environ)

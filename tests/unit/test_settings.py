"""Settings: one variable points every service somewhere, a prefixed one overrides it for
one service; Kafka TLS and SASL reach aiokafka; production refuses example secrets."""

from __future__ import annotations

import secrets
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from infra.broker import producer_options
from infra.errors import StartupError
from infra.kafka_security import kafka_client_options
from infra.settings import ServiceSettings
from services.ledger.settings import LedgerSettings
from services.notifier.settings import NotifierSettings
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


def self_signed_certificate(directory: Path, name: str) -> tuple[Path, Path]:
    """A real PEM certificate and key for ``CN=name``, as a CA or client would have."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def use_sasl(monkeypatch: pytest.MonkeyPatch, protocol: str) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", protocol)
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "ledger")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "s3cr3t-from-the-vault")


class TestKafkaSecurity:
    def test_plaintext_by_default_with_acks_all(self) -> None:
        settings = LedgerSettings()
        assert kafka_client_options(settings) == {}
        assert producer_options(settings)["acks"] == "all"

    def test_the_idempotent_producer_is_a_setting_for_apache_kafka(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("KAFKA_IDEMPOTENT_PRODUCER", "true")
        options = producer_options(LedgerSettings())
        assert (options["acks"], options["enable_idempotence"]) == ("all", True)

    def test_sasl_scram_over_tls_reaches_aiokafka_with_a_verifying_context(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        use_sasl(monkeypatch, "sasl_ssl")
        monkeypatch.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")

        options = kafka_client_options(LedgerSettings())

        context = options.pop("ssl_context")
        assert options == {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": "ledger",
            "sasl_plain_password": "s3cr3t-from-the-vault",
        }
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname

    def test_sasl_plain_without_tls_has_no_ssl_context(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        use_sasl(monkeypatch, "SASL_PLAINTEXT")

        options = kafka_client_options(LedgerSettings())

        assert options["security_protocol"] == "SASL_PLAINTEXT"
        assert (options["sasl_mechanism"], options["ssl_context"]) == ("PLAIN", None)

    def test_tls_trusts_the_given_ca_and_presents_the_client_certificate(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        ca_file, _ = self_signed_certificate(tmp_path, "points-test-ca")
        client_cert, client_key = self_signed_certificate(tmp_path, "ledger-client")
        monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SSL")
        monkeypatch.setenv("KAFKA_SSL_CAFILE", str(ca_file))
        monkeypatch.setenv("KAFKA_SSL_CERTFILE", str(client_cert))
        monkeypatch.setenv("KAFKA_SSL_KEYFILE", str(client_key))

        options = kafka_client_options(LedgerSettings())

        assert options["security_protocol"] == "SSL"
        trusted = [
            dict(item[0] for item in ca["subject"]) for ca in options["ssl_context"].get_ca_certs()
        ]
        assert {"commonName": "points-test-ca"} in trusted

    def test_a_missing_ca_file_is_named_when_the_service_starts(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SSL")
        monkeypatch.setenv("KAFKA_SSL_CAFILE", str(tmp_path / "absent.pem"))

        with pytest.raises(StartupError, match="KAFKA_SSL_CAFILE"):
            kafka_client_options(LedgerSettings())

    def test_sasl_without_credentials_is_refused_naming_them(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
        monkeypatch.setenv("KAFKA_SASL_USERNAME", "ledger")
        with pytest.raises(ValidationError, match="KAFKA_SASL_PASSWORD"):
            LedgerSettings()

    def test_an_unknown_mechanism_or_protocol_is_refused(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("KAFKA_SASL_MECHANISM", "GSSAPI")
        with pytest.raises(ValidationError, match="kafka_sasl_mechanism"):
            LedgerSettings()
        monkeypatch.delenv("KAFKA_SASL_MECHANISM")
        monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "TLS")
        with pytest.raises(ValidationError, match="kafka_security_protocol"):
            LedgerSettings()

    def test_tls_files_without_a_tls_protocol_are_refused_not_ignored(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("KAFKA_SSL_CAFILE", "/etc/kafka/ca.pem")
        with pytest.raises(ValidationError, match="KAFKA_SSL_CAFILE set, but"):
            LedgerSettings()


class TestPlaceholderSecrets:
    @pytest.mark.parametrize(
        ("variable", "value", "named"),
        [
            ("DATABASE_URL", "postgresql://points:change-me@db/points", "DATABASE_URL"),
            ("KAFKA_SASL_PASSWORD", "changeme", "KAFKA_SASL_PASSWORD"),
        ],
    )
    def test_production_refuses_a_secret_copied_from_an_example(
        self, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str
    ) -> None:
        use_sasl(monkeypatch, "SASL_SSL")
        monkeypatch.setenv(variable, value)

        with pytest.raises(ValidationError, match=named):
            LedgerSettings()
        assert LedgerSettings(mode="development")

    def test_a_real_password_is_accepted_and_kept_out_of_the_settings_repr(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        use_sasl(monkeypatch, "SASL_SSL")

        assert "s3cr3t-from-the-vault" not in repr(LedgerSettings())


#: Keys as an operator should make them: 32 random bytes each.
RANDOM_KEYS = {
    "CALLBACK_SIGNING_KEY": secrets.token_urlsafe(32),
    "INVITATION_SEALING_KEY": secrets.token_urlsafe(32),
    "RULES_SIGNING_KEY_ENCRYPTION_KEY": secrets.token_urlsafe(32),
    "NOTIFIER_OPERATOR_TOKEN": secrets.token_urlsafe(32),
}
WEAK_KEYS = [
    ("change-me", "placeholder"),
    ("CHANGE_ME_to_a_long_random_value_before_deploying", "placeholder"),
    ("replace-me-with-32-random-bytes-0123456789", "placeholder"),
    ("development-only-callback-signing-key", "placeholder"),
    ("s3cr3t-but-short", "shorter than 32"),
    ("ab" * 30, "too few characters"),
]


class TestGeneratedKeysOutsideDevelopment:
    """One check for every key the platform's operator generates, in every service
    that reads it: placeholders and keys too short or plain to be random are refused."""

    @pytest.fixture(autouse=True)
    def random_keys(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for variable, value in RANDOM_KEYS.items():
            monkeypatch.setenv(variable, value)

    @pytest.mark.parametrize(("value", "reason"), WEAK_KEYS)
    @pytest.mark.parametrize(
        ("settings", "variable"),
        [
            (RulesSettings, "CALLBACK_SIGNING_KEY"),
            (NotifierSettings, "CALLBACK_SIGNING_KEY"),
            (RulesSettings, "INVITATION_SEALING_KEY"),
            (NotifierSettings, "INVITATION_SEALING_KEY"),
            (RulesSettings, "RULES_SIGNING_KEY_ENCRYPTION_KEY"),
            (NotifierSettings, "NOTIFIER_OPERATOR_TOKEN"),
        ],
    )
    def test_a_weak_key_stops_the_service_naming_the_variable_and_why(
        self,
        monkeypatch: pytest.MonkeyPatch,
        settings: type[ServiceSettings],
        variable: str,
        value: str,
        reason: str,
    ) -> None:
        monkeypatch.setenv(variable, value)

        with pytest.raises(ValidationError, match=f"{variable} .*{reason}"):
            settings()
        assert settings(mode="development")

    @pytest.mark.parametrize("settings", [RulesSettings, NotifierSettings])
    def test_random_keys_are_accepted(self, settings: type[ServiceSettings]) -> None:
        assert settings().mode == "production"

    def test_a_notifier_without_an_operator_token_starts_with_its_endpoints_shut(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("NOTIFIER_OPERATOR_TOKEN")

        assert NotifierSettings().operator_token == ""

    def test_an_outside_servers_password_is_refused_only_when_it_is_a_placeholder(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("NOTIFIER_SMTP_PASSWORD", "example-password")
        with pytest.raises(ValidationError, match="NOTIFIER_SMTP_PASSWORD is a placeholder"):
            NotifierSettings()

        monkeypatch.setenv("NOTIFIER_SMTP_PASSWORD", "hunter22")  # short, but the server's
        assert NotifierSettings().smtp_password is not None

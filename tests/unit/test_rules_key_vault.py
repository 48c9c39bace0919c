"""Sealing the token issuer's private keys: what a copy of the database does not give away."""

from __future__ import annotations

import secrets

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import ValidationError

from infra.errors import StartupError
from services.rules.key_vault import DEVELOPMENT_KEY_ENCRYPTION_KEY, KeyVault
from services.rules.settings import RulesSettings


def public_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture
def private_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


class TestKeyVault:
    def test_a_sealed_key_opens_to_the_same_key(
        self, private_key: ec.EllipticCurvePrivateKey
    ) -> None:
        vault = KeyVault("platform key")

        opened = vault.open("kid-1", vault.seal("kid-1", private_key))

        assert public_bytes(opened) == public_bytes(private_key)

    def test_the_stored_form_is_not_a_readable_private_key(
        self, private_key: ec.EllipticCurvePrivateKey
    ) -> None:
        stored = KeyVault("platform key").seal("kid-1", private_key)

        assert "PRIVATE KEY" not in stored
        with pytest.raises(ValueError):
            serialization.load_pem_private_key(stored.encode(), password=None)

    def test_another_encryption_key_cannot_open_it_and_says_which_setting_to_fix(
        self, private_key: ec.EllipticCurvePrivateKey
    ) -> None:
        stored = KeyVault("platform key").seal("kid-1", private_key)

        with pytest.raises(StartupError, match="RULES_SIGNING_KEY_ENCRYPTION_KEY"):
            KeyVault("another key").open("kid-1", stored)

    def test_a_sealed_key_copied_onto_another_key_id_does_not_open(
        self, private_key: ec.EllipticCurvePrivateKey
    ) -> None:
        vault = KeyVault("platform key")
        stored = vault.seal("kid-1", private_key)

        with pytest.raises(StartupError):
            vault.open("kid-2", stored)

    def test_a_key_an_older_release_stored_in_the_clear_still_opens(
        self, private_key: ec.EllipticCurvePrivateKey
    ) -> None:
        plain = private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()

        opened = KeyVault("platform key").open("kid-1", plain)

        assert public_bytes(opened) == public_bytes(private_key)


class TestEncryptionKeySetting:
    def production(self, **overrides: str) -> RulesSettings:
        values = {
            "mode": "production",
            "callback_signing_key": secrets.token_urlsafe(32),
            "invitation_sealing_key": secrets.token_urlsafe(32),
            "database_url": "postgresql://db.example.com/points",
            "kafka_bootstrap_servers": "kafka.example.com:9092",
            **overrides,
        }
        return RulesSettings(**values)  # type: ignore[arg-type]

    def test_production_refuses_to_start_without_one(self) -> None:
        with pytest.raises(ValidationError, match="RULES_SIGNING_KEY_ENCRYPTION_KEY must be set"):
            self.production()

    def test_production_refuses_the_development_placeholder(self) -> None:
        with pytest.raises(ValidationError, match="placeholder"):
            self.production(signing_key_encryption_key=DEVELOPMENT_KEY_ENCRYPTION_KEY)

    def test_production_takes_a_real_one(self) -> None:
        key = secrets.token_urlsafe(32)

        assert self.production(signing_key_encryption_key=key).signing_key_encryption_key == key

    def test_development_falls_back_to_the_placeholder(self) -> None:
        settings = RulesSettings(mode="development")

        assert settings.signing_key_encryption_key == DEVELOPMENT_KEY_ENCRYPTION_KEY

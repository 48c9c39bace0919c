"""Request-signing keys and signatures: which keys are accepted, and what a signature covers."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, padding, rsa

from infra.request_signing import (
    InvalidSigningKey,
    cached_signing_key,
    canonical_request,
    fingerprint,
    load_signing_key,
    public_pem,
    signature_matches,
)
from services.trigger.signatures import (
    SignatureExpired,
    SignatureInvalid,
    SignatureRequired,
    SignedRequest,
    check_request_signature,
)

NOW = 1_762_337_702
BODY = b'{"userId":"member-1","ruleId":"rul_1","amount":5,"requestId":"r-1"}'
PATH = "/v1/points/requests"

EC_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem_of(public_key: object) -> str:
    return public_key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def sign(private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    if isinstance(private_key, rsa.RSAPrivateKey):
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        return private_key.sign(message, pss, hashes.SHA256())
    return private_key.sign(message, ec.ECDSA(hashes.SHA256()))


def signed(
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = EC_KEY,
    *,
    timestamp: int = NOW,
    body: bytes = BODY,
) -> SignedRequest:
    signature = sign(private_key, canonical_request("POST", PATH, str(timestamp), body))
    return SignedRequest("POST", PATH, body, str(timestamp), base64.b64encode(signature).decode())


class TestAcceptedKeys:
    @pytest.mark.parametrize("private_key", [EC_KEY, RSA_KEY], ids=["ec-p256", "rsa-2048"])
    def test_ec_p256_and_rsa_2048_keys_are_accepted(self, private_key: object) -> None:
        key = load_signing_key(pem_of(private_key.public_key()))  # type: ignore[attr-defined]

        assert public_pem(key) == pem_of(private_key.public_key())  # type: ignore[attr-defined]

    def test_a_pkcs1_rsa_public_key_is_stored_as_subject_public_key_info(self) -> None:
        pkcs1 = (
            RSA_KEY.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
            .decode()
        )

        stored = public_pem(load_signing_key(pkcs1))

        assert stored.startswith("-----BEGIN PUBLIC KEY-----\n")

    def test_a_fingerprint_is_the_sha256_of_the_der_key(self) -> None:
        der = EC_KEY.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        expected = base64.b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")

        assert fingerprint(EC_KEY.public_key()) == f"SHA256:{expected}"


class TestRefusedKeys:
    @pytest.mark.parametrize(
        ("public_key", "reason"),
        [
            (rsa.generate_private_key(65537, 1024).public_key(), "1024 bits"),  # noqa: S505
            (ec.generate_private_key(ec.SECP384R1()).public_key(), "secp384r1"),
            (ed25519.Ed25519PrivateKey.generate().public_key(), "Ed25519 keys are not accepted"),
            (dsa.generate_private_key(2048).public_key(), "DSA keys are not accepted"),
        ],
        ids=["rsa-1024", "ec-p384", "ed25519", "dsa"],
    )
    def test_a_weak_or_unsupported_key_is_refused_saying_why(
        self, public_key: object, reason: str
    ) -> None:
        with pytest.raises(InvalidSigningKey, match=reason):
            load_signing_key(pem_of(public_key))

    def test_a_private_key_is_refused_and_not_echoed(self) -> None:
        private_pem = EC_KEY.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()

        with pytest.raises(InvalidSigningKey, match="private key") as refused:
            load_signing_key(private_pem)

        body = private_pem.splitlines()[1]
        assert body not in str(refused.value)

    @pytest.mark.parametrize(
        "text", ["", "hello", "-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n"]
    )
    def test_text_that_is_no_pem_public_key_is_refused(self, text: str) -> None:
        with pytest.raises(InvalidSigningKey, match="not a PEM public key"):
            load_signing_key(text)

    def test_an_oversized_text_is_refused_before_parsing(self) -> None:
        with pytest.raises(InvalidSigningKey, match="longer than"):
            load_signing_key("A" * 20_000)


class TestSignatures:
    def test_the_canonical_string_is_method_target_timestamp_and_body_digest(self) -> None:
        message = canonical_request("post", "/v1/points/requests?x=1", "1762337702", b"{}")

        assert message == (
            b"POST\n/v1/points/requests?x=1\n1762337702\n"
            + hashlib.sha256(b"{}").hexdigest().encode()
        )

    @pytest.mark.parametrize("private_key", [EC_KEY, RSA_KEY], ids=["ec", "rsa"])
    def test_a_signature_matches_only_its_own_message(self, private_key: object) -> None:
        key = load_signing_key(pem_of(private_key.public_key()))  # type: ignore[attr-defined]
        message = canonical_request("POST", PATH, str(NOW), BODY)
        signature = sign(private_key, message)  # type: ignore[arg-type]

        assert signature_matches(key, message, signature)
        assert not signature_matches(key, message.replace(b"POST", b"GET"), signature)

    def test_an_rsa_signature_with_pkcs1_v15_padding_is_not_accepted(self) -> None:
        key = load_signing_key(pem_of(RSA_KEY.public_key()))
        message = canonical_request("POST", PATH, str(NOW), BODY)
        signature = RSA_KEY.sign(message, padding.PKCS1v15(), hashes.SHA256())

        assert not signature_matches(key, message, signature)

    def test_a_loaded_key_is_reused_for_the_same_pem(self) -> None:
        pem = pem_of(EC_KEY.public_key())

        assert cached_signing_key(pem) is cached_signing_key(pem)


class TestTheGatewaysCheck:
    PEM = pem_of(EC_KEY.public_key())

    def test_a_fresh_correct_signature_passes(self) -> None:
        check_request_signature(self.PEM, signed(), at=NOW + 1, window_seconds=300)

    @pytest.mark.parametrize("missing", ["timestamp", "signature"])
    def test_a_missing_header_is_signature_required(self, missing: str) -> None:
        request = signed()
        request = SignedRequest(
            request.method,
            request.target,
            request.body,
            None if missing == "timestamp" else request.timestamp,
            None if missing == "signature" else request.signature,
        )

        with pytest.raises(SignatureRequired):
            check_request_signature(self.PEM, request, at=NOW, window_seconds=300)

    @pytest.mark.parametrize("skew", [-301, 301])
    def test_a_timestamp_just_outside_the_window_is_expired(self, skew: int) -> None:
        with pytest.raises(SignatureExpired, match="301 s"):
            check_request_signature(self.PEM, signed(), at=NOW - skew, window_seconds=300)

    @pytest.mark.parametrize("skew", [-300, 300])
    def test_a_timestamp_at_the_edge_of_the_window_passes(self, skew: int) -> None:
        check_request_signature(self.PEM, signed(), at=NOW - skew, window_seconds=300)

    def test_a_stale_request_is_expired_even_when_its_signature_is_wrong(self) -> None:
        request = signed(RSA_KEY)

        with pytest.raises(SignatureExpired):
            check_request_signature(self.PEM, request, at=NOW + 3600, window_seconds=300)

    def test_another_body_is_invalid(self) -> None:
        request = signed()
        tampered = SignedRequest(
            request.method,
            request.target,
            BODY.replace(b"5", b"9"),
            request.timestamp,
            request.signature,
        )

        with pytest.raises(SignatureInvalid, match="does not match"):
            check_request_signature(self.PEM, tampered, at=NOW, window_seconds=300)

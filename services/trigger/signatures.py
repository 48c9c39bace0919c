"""Request signatures: a client that registered a public key signs every request."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

from infra.problems import Problem
from infra.request_signing import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    cached_signing_key,
    canonical_request,
    signature_matches,
)


class SignatureRefused(Problem):
    status = 401


class SignatureRequired(SignatureRefused):
    code = "SIGNATURE_REQUIRED"


class SignatureExpired(SignatureRefused):
    code = "SIGNATURE_EXPIRED"


class SignatureInvalid(SignatureRefused):
    code = "SIGNATURE_INVALID"


@dataclass(frozen=True)
class SignedRequest:
    """The parts of an HTTP request a client's signature covers, and the signature."""

    method: str
    target: str
    body: bytes
    timestamp: str | None
    signature: str | None


_UNIX_SECONDS = re.compile(r"[0-9]{1,12}")


def check_request_signature(
    signing_key_pem: str, request: SignedRequest, *, at: float, window_seconds: int
) -> None:
    """Refuse a request that is unsigned, signed too long ago or ahead, or signed wrongly.

    The loaded key is cached per PEM text, so no request parses a PEM.
    """
    if not request.timestamp or not request.signature:
        raise SignatureRequired(
            f"this client signs its requests: send {TIMESTAMP_HEADER} and {SIGNATURE_HEADER}"
        )
    if not _UNIX_SECONDS.fullmatch(request.timestamp):
        raise SignatureInvalid(f"{TIMESTAMP_HEADER} must be a whole number of unix seconds")
    skew = int(request.timestamp) - at
    if abs(skew) > window_seconds:
        direction = "ahead of" if skew > 0 else "behind"
        raise SignatureExpired(
            f"{TIMESTAMP_HEADER} is {abs(skew):.0f} s {direction} the gateway's clock; "
            f"at most {window_seconds} s is allowed"
        )
    try:
        signature = base64.b64decode(request.signature, validate=True)
    except ValueError:  # binascii.Error, or a character that is not ASCII at all
        raise SignatureInvalid(f"{SIGNATURE_HEADER} is not base64") from None
    message = canonical_request(request.method, request.target, request.timestamp, request.body)
    if not signature_matches(cached_signing_key(signing_key_pem), message, signature):
        raise SignatureInvalid(
            "the signature does not match this request's method, path, timestamp and body "
            "under the client's registered public key"
        )

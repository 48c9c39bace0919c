"""Console sessions without a database: CSRF tokens and the cookie's attributes."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from services.rules.api.accounts import _session_cookie_options
from services.rules.sessions import ConsoleSession, hash_session_id
from services.rules.settings import RulesSettings


def session(csrf_secret: bytes | None = None, session_id: str = "session-a") -> ConsoleSession:
    return ConsoleSession(
        id_hash=hash_session_id(session_id),
        user_id="usr_1",
        org_id="org_1",
        role="admin",
        email="owner@example.com",
        expires_at=datetime.now(UTC),
        csrf_secret=csrf_secret or secrets.token_bytes(32),
    )


class TestCsrfTokens:
    def test_a_session_accepts_every_token_it_issued(self) -> None:
        console = session()

        tokens = [console.csrf_token() for _ in range(3)]

        assert len(set(tokens)) == 3
        assert all(console.accepts_csrf_token(token) for token in tokens)

    def test_a_token_of_another_session_is_refused(self) -> None:
        assert not session().accepts_csrf_token(session().csrf_token())

    def test_the_same_secret_under_another_session_id_is_refused(self) -> None:
        secret = secrets.token_bytes(32)
        token = session(secret, "session-a").csrf_token()

        assert not session(secret, "session-b").accepts_csrf_token(token)

    def test_missing_and_malformed_tokens_are_refused(self) -> None:
        console = session()
        nonce, _, mac = console.csrf_token().partition(".")

        for token in (
            None,
            "",
            nonce,
            f"{nonce}.",
            f"{nonce}.{mac[:-2]}",
            "!!.??",
            f"A{nonce}.{mac}",
        ):
            assert not console.accepts_csrf_token(token), token


class TestSessionCookie:
    def test_the_cookie_is_secure_outside_development(self) -> None:
        settings = RulesSettings(
            mode="production",
            callback_signing_key=secrets.token_urlsafe(32),
            signing_key_encryption_key=secrets.token_urlsafe(32),
            invitation_sealing_key=secrets.token_urlsafe(32),
            database_url="postgresql://db.example.com/points",
            kafka_bootstrap_servers="kafka.example.com:9092",
        )

        options = _session_cookie_options(settings)

        assert options == {"path": "/", "httponly": True, "samesite": "strict", "secure": True}

    def test_development_serves_the_cookie_over_plain_http(self) -> None:
        assert _session_cookie_options(RulesSettings(mode="development"))["secure"] is False

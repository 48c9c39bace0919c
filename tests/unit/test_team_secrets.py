"""Invitation tokens on their way to the e-mail: sealed for one invitation under the
shared key, and opened into the message only when it is sent."""

from __future__ import annotations

import email
import secrets
import uuid
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import default

import pytest

from contracts import LEDGER_USERS_GROUP, USERS_LIFECYCLE, InvitationEmailRequested
from infra.sealing import DEVELOPMENT_SEALING_KEY, CannotOpen, invitation_sealer
from services.notifier.emails import (
    TOKEN_PLACEHOLDER,
    render_invitation_email,
    with_invitation_token,
)
from services.rules.propagation import readers_of

INVITATION_ID = uuid.UUID("00000000-0000-4000-8000-000000000021")
SEALER = invitation_sealer(DEVELOPMENT_SEALING_KEY)


def invitation(token: str, **changes: object) -> InvitationEmailRequested:
    values: dict[str, object] = {
        "invitation_id": INVITATION_ID,
        "user_id": "usr_1",
        "organisation_name": "Café Zoë & Co",
        "role": "editor",
        "recipient": "sam@example.com",
        "invited_by": "owner@example.com",
        "accept_url_prefix": "https://points.example.com/console/invitations/",
        "sealed_token": SEALER.seal(str(INVITATION_ID), token),
        "expires_at": datetime(2026, 12, 11, 9, 0, tzinfo=UTC),
    }
    return InvitationEmailRequested.model_validate(values | changes)


def text_of(raw: bytes) -> str:
    message = email.message_from_bytes(raw, policy=default)
    assert isinstance(message, EmailMessage)
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    return str(body.get_content())  # type: ignore[attr-defined]


class TestSealing:
    def test_a_sealed_token_opens_for_its_invitation(self) -> None:
        token = secrets.token_urlsafe(32)

        sealed = SEALER.seal(str(INVITATION_ID), token)

        assert token not in sealed
        assert SEALER.open(str(INVITATION_ID), sealed) == token

    def test_does_not_open_for_another_invitation(self) -> None:
        sealed = SEALER.seal(str(INVITATION_ID), "token")

        with pytest.raises(CannotOpen):
            SEALER.open(str(uuid.uuid4()), sealed)

    def test_does_not_open_under_another_key(self) -> None:
        sealed = SEALER.seal(str(INVITATION_ID), "token")

        with pytest.raises(CannotOpen):
            invitation_sealer(secrets.token_urlsafe(32)).open(str(INVITATION_ID), sealed)

    @pytest.mark.parametrize("sealed", ["", "v1.", "v1.!!!", "plain-token"])
    def test_refuses_what_is_not_sealed(self, sealed: str) -> None:
        with pytest.raises(CannotOpen):
            SEALER.open(str(INVITATION_ID), sealed)


class TestTheInvitationEmail:
    def test_the_stored_message_holds_a_placeholder_not_the_token(self) -> None:
        token = secrets.token_urlsafe(32)

        raw = render_invitation_email(
            invitation(token), mail_from="no-reply@example.com", reply_to=None
        )

        assert token.encode() not in raw
        assert TOKEN_PLACEHOLDER.encode() in raw

    def test_the_sent_message_links_to_the_invitation_page_with_the_token(self) -> None:
        token = secrets.token_urlsafe(32)
        request = invitation(token)
        raw = render_invitation_email(request, mail_from="no-reply@example.com", reply_to=None)

        sent = with_invitation_token(raw, request.sealed_token, INVITATION_ID, SEALER)

        text = text_of(sent)
        assert f"https://points.example.com/console/invitations/{token}" in text
        assert "Café Zoë & Co" in text
        assert "an editor" in text

    def test_a_token_sealed_under_another_key_is_not_sent(self) -> None:
        request = invitation("token")
        raw = render_invitation_email(request, mail_from="no-reply@example.com", reply_to=None)

        with pytest.raises(CannotOpen):
            with_invitation_token(
                raw, request.sealed_token, INVITATION_ID, invitation_sealer("another key")
            )


class TestPropagation:
    def test_a_change_of_a_business_user_waits_for_the_ledgers_users_group(self) -> None:
        groups = dict(readers_of([(USERS_LIFECYCLE, None)]))

        assert groups[LEDGER_USERS_GROUP] == (USERS_LIFECYCLE,)

"""Share e-mails without a server: rendering, SMTP failure classes, SMTP settings."""

from __future__ import annotations

import email
import uuid
from email.message import EmailMessage
from email.policy import default

import aiosmtplib
import pytest

from contracts import ShareEmailRequested
from services.notifier.emails import (
    InvalidShareEmail,
    SmtpServer,
    render_share_email,
    smtp_outcome,
)
from services.notifier.settings import DEVELOPMENT_SMTP_URL, NotifierSettings


def share(**changes: object) -> ShareEmailRequested:
    values: dict[str, object] = {
        "notification_id": uuid.UUID("00000000-0000-4000-8000-000000000002"),
        "rule_id": "rule-9",
        "rule_name": "Cashback",
        "rule_type": "redeem",
        "environment": "production",
        "url_endpoint": "https://trigger.example.com/v1/points/requests",
        "integration_guide_url": "https://docs.example.com/guide",
        "recipients": ("dev@partner.example.com",),
        "requested_by": "user-1",
    }
    return ShareEmailRequested.model_validate(values | changes)


def rendered(request: ShareEmailRequested) -> EmailMessage:
    raw = render_share_email(request, mail_from="Points <no-reply@example.com>", reply_to=None)
    message = email.message_from_bytes(raw, policy=default)
    assert isinstance(message, EmailMessage)
    return message


class TestRenderShareEmail:
    def test_labels_the_rule_type_and_environment_as_the_console_does(self) -> None:
        body = rendered(share()).get_body(preferencelist=("plain",))
        assert body is not None
        text = body.get_content()  # type: ignore[attr-defined]

        assert "Rule Type: Redeem Points" in text
        assert "Environment: Production" in text

    def test_a_rule_name_with_a_line_break_cannot_add_headers(self) -> None:
        # The contract refuses it now; a message from before it did must still be safe.
        named = share().model_copy(update={"rule_name": "Promo\r\nBcc: attacker@example.com"})
        message = rendered(named)

        assert message["Subject"] == "Integration details for rule Promo Bcc: attacker@example.com"
        assert message["Bcc"] is None

    def test_has_no_reply_to_unless_one_is_set(self) -> None:
        assert rendered(share())["Reply-To"] is None

    def test_a_malformed_recipient_is_refused(self) -> None:
        with pytest.raises(InvalidShareEmail):
            render_share_email(
                share(recipients=("a,b@example.com",)), mail_from="x@y.z", reply_to=None
            )


class TestSmtpOutcome:
    def test_a_4xx_reply_is_temporary(self) -> None:
        outcome = smtp_outcome(aiosmtplib.SMTPDataError(451, "try later"))

        assert (outcome.status_code, outcome.permanent, outcome.error) == (
            451,
            False,
            "451 try later",
        )

    def test_a_5xx_reply_is_permanent(self) -> None:
        outcome = smtp_outcome(aiosmtplib.SMTPSenderRefused(550, "no", "x@y.z"))

        assert (outcome.status_code, outcome.permanent) == (550, True)

    def test_recipients_refused_is_temporary_while_any_was_only_deferred(self) -> None:
        refused = aiosmtplib.SMTPRecipientsRefused(
            [
                aiosmtplib.SMTPRecipientRefused(550, "unknown", "a@x.com"),
                aiosmtplib.SMTPRecipientRefused(452, "full", "b@x.com"),
            ]
        )

        assert smtp_outcome(refused).permanent is False

    def test_a_refused_connection_is_temporary(self) -> None:
        outcome = smtp_outcome(ConnectionRefusedError(111, "Connection refused"))

        assert (outcome.status_code, outcome.permanent) == (None, False)
        assert outcome.error is not None and "Connection refused" in outcome.error


class TestSmtpSettings:
    def test_development_defaults_to_the_local_sink(self) -> None:
        assert NotifierSettings(mode="development").smtp_url == DEVELOPMENT_SMTP_URL

    @pytest.mark.parametrize(
        ("url", "starttls", "expected"),
        [
            ("smtp://mail.example.com:587", True, SmtpServer("mail.example.com", 587, False, True)),
            ("smtps://mail.example.com", True, SmtpServer("mail.example.com", 465, True, False)),
            ("smtp://127.0.0.1:1025", False, SmtpServer("127.0.0.1", 1025, False, False)),
        ],
    )
    def test_the_url_says_where_and_how_to_connect(
        self, url: str, starttls: bool, expected: SmtpServer
    ) -> None:
        assert SmtpServer.from_url(url, start_tls=starttls) == expected

    def test_settings_refuse_an_smtp_url_that_is_not_one(self) -> None:
        with pytest.raises(ValueError, match="SMTP_URL"):
            NotifierSettings(mode="development", smtp_url="mail.example.com:25")

    def test_a_url_that_is_not_smtp_is_refused(self) -> None:
        with pytest.raises(ValueError, match="SMTP_URL"):
            SmtpServer.from_url("http://mail.example.com", start_tls=False)

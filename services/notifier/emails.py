"""Share e-mails: a rule's integration details as a message, and its trip over SMTP.

The message is rendered once, when the request is queued, and stored as the
exact bytes sent, so every retry sends the same message (same Message-ID).
It carries exactly what the share request carries; no secret ever reaches it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate, parseaddr
from pathlib import Path
from urllib.parse import urlsplit
from uuid import UUID

import aiosmtplib
import jinja2

from contracts import InvitationEmailRequested, ShareEmailRequested
from infra.sealing import CannotOpen, Sealer
from services.notifier.attempts import AttemptOutcome
from services.notifier.settings import NotifierSettings

TEMPLATES = Path(__file__).parent / "templates"
RULE_TYPE_LABELS = {"earn": "Earn Points", "redeem": "Redeem Points"}
ENVIRONMENT_LABELS = {"staging": "Staging", "production": "Production"}
SMTP_PORTS = {"smtp": 25, "smtps": 465}

# Autoescaping is on for the HTML part (and any string template); the plain
# text part is not HTML, so escaping it would only garble names such as "A&B".
_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=True),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
)


class InvalidShareEmail(ValueError):
    """A share request that cannot become a valid message (say, a malformed address)."""


def share_email_fields(share: ShareEmailRequested) -> dict[str, str]:
    """The six things a developer needs, labelled as the console labels them."""
    return {
        "rule_name": share.rule_name,
        "rule_id": share.rule_id,
        "rule_type": RULE_TYPE_LABELS[share.rule_type],
        "environment": ENVIRONMENT_LABELS[share.environment],
        "url_endpoint": share.url_endpoint,
        "integration_guide_url": share.integration_guide_url,
    }


def render_share_email(
    share: ShareEmailRequested, *, mail_from: str, reply_to: str | None
) -> bytes:
    """The complete message (headers, plain-text and HTML parts) as SMTP bytes."""
    fields = share_email_fields(share)
    message = EmailMessage(policy=SMTP)
    try:
        message["Subject"] = f"Integration details for rule {_one_line(share.rule_name)}"
        message["From"] = mail_from
        message["To"] = [_address(recipient) for recipient in share.recipients]
        if reply_to:
            message["Reply-To"] = reply_to
        message["Date"] = formatdate(usegmt=True)
        message["Message-ID"] = _message_id(share.notification_id, mail_from)
        message["X-Points-Rule-Id"] = _one_line(share.rule_id)
    except (ValueError, TypeError) as error:
        raise InvalidShareEmail(str(error)) from error
    message.set_content(_templates.get_template("share_email.txt").render(fields))
    message.add_alternative(
        _templates.get_template("share_email.html").render(fields), subtype="html"
    )
    return message.as_bytes()


#: Stands where an invitation's token goes in the stored message: letters only, so no
#: escaping or line folding touches it, and the parts are sent 8-bit so no transfer
#: encoding does either.
TOKEN_PLACEHOLDER = "POINTSINVITATIONTOKENPLACEHOLDER"  # noqa: S105 - no secret
ROLE_LABELS = {"admin": "an admin", "editor": "an editor", "viewer": "a viewer"}


def render_invitation_email(
    invitation: InvitationEmailRequested, *, mail_from: str, reply_to: str | None
) -> bytes:
    """The invitation message as SMTP bytes, with :data:`TOKEN_PLACEHOLDER` where the
    link's token goes: the token itself is added only when it is sent
    (:func:`with_invitation_token`), so the stored message holds no secret."""
    fields = {
        "organisation_name": invitation.organisation_name,
        "invited_by": invitation.invited_by,
        "role": ROLE_LABELS[invitation.role],
        "expires_at": invitation.expires_at.strftime("%Y-%m-%d %H:%M UTC"),
        "link": invitation.accept_url_prefix + TOKEN_PLACEHOLDER,
    }
    message = EmailMessage(policy=SMTP)
    try:
        message["Subject"] = (
            f"You are invited to the points console of {_one_line(invitation.organisation_name)}"
        )
        message["From"] = mail_from
        message["To"] = [_address(invitation.recipient)]
        if reply_to:
            message["Reply-To"] = reply_to
        message["Date"] = formatdate(usegmt=True)
        message["Message-ID"] = _message_id(invitation.invitation_id, mail_from)
    except (ValueError, TypeError) as error:
        raise InvalidShareEmail(str(error)) from error
    text = _templates.get_template("invitation_email.txt").render(fields)
    message.set_content(text, cte="8bit")
    html = _templates.get_template("invitation_email.html").render(fields)
    message.add_alternative(html, subtype="html", cte="8bit")
    return message.as_bytes()


def with_invitation_token(
    message: bytes, sealed_token: str, invitation_id: UUID, sealer: Sealer
) -> bytes:
    """The stored invitation ``message`` with its token opened into the link, to hand to
    the SMTP server (and nowhere else); :class:`CannotOpen` when it does not open."""
    token = sealer.open(str(invitation_id), sealed_token)
    if not token.replace("-", "").replace("_", "").isalnum():
        raise CannotOpen("the opened token is not a link token")
    return message.replace(TOKEN_PLACEHOLDER.encode(), token.encode())


def envelope_sender(mail_from: str) -> str:
    """The bare address of a From header such as ``Name <addr@example.com>``."""
    return parseaddr(mail_from)[1]


@dataclass(frozen=True)
class SmtpServer:
    """Where and how to connect, from ``smtp_url`` and the other ``smtp_*`` settings."""

    hostname: str
    port: int
    use_tls: bool
    start_tls: bool

    @classmethod
    def from_url(cls, url: str, *, start_tls: bool) -> SmtpServer:
        parts = urlsplit(url)
        if parts.scheme not in SMTP_PORTS or not parts.hostname:
            raise ValueError("SMTP_URL must look like smtp://host:port or smtps://host:port")
        implicit_tls = parts.scheme == "smtps"
        return cls(
            hostname=parts.hostname,
            port=parts.port or SMTP_PORTS[parts.scheme],
            use_tls=implicit_tls,
            start_tls=start_tls and not implicit_tls,
        )


async def send_message(
    settings: NotifierSettings, message: bytes, recipients: tuple[str, ...]
) -> dict[str, aiosmtplib.SMTPResponse]:
    """Send one stored message; returns the recipients the server refused (if it
    accepted the others). Raises aiosmtplib's errors for everything else, and
    TimeoutError when the server has not greeted within ``smtp_connect_timeout``
    or the whole conversation has not ended within ``smtp_timeout``."""
    if settings.smtp_url is None:
        raise aiosmtplib.SMTPConnectError("SMTP_URL is not set")
    server = SmtpServer.from_url(settings.smtp_url, start_tls=settings.smtp_starttls)
    password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
    smtp = aiosmtplib.SMTP(
        hostname=server.hostname,
        port=server.port,
        use_tls=server.use_tls,
        start_tls=server.start_tls,
        username=settings.smtp_username,
        password=password,
        timeout=settings.smtp_timeout,
    )
    async with asyncio.timeout(settings.smtp_timeout):
        await smtp.connect(timeout=settings.smtp_connect_timeout)
        try:
            refused, _ = await smtp.sendmail(
                envelope_sender(settings.mail_from), list(recipients), message
            )
            await smtp.quit()
        finally:
            smtp.close()
    return refused


def smtp_outcome(error: Exception) -> AttemptOutcome:
    """Classify an SMTP failure: 5xx replies are permanent, the rest worth retrying."""
    if isinstance(error, aiosmtplib.SMTPRecipientsRefused):
        replies = [(refused.code, refused.message) for refused in error.recipients]
        # Retry while any recipient was only deferred; give up when all refused for good.
        code = min(code for code, _ in replies) if replies else None
        reason = "; ".join(f"{reply_code} {message}" for reply_code, message in replies)
        return AttemptOutcome(code, f"recipients refused: {reason}", _is_permanent(code))
    if isinstance(error, aiosmtplib.SMTPResponseException):
        return AttemptOutcome(
            error.code, f"{error.code} {error.message}", _is_permanent(error.code)
        )
    return AttemptOutcome(None, f"{type(error).__name__}: {error}".rstrip(": "))


def _is_permanent(code: int | None) -> bool:
    return code is not None and 500 <= code < 600


def _one_line(text: str) -> str:
    # Header values cannot hold line breaks; a name typed with one still fits.
    return " ".join(text.split())


def _address(addr_spec: str) -> Address:
    return Address(addr_spec=addr_spec)


def _message_id(notification_id: UUID, mail_from: str) -> str:
    domain = envelope_sender(mail_from).rpartition("@")[2] or "points.localhost"
    return f"<{notification_id}@{domain}>"

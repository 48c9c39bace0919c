"""Share e-mails against real PostgreSQL and real SMTP servers (aiosmtpd on 127.0.0.1).

The happy path uses the same SMTP sink ``points dev`` runs, which keeps each
message as an ``.eml`` file; the failure paths use a small aiosmtpd server
that answers with scripted replies.
"""

from __future__ import annotations

import asyncio
import email
import logging
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import default
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from structlog.testing import capture_logs

from contracts import ALL_TOPICS, ShareEmailRequested, ShareEmailRequestedEvent
from infra.dev.smtp_sink import SmtpSink, list_messages, start_smtp_sink
from infra.kafka_admin import create_topics
from infra.signing import DEVELOPMENT_SIGNING_KEY, derive_signing_secret
from services.notifier import queueing
from services.notifier.app import create_app
from services.notifier.settings import NotifierSettings
from tests.helpers import free_port
from tests.integration.test_notifier import (
    RunningCallbacks,
    client_event,
    notifier_settings,
    operator_api,
    running_callbacks,
)

GUIDE_URL = "https://docs.points.example.com/api-integration-guide"
ENDPOINT = "https://trigger.staging.points.example.com/v1/points/requests"
CREDENTIALS_LINE = "the platform operator sends them to you separately"


# --- SMTP servers ---------------------------------------------------------------------------


@pytest.fixture
def mail_sink(tmp_path: Path) -> Iterator[SmtpSink]:
    sink = start_smtp_sink("127.0.0.1", free_port(), tmp_path / "mail")
    yield sink
    sink.stop()


@dataclass
class ScriptedSmtpHandler:
    """Answers RCPT and DATA with the next scripted reply, then accepts everything."""

    rcpt_replies: list[str] = field(default_factory=list)
    data_replies: list[str] = field(default_factory=list)
    data_commands: int = 0
    accepted: list[bytes] = field(default_factory=list)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.rcpt_replies:
            return self.rcpt_replies.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.data_commands += 1
        if self.data_replies:
            return self.data_replies.pop(0)
        self.accepted.append(envelope.original_content or b"")
        return "250 Message accepted for delivery"


@contextmanager
def serving_smtp(handler: object) -> Iterator[str]:
    """A real SMTP server on 127.0.0.1 answering through ``handler``; its ``smtp://`` URL."""
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield f"smtp://127.0.0.1:{port}"
    finally:
        controller.stop()


@pytest.fixture
def scripted_smtp() -> Iterator[tuple[ScriptedSmtpHandler, str]]:
    handler = ScriptedSmtpHandler()
    with serving_smtp(handler) as url:
        yield handler, url


# --- the notifier and its share requests ----------------------------------------------------


def share_event(
    *, notification_id: uuid.UUID | None = None, rule_name: str = "Welcome bonus"
) -> ShareEmailRequestedEvent:
    return ShareEmailRequestedEvent.new_event(
        data=ShareEmailRequested(
            notification_id=notification_id or uuid.uuid4(),
            rule_id="rule_5d2c91b7",
            rule_name=rule_name,
            rule_type="earn",
            environment="staging",
            url_endpoint=ENDPOINT,
            integration_guide_url=GUIDE_URL,
            recipients=("dev@partner.example.com", "lead@agency.example.org"),
            requested_by="user-1",
        ),
        environment="staging",
        org_id="org-1",
        correlation_id="corr-share",
        type="notification.share_email.requested",
    )


def email_settings(database_url: str, smtp_url: str, **overrides: Any) -> NotifierSettings:
    return notifier_settings(
        database_url,
        smtp_url=smtp_url,
        mail_from="Points platform <no-reply@points.example.com>",
        mail_reply_to="support@points.example.com",
        **overrides,
    )


async def request_email(notifier: RunningCallbacks, event: ShareEmailRequestedEvent) -> bool:
    async with notifier.runtime.pool.acquire() as connection, connection.transaction():
        queued = await queueing.queue_share_email(connection, event, notifier.settings)
    if queued:
        notifier.dispatcher.wake()
    return queued


async def wait_for_email(
    notifier: RunningCallbacks, event: ShareEmailRequestedEvent, status: str, timeout: float = 10.0
) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            row = await notifier.runtime.pool.fetchrow(
                "SELECT * FROM deliveries WHERE notification_id = $1", event.data.notification_id
            )
            if row is not None and row["status"] == status:
                return dict(row.items())
            await asyncio.sleep(0.05)


async def wait_for_messages(sink: SmtpSink, count: int, timeout: float = 10.0) -> list[Path]:
    async with asyncio.timeout(timeout):
        while True:
            messages = list_messages(sink.mail_dir)
            if len(messages) >= count:
                return messages
            await asyncio.sleep(0.05)


def parts(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None and html is not None
    return str(text.get_content()), str(html.get_content())  # type: ignore[attr-defined]


# --- behaviour --------------------------------------------------------------------------------


class TestShareEmailContent:
    async def test_the_email_carries_the_six_fields_and_the_guide_in_both_parts_and_no_secret(
        self, database_url: str, mail_sink: SmtpSink
    ) -> None:
        client_secret = f"cs_{secrets.token_urlsafe(24)}"
        signing_secret = derive_signing_secret(DEVELOPMENT_SIGNING_KEY, "client-1", "salt-1")
        async with running_callbacks(email_settings(database_url, mail_sink.url)) as notifier:
            # The notifier knows the client: its signing secret is derivable here,
            # and must still never reach an e-mail.
            await notifier.receive_client(client_event())
            event = share_event(rule_name='Spring <b>double</b> & "more"')
            await request_email(notifier, event)
            [path] = await wait_for_messages(mail_sink, 1)
            delivery = await wait_for_email(notifier, event, "delivered")

        raw = path.read_bytes()
        message = email.message_from_bytes(raw, policy=default)
        assert isinstance(message, EmailMessage)
        text, html = parts(message)
        assert message["Subject"] == 'Integration details for rule Spring <b>double</b> & "more"'
        assert message["From"] == "Points platform <no-reply@points.example.com>"
        assert message["To"] == "dev@partner.example.com, lead@agency.example.org"
        assert message["Reply-To"] == "support@points.example.com"
        assert message["Message-ID"] == f"<{event.data.notification_id}@points.example.com>"
        assert message["X-Points-Rule-Id"] == "rule_5d2c91b7"
        for line in (
            'Rule Name: Spring <b>double</b> & "more"',
            "Rule ID: rule_5d2c91b7",
            "Rule Type: Earn Points",
            "Environment: Staging",
            f"URL Endpoint: {ENDPOINT}",
            f"API Integration Guide: {GUIDE_URL}",
        ):
            assert line in text
        for cell in (
            "<td>Spring &lt;b&gt;double&lt;/b&gt; &amp; &#34;more&#34;</td>",
            "<td>rule_5d2c91b7</td>",
            "<td>Earn Points</td>",
            "<td>Staging</td>",
            f"<td>{ENDPOINT}</td>",
            f'<a href="{GUIDE_URL}">{GUIDE_URL}</a>',
        ):
            assert cell in html
        assert "<b>double</b>" not in html
        assert CREDENTIALS_LINE in text
        assert CREDENTIALS_LINE in html
        for secret in (client_secret, signing_secret):
            assert secret.encode() not in raw
            assert secret not in text + html
        assert (delivery["kind"], delivery["attempts"], delivery["last_status_code"]) == (
            "email",
            1,
            250,
        )

    async def test_the_same_notification_delivered_twice_sends_one_email(
        self, database_url: str, mail_sink: SmtpSink
    ) -> None:
        async with running_callbacks(email_settings(database_url, mail_sink.url)) as notifier:
            event = share_event()
            # The same event redelivered, and the same request in a new envelope.
            copy = share_event(notification_id=event.data.notification_id)
            queued = [await request_email(notifier, each) for each in (event, event, copy)]
            await wait_for_email(notifier, event, "delivered")
            await asyncio.sleep(0.5)
            rows = await notifier.runtime.pool.fetchval(
                "SELECT count(*) FROM deliveries WHERE kind = 'email'"
            )

        assert queued == [True, False, False]
        assert rows == 1
        assert len(list_messages(mail_sink.mail_dir)) == 1


class TestShareEmailLogs:
    async def test_no_log_line_of_an_email_delivery_holds_a_secret_or_an_address(
        self,
        database_url: str,
        scripted_smtp: tuple[ScriptedSmtpHandler, str],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        handler, url = scripted_smtp
        handler.data_replies = ["451 4.3.0 Mailbox temporarily unavailable"]
        signing_secret = derive_signing_secret(DEVELOPMENT_SIGNING_KEY, "client-1", "salt-1")
        # The scripted server itself logs addresses (aiosmtpd's mail.log): only the
        # notifier's side is under test, so only its loggers are lowered.
        for logger in ("services", "aiosmtplib"):
            caplog.set_level(logging.DEBUG, logger=logger)
        with capture_logs() as logs:
            async with running_callbacks(email_settings(database_url, url)) as notifier:
                await notifier.receive_client(client_event())
                event = share_event()
                await request_email(notifier, event)
                await wait_for_email(notifier, event, "delivered")

        lines = [repr(line) for line in logs] + [record.getMessage() for record in caplog.records]
        forbidden = (signing_secret, *event.data.recipients)
        assert {"email.queued", "email.failed", "email.delivered"} <= {
            line["event"] for line in logs
        }
        assert [(text, line) for text in forbidden for line in lines if text in line] == []


class TestSmtpFailures:
    async def test_a_temporary_451_is_retried_and_then_delivered(
        self, database_url: str, scripted_smtp: tuple[ScriptedSmtpHandler, str]
    ) -> None:
        handler, url = scripted_smtp
        handler.data_replies = ["451 4.3.0 Mailbox temporarily unavailable"]
        async with running_callbacks(email_settings(database_url, url)) as notifier:
            event = share_event()
            await request_email(notifier, event)
            delivery = await wait_for_email(notifier, event, "delivered")

        assert handler.data_commands == 2
        assert len(handler.accepted) == 1
        assert (delivery["attempts"], delivery["last_error"]) == (2, None)

    async def test_a_permanent_550_is_recorded_as_failed_with_the_reply_and_not_retried(
        self, database_url: str, scripted_smtp: tuple[ScriptedSmtpHandler, str]
    ) -> None:
        handler, url = scripted_smtp
        handler.rcpt_replies = ["550 5.1.1 No such user here"] * 2
        settings = email_settings(database_url, url)
        async with running_callbacks(settings) as notifier:
            event = share_event()
            await request_email(notifier, event)
            await wait_for_email(notifier, event, "failed")
            await asyncio.sleep(0.5)
            delivery = await wait_for_email(notifier, event, "failed")
            async with operator_api(settings, notifier) as http:
                listed = await http.get(
                    "/v1/deliveries", params={"kind": "email", "status": "failed"}
                )
                callbacks = await http.get("/v1/deliveries", params={"kind": "callback"})

        assert delivery["attempts"] == 1
        assert delivery["last_status_code"] == 550
        assert "550 5.1.1 No such user here" in delivery["last_error"]
        assert handler.accepted == []
        [item] = listed.json()["items"]
        assert (item["kind"], item["status"], item["lastStatusCode"]) == ("email", "failed", 550)
        assert item["notificationId"] == str(event.data.notification_id)
        assert "No such user here" in item["lastError"]
        assert callbacks.json()["items"] == []

    async def test_an_unreachable_smtp_server_is_retried_on_the_schedule_then_parked(
        self, database_url: str
    ) -> None:
        nobody = f"smtp://127.0.0.1:{free_port()}"
        settings = email_settings(database_url, nobody, retry_schedule_seconds=(0.1,))
        async with running_callbacks(settings) as notifier:
            event = share_event()
            await request_email(notifier, event)
            delivery = await wait_for_email(notifier, event, "parked")

        assert delivery["attempts"] == 2
        assert delivery["last_status_code"] is None
        assert delivery["last_error"]


class TestThroughKafka:
    async def test_a_share_request_on_kafka_is_mailed_once(
        self, database_url: str, kafka_bootstrap_servers: str, mail_sink: SmtpSink
    ) -> None:
        await create_topics(kafka_bootstrap_servers, list(ALL_TOPICS))
        event = share_event()
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap_servers, acks="all")
        await producer.start()
        try:
            for _ in range(2):  # at-least-once: the same event twice
                await producer.send_and_wait(
                    event.TOPIC, event.model_dump_json().encode(), key=event.key().encode()
                )
        finally:
            await producer.stop()

        settings = email_settings(
            database_url, mail_sink.url, kafka_bootstrap_servers=kafka_bootstrap_servers
        )
        _, runtime = create_app(settings)
        await runtime.start()
        try:
            [path] = await wait_for_messages(mail_sink, 1, timeout=30.0)
            await asyncio.sleep(0.5)
        finally:
            await runtime.stop()

        assert len(list_messages(mail_sink.mail_dir)) == 1
        message = email.message_from_bytes(path.read_bytes(), policy=default)
        assert message["Subject"] == "Integration details for rule Welcome bonus"

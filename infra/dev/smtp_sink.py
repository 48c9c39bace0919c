"""A local SMTP server that accepts every message and keeps it as an ``.eml`` file.

Each message is stored exactly as the client sent it (the DATA bytes, CRLF
line endings included), one file per message. File names start with the
receive time in nanoseconds, so sorting them by name sorts them by time.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

_SUFFIX = ".eml"


@dataclass
class SmtpSink:
    """A running sink; ``stop()`` it when done."""

    host: str
    port: int
    mail_dir: Path
    _controller: Controller = field(repr=False)
    _stopped: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    def stop(self) -> None:
        """Stop accepting mail; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        self._controller.stop()


class _StoreEveryMessage:
    """aiosmtpd handler: accept any sender and recipient, write each message to a file."""

    def __init__(self, mail_dir: Path) -> None:
        self.mail_dir = mail_dir

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await asyncio.to_thread(store_message, self.mail_dir, envelope.original_content or b"")
        return "250 Message accepted for delivery"


def start_smtp_sink(host: str, port: int, mail_dir: Path) -> SmtpSink:
    """Serve SMTP on ``host:port`` from a background thread, storing mail under ``mail_dir``."""
    mail_dir.mkdir(parents=True, exist_ok=True)
    controller = Controller(
        _StoreEveryMessage(mail_dir), hostname=host, port=port, enable_SMTPUTF8=True
    )
    controller.start()
    return SmtpSink(host=host, port=port, mail_dir=mail_dir, _controller=controller)


def store_message(mail_dir: Path, raw: bytes) -> Path:
    """Write one message atomically (a temporary file renamed into place); return its path."""
    name = f"{time.time_ns():020d}-{uuid.uuid4().hex}{_SUFFIX}"
    final = mail_dir / name
    partial = mail_dir / f".{name}.partial"
    with partial.open("wb") as file:
        file.write(raw)
        file.flush()
        os.fsync(file.fileno())
    partial.replace(final)
    return final


def list_messages(mail_dir: Path) -> list[Path]:
    """Every stored message, newest first."""
    if not mail_dir.is_dir():
        return []
    return sorted(mail_dir.glob(f"[!.]*{_SUFFIX}"), key=lambda path: path.name, reverse=True)

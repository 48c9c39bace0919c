"""Builds the notifier: its runtime, Kafka handlers, delivery workers, HTTP app and metrics."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from infra.broker import create_broker
from infra.http import create_http_app
from infra.openapi import CONSOLE_BEARER, Security
from infra.retention import Purge
from infra.runtime import ServiceRuntime
from infra.serving import app_only
from infra.tokens import JwksVerifier
from services.notifier import api, repository
from services.notifier.api import NotifierContext
from services.notifier.dispatch import DeliveryDispatcher
from services.notifier.metrics import DeliveryMetrics
from services.notifier.settings import NotifierSettings
from services.notifier.subscribers import register_subscribers

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(
    settings: NotifierSettings | None = None, *, verifier: JwksVerifier | None = None
) -> tuple[FastAPI, ServiceRuntime]:
    """The notifier's HTTP app and runtime; the runtime also runs the delivery workers.
    ``verifier`` (of business users' tokens) defaults to the issuer's JWKS at
    ``token_issuer_url``."""
    settings = settings or NotifierSettings()
    # The notifier's relay publishes only what its consumers quarantine, to the
    # dead-letter topics, and what an operator replays.
    runtime = ServiceRuntime(
        settings, schema="notifier", migrations=MIGRATIONS, broker=create_broker(settings)
    )
    metrics = DeliveryMetrics(runtime.metrics.registry)
    dispatcher = DeliveryDispatcher(settings, metrics=metrics)
    register_subscribers(runtime, dispatcher, settings)
    runtime.retention.add(
        Purge("deliveries", repository.PURGE_DELIVERED, (settings.delivered_retention_days,))
    )

    async def read_delivery_state() -> None:
        await metrics.refresh(runtime.pool)

    async def start_delivery_workers() -> None:
        await dispatcher.start(runtime.pool)

    runtime.on_start(start_delivery_workers)
    runtime.on_stop(dispatcher.stop)
    runtime.metrics.before_scrape(read_delivery_state)
    verifier = verifier or JwksVerifier(settings.token_issuer_url)
    runtime.on_stop(verifier.aclose)

    app = create_http_app(
        runtime=runtime,
        max_body_bytes=settings.max_body_bytes,
        title="Points notifier",
        description="Signed HTTP callbacks for points results and share e-mails, with retries.",
        security=Security(
            schemes={
                "operatorBearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The operator token (NOTIFIER_OPERATOR_TOKEN).",
                },
                "consoleBearer": CONSOLE_BEARER,
            },
            # A business user reads (and replays) its own organisation's callbacks.
            requirement=[{"operatorBearer": []}, {"consoleBearer": []}],
            refusals=lambda _: {403: ["FORBIDDEN"]},
        ),
    )
    app.state.notifier = NotifierContext(
        settings=settings, runtime=runtime, dispatcher=dispatcher, verifier=verifier
    )
    app.include_router(api.router)
    return app, runtime


#: For ``uvicorn --factory services.notifier.app:asgi_app``.
asgi_app = app_only(create_app)

"""Builds the notifier: its runtime, Kafka handlers, delivery workers, HTTP app and metrics."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI

from infra.broker import create_broker
from infra.http import create_http_app
from infra.runtime import ServiceRuntime, health_router
from services.notifier.api import deliveries_router, metrics_router
from services.notifier.service import DeliveryDispatcher
from services.notifier.settings import NotifierSettings
from services.notifier.subscribers import register_subscribers

MIGRATIONS = Path(__file__).parent / "migrations"


@dataclass(frozen=True)
class Notifier:
    """One notifier process, ready for ``runtime.start()`` or ``infra.runtime.serve``."""

    settings: NotifierSettings
    runtime: ServiceRuntime
    dispatcher: DeliveryDispatcher
    app: FastAPI


def create_notifier(settings: NotifierSettings | None = None) -> Notifier:
    settings = settings or NotifierSettings()
    broker = create_broker(settings)
    # The notifier publishes nothing, so it needs no outbox relay.
    runtime = ServiceRuntime(
        settings, schema="notifier", migrations=MIGRATIONS, broker=broker, relay=False
    )
    dispatcher = DeliveryDispatcher(settings)
    register_subscribers(broker, runtime, dispatcher, settings)

    async def start_delivery_workers() -> None:
        await dispatcher.start(runtime.pool)

    runtime.on_start(start_delivery_workers)
    runtime.on_stop(dispatcher.stop)

    app = create_http_app(
        title="Points notifier",
        description="Signed HTTP callbacks for points results and share e-mails, with retries.",
    )
    app.include_router(health_router(runtime))
    app.include_router(deliveries_router(settings, runtime, dispatcher))
    app.include_router(metrics_router(runtime, dispatcher.metrics))
    return Notifier(settings=settings, runtime=runtime, dispatcher=dispatcher, app=app)


def create_app(settings: NotifierSettings | None = None) -> tuple[FastAPI, ServiceRuntime]:
    """The HTTP app and its runtime, as every service's ``app`` module offers them."""
    notifier = create_notifier(settings)
    return notifier.app, notifier.runtime

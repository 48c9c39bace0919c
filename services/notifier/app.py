"""Builds the notifier: its runtime, Kafka handlers, delivery workers, HTTP app and metrics."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI

from infra.broker import create_broker
from infra.health import health_router
from infra.http import create_http_app
from infra.runtime import ServiceRuntime
from services.notifier import subscribers
from services.notifier.api import deliveries_router
from services.notifier.dispatch import DeliveryDispatcher
from services.notifier.metrics import DeliveryMetrics
from services.notifier.settings import NotifierSettings

MIGRATIONS = Path(__file__).parent / "migrations"


@dataclass(frozen=True)
class Notifier:
    """One notifier process, ready for ``runtime.start()`` or ``infra.serving.serve``."""

    settings: NotifierSettings
    runtime: ServiceRuntime
    dispatcher: DeliveryDispatcher
    app: FastAPI


def create_notifier(settings: NotifierSettings | None = None) -> Notifier:
    settings = settings or NotifierSettings()
    broker = create_broker(settings)
    # The notifier's relay publishes only what its consumers quarantine, to the
    # dead-letter topics, and what an operator replays.
    runtime = ServiceRuntime(settings, schema="notifier", migrations=MIGRATIONS, broker=broker)
    metrics = DeliveryMetrics(runtime.metrics.registry)
    dispatcher = DeliveryDispatcher(settings, metrics=metrics)
    subscribers.register_subscribers(runtime, dispatcher, settings)

    async def read_delivery_state() -> None:
        await metrics.refresh(runtime.pool)

    async def start_delivery_workers() -> None:
        await dispatcher.start(runtime.pool)

    runtime.on_start(start_delivery_workers)
    runtime.on_stop(dispatcher.stop)
    runtime.metrics.before_scrape(read_delivery_state)

    app = create_http_app(
        runtime.metrics,
        max_body_bytes=settings.max_body_bytes,
        title="Points notifier",
        description="Signed HTTP callbacks for points results and share e-mails, with retries.",
    )
    app.include_router(health_router(runtime))
    app.include_router(deliveries_router(settings, runtime, dispatcher))
    return Notifier(settings=settings, runtime=runtime, dispatcher=dispatcher, app=app)


def create_app(settings: NotifierSettings | None = None) -> tuple[FastAPI, ServiceRuntime]:
    """The HTTP app and its runtime, as every service's ``app`` module offers them."""
    notifier = create_notifier(settings)
    return notifier.app, notifier.runtime

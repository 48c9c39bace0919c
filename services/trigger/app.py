"""Builds the trigger gateway: runtime, subscribers, HTTP app and token verifier."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from contracts import POINTS_REQUESTED, PointsRequestedEvent
from infra.broker import create_broker
from infra.catchup import CatchUp, GroupProgress
from infra.http import create_http_app, serve_directly
from infra.openapi import CONSOLE_BEARER, Security, partner_oauth
from infra.runtime import ServiceRuntime
from infra.serving import app_only
from infra.tokens import TOKEN_PATH, JwksVerifier
from services.trigger import subscribers
from services.trigger.activity import ActivityFlusher, ActivityTally
from services.trigger.admission import Gateway
from services.trigger.api import TRIGGER_PATH, TriggerContext, router, serve_trigger
from services.trigger.housekeeping import PendingReconciler, requests_purge
from services.trigger.reads import ResultsConsumed
from services.trigger.settings import TriggerSettings
from services.trigger.subscribers import register_subscribers

MIGRATIONS = Path(__file__).parent / "migrations"

#: What this service publishes, through its outbox (for the AsyncAPI document).
PUBLISHES = (
    (POINTS_REQUESTED, PointsRequestedEvent, "An earn or redeem request the gateway accepted."),
)


def create_app(
    settings: TriggerSettings | None = None, *, verifier: JwksVerifier | None = None
) -> tuple[FastAPI, ServiceRuntime]:
    """The gateway's HTTP app and its runtime; ``verifier`` defaults to the issuer's JWKS
    at ``token_issuer_url``."""
    settings = settings or TriggerSettings()
    broker = create_broker(settings)
    runtime = ServiceRuntime(
        settings,
        schema="trigger",
        migrations=MIGRATIONS,
        broker=broker,
    )
    register_subscribers(runtime)
    verifier = verifier or JwksVerifier(settings.token_issuer_url)
    projection = CatchUp(settings, subscribers.PROJECTION_GROUP, list(subscribers.PROJECTED_TOPICS))
    runtime.retention.add(requests_purge(settings.idempotency_retention_days))
    reconciler = PendingReconciler(
        lambda: runtime.pool,
        redrive_after=settings.pending_redrive_after_seconds,
        report_after=settings.pending_report_after_seconds,
        interval=settings.reconcile_interval_seconds,
        registry=runtime.metrics.registry,
    )
    runtime.on_start(projection.mark)
    runtime.on_start(reconciler.start)
    runtime.on_stop(reconciler.stop)
    runtime.on_stop(verifier.aclose)
    progress = GroupProgress(settings)
    runtime.on_stop(progress.stop)
    runtime.readiness_checks["projection"] = projection.caught_up

    app = create_http_app(
        runtime=runtime,
        max_body_bytes=settings.max_body_bytes,
        title="Points platform — trigger gateway",
        description="The developer-facing API: trigger earning and redemption, poll outcomes.",
        version="1",
        security=Security(
            schemes={
                "partnerOAuth": partner_oauth(settings.token_issuer_url.rstrip("/") + TOKEN_PATH),
                "consoleBearer": CONSOLE_BEARER,
            },
            # Triggers and their status are for API clients; activity, for business users.
            requirement=lambda _, path: (
                [{"consoleBearer": []}]
                if path.endswith("/activity")
                else [{"partnerOAuth": ["points:trigger"]}]
            ),
        ),
    )
    tally = ActivityTally()
    flusher = ActivityFlusher(tally, lambda: runtime.pool, interval=settings.activity_flush_seconds)
    runtime.on_start(flusher.start)
    runtime.on_stop(flusher.stop)
    app.state.trigger = TriggerContext(
        runtime=runtime,
        settings=settings,
        verifier=verifier,
        gateway=Gateway.on_database(
            lambda: runtime.pool, settings, committed=runtime.outbox_committed, tally=tally
        ),
        results_consumed=ResultsConsumed(
            progress, subscribers.RESULTS_GROUP, timeout=settings.status_catch_up_seconds
        ),
    )
    app.include_router(router)
    serve_directly(app, "POST", TRIGGER_PATH, serve_trigger)
    return app, runtime


#: For ``uvicorn --factory services.trigger.app:asgi_app``.
asgi_app = app_only(create_app)

"""Builds the ledger process: broker, runtime (database, outbox relay) and HTTP app."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI
from faststream.kafka import KafkaBroker

from contracts import POINTS_RESULTS, PointsResultEvent
from infra.broker import create_broker
from infra.health import health_router
from infra.http import create_http_app
from infra.runtime import ServiceRuntime
from infra.tokens import JwksVerifier
from services.ledger.api import router as members_router
from services.ledger.api import rules_router, transactions_router
from services.ledger.settings import LedgerSettings
from services.ledger.subscribers import register_subscribers

MIGRATIONS = Path(__file__).parent / "migrations"

#: What this service publishes, through its outbox (for the AsyncAPI document).
PUBLISHES = (
    (
        POINTS_RESULTS,
        PointsResultEvent,
        "Applied (with the balance after) or rejected requests, and reversals of applied ones.",
    ),
)


@dataclass(frozen=True)
class Ledger:
    """One ledger process: ``runtime.start()`` it, serve ``app``, ``runtime.stop()`` it."""

    settings: LedgerSettings
    broker: KafkaBroker
    runtime: ServiceRuntime
    verifier: JwksVerifier
    app: FastAPI


def create_ledger(
    settings: LedgerSettings | None = None,
    *,
    verifier: JwksVerifier | None = None,
    consume: bool = True,
) -> Ledger:
    """Wire the ledger; ``verifier`` defaults to the issuer's JWKS at ``token_issuer_url``.

    With ``consume=False`` the process only serves reads: no Kafka consumer and
    no outbox relay, so it needs nothing but PostgreSQL.
    """
    settings = settings or LedgerSettings()
    broker = create_broker(settings)
    runtime = ServiceRuntime(
        settings,
        schema="ledger",
        migrations=MIGRATIONS,
        broker=broker if consume else None,
        relay=consume,
    )
    if consume:
        register_subscribers(runtime, settings)
    else:
        del runtime.readiness_checks["broker"]
    verifier = verifier or JwksVerifier(settings.token_issuer_url)
    runtime.on_stop(verifier.aclose)
    app = create_http_app(
        runtime.metrics,
        max_body_bytes=settings.max_body_bytes,
        title="Points ledger",
        description="Double-entry points ledger: member balances and transaction history, "
        "per-rule totals and operator reversals.",
    )
    app.state.runtime = runtime
    app.state.verifier = verifier
    app.include_router(health_router(runtime))
    app.include_router(members_router)
    app.include_router(rules_router)
    app.include_router(transactions_router)
    return Ledger(settings, broker, runtime, verifier, app)


def create_app(
    settings: LedgerSettings | None = None, verifier: JwksVerifier | None = None
) -> tuple[FastAPI, ServiceRuntime]:
    """The ledger's HTTP app and runtime, the pair ``infra.serving.serve`` runs."""
    ledger = create_ledger(settings, verifier=verifier)
    return ledger.app, ledger.runtime

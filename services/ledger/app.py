"""Builds the ledger process: broker, runtime (database, outbox relay) and HTTP app."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from contracts import POINTS_RESULTS, PointsResultEvent
from infra.broker import create_broker
from infra.http import create_http_app
from infra.openapi import CONSOLE_BEARER, Security, partner_oauth
from infra.runtime import ServiceRuntime
from infra.serving import app_only
from infra.tokens import TOKEN_PATH, JwksVerifier
from services.ledger import api
from services.ledger.api import LedgerContext
from services.ledger.expiry import ExpiryProcess
from services.ledger.settings import LedgerSettings
from services.ledger.subscribers import register_subscribers

MIGRATIONS = Path(__file__).parent / "migrations"

#: What this service publishes, through its outbox (for the AsyncAPI document).
PUBLISHES = (
    (
        POINTS_RESULTS,
        PointsResultEvent,
        "Applied (with the balance after) or rejected requests, reversals of applied ones, "
        "and what was left of earns' points when their expiry passed.",
    ),
)


def create_app(
    settings: LedgerSettings | None = None,
    *,
    verifier: JwksVerifier | None = None,
    consume: bool = True,
) -> tuple[FastAPI, ServiceRuntime]:
    """The ledger's HTTP app and runtime; ``verifier`` defaults to the issuer's JWKS at
    ``token_issuer_url``.

    With ``consume=False`` the process only serves reads: no Kafka consumer and
    no outbox relay, so it needs nothing but PostgreSQL.
    """
    settings = settings or LedgerSettings()
    runtime = ServiceRuntime(
        settings,
        schema="ledger",
        migrations=MIGRATIONS,
        broker=create_broker(settings) if consume else None,
        relay=consume,
    )
    if consume:
        register_subscribers(runtime, settings)
        expiry = ExpiryProcess(
            lambda: runtime.pool,
            interval=settings.expiry_interval_seconds,
            chunk=settings.expiry_chunk,
        )
        runtime.on_start(expiry.start)
        runtime.on_stop(expiry.stop)
    else:
        del runtime.readiness_checks["broker"]
    verifier = verifier or JwksVerifier(settings.token_issuer_url)
    runtime.on_stop(verifier.aclose)
    app = create_http_app(
        runtime=runtime,
        max_body_bytes=settings.max_body_bytes,
        title="Points ledger",
        description="Double-entry points ledger: member balances and transaction history, "
        "per-rule totals and operator reversals.",
        security=Security(
            schemes={
                "partnerOAuth": partner_oauth(settings.token_issuer_url.rstrip("/") + TOKEN_PATH),
                "consoleBearer": CONSOLE_BEARER,
            },
            # Members' balances and history are read by API clients and business users;
            # rule totals, rule history and reversals are for business users only.
            requirement=lambda _, path: (
                [{"partnerOAuth": ["points:read"]}, {"consoleBearer": []}]
                if path.startswith("/v1/members/")
                else [{"consoleBearer": []}]
            ),
        ),
    )
    app.state.ledger = LedgerContext(settings=settings, runtime=runtime, verifier=verifier)
    app.include_router(api.router)
    return app, runtime


#: For ``uvicorn --factory services.ledger.app:asgi_app``.
asgi_app = app_only(create_app)

"""Builds the rules service: its runtime, HTTP app and token issuer."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from contracts import (
    CLIENTS_LIFECYCLE,
    INVITATIONS_REQUESTED,
    MEMBERS_LIFECYCLE,
    NOTIFICATIONS_REQUESTED,
    RULES_LIFECYCLE,
    USERS_LIFECYCLE,
    ClientLifecycleEvent,
    InvitationEmailRequestedEvent,
    MemberLifecycleEvent,
    RuleLifecycleEvent,
    ShareEmailRequestedEvent,
    UserLifecycleEvent,
)
from infra.broker import create_broker
from infra.catchup import GroupProgress
from infra.http import create_http_app
from infra.openapi import CONSOLE_BEARER, Security
from infra.retention import Purge
from infra.runtime import ServiceRuntime
from infra.serving import app_only
from services.rules import console, sessions, sign_in_repository
from services.rules.api import (
    RulesContext,
    accounts,
    activity,
    clients,
    guide,
    members,
    oauth,
    rules,
    team,
)
from services.rules.propagation import Propagation
from services.rules.readers import LedgerReader, NotifierClient
from services.rules.settings import RulesSettings
from services.rules.subscribers import register_subscribers
from services.rules.tokens import TokenIssuer

MIGRATIONS = Path(__file__).parent / "migrations"

#: What this service publishes, through its outbox (for the AsyncAPI document).
PUBLISHES = (
    (RULES_LIFECYCLE, RuleLifecycleEvent, "Full rule snapshot on every change of a rule."),
    (CLIENTS_LIFECYCLE, ClientLifecycleEvent, "API client registered, revoked or rotated."),
    (MEMBERS_LIFECYCLE, MemberLifecycleEvent, "A business user blocked or unblocked a member."),
    (
        NOTIFICATIONS_REQUESTED,
        ShareEmailRequestedEvent,
        "A business user asked for a rule's integration details to be e-mailed.",
    ),
    (
        USERS_LIFECYCLE,
        UserLifecycleEvent,
        "A business user joined, changed role or was removed.",
    ),
    (
        INVITATIONS_REQUESTED,
        InvitationEmailRequestedEvent,
        "An admin invited someone to the console (the link's token sealed).",
    ),
)


def create_app(settings: RulesSettings | None = None) -> tuple[FastAPI, ServiceRuntime]:
    """The rules service's HTTP app (console, API and token issuer) and runtime."""
    settings = settings or RulesSettings()
    runtime = ServiceRuntime(
        settings, schema="rules", migrations=MIGRATIONS, broker=create_broker(settings)
    )
    register_subscribers(runtime)
    runtime.retention.add(
        Purge("console_sessions", sign_in_repository.PURGE_EXPIRED_CONSOLE_SESSIONS),
        Purge(
            "sign_in_attempts",
            sign_in_repository.PURGE_IDLE_SIGN_IN_ATTEMPTS,
            (float(settings.login_throttle_window_seconds),),
        ),
    )
    issuer = TokenIssuer.for_settings(settings)

    async def ensure_signing_key() -> None:
        await runtime.in_transaction(issuer.ensure_signing_key)

    runtime.on_start(ensure_signing_key)
    app = create_http_app(
        runtime=runtime,
        max_body_bytes=settings.max_body_bytes,
        title="Points platform — rules service",
        description="Business console API, API clients and the OAuth2 token issuer.",
        version="1",
        security=Security(
            schemes={
                "consoleBearer": CONSOLE_BEARER,
                "consoleSession": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": sessions.COOKIE_NAME,
                    "description": "The console's session cookie; a change made with it "
                    f"also needs the session's `{sessions.CSRF_HEADER}` header.",
                },
            },
            requirement=[{"consoleBearer": []}, {"consoleSession": []}],
            # Signing in, and accepting an invitation (its token is the proof), need none.
            needs=lambda _, path: (
                path.startswith("/v1/") and not path.startswith(("/v1/auth/", "/v1/invitations/"))
            ),
            # A change made with the cookie needs the session's CSRF token.
            refusals=lambda method: {} if method == "GET" else {403: ["CSRF_TOKEN_INVALID"]},
        ),
    )
    progress = GroupProgress(settings)
    runtime.on_stop(progress.stop)
    propagation = Propagation(
        lambda: runtime.pool, progress, timeout=settings.propagation_timeout_seconds
    )
    app.state.rules = RulesContext(
        settings=settings, runtime=runtime, issuer=issuer, propagation=propagation
    )
    for area in (oauth, accounts, clients, rules, members, team, activity, guide):
        app.include_router(area.router)
    ledger = LedgerReader(settings, issuer)
    runtime.on_stop(ledger.aclose)
    notifier = NotifierClient(settings, issuer)
    runtime.on_stop(notifier.aclose)
    console.install(app, ledger, notifier)
    return app, runtime


#: For ``uvicorn --factory services.rules.app:asgi_app``.
asgi_app = app_only(create_app)

"""The business console: server-rendered page shells under ``/console``.

Each page is a small HTML document rendered here with what the server knows
(who is signed in, their role, the organisation's timezone, a CSRF token);
its script, served from ``static/console/``, then calls the same ``/v1`` JSON
API as any other client, riding on the cookie session. Editing controls are
left out of the HTML for viewers, and the API refuses them anyway.

The ledger and the notifier are other services, so balances and transactions,
and the callback log, come through a same-origin proxy here (``/console/api/...``)
that calls them over HTTP with a short-lived token minted for the signed-in user:
the browser never holds a bearer token.
"""

from __future__ import annotations

from dataclasses import dataclass
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlencode

import httpx
import jinja2
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi import Path as PathParameter
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from contracts.text import Text
from infra.dev.smtp_sink import list_messages
from infra.logging import get_logger
from infra.problems import Problem
from infra.storable import BIGINT_MAX
from services.rules import accounts, rules, sessions
from services.rules.api import (
    Context,
    RulesContext,
    Tx,
    User,
    console_session,
    require_csrf_token,
)
from services.rules.readers import LedgerReader, NotifierClient, Params, UpstreamClient

log = get_logger(__name__)

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
PREFIX = "/console"
#: How many received messages the development mail page shows, newest first.
MAIL_PAGE_SIZE = 50

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)

#: Pages load scripts, styles and data from this service only, and nothing inline.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}

Environment = Literal["staging", "production"]
EnvironmentQuery = Annotated[Environment, Query(description="`staging` or `production`.")]

router = APIRouter(prefix=PREFIX, include_in_schema=False)


def install(app: FastAPI, ledger: LedgerReader, notifier: NotifierClient) -> None:
    """Serve the console's pages, its proxy (reading through ``ledger``, and the callback
    log through ``notifier``) and its static files from ``app``."""
    app.state.console_ledger = ledger
    app.state.console_notifier = notifier
    app.include_router(router)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=STATIC), name="console-static")


@dataclass(frozen=True)
class Viewer:
    """Who a page is rendered for."""

    session: sessions.ConsoleSession
    organisation_name: str
    timezone: str

    @property
    def can_edit(self) -> bool:
        return self.session.role != "viewer"

    @property
    def is_admin(self) -> bool:
        return self.session.role == "admin"


async def _viewer(request: Request, ctx: RulesContext) -> Viewer | None:
    session_id = request.cookies.get(sessions.COOKIE_NAME)
    if not session_id:
        return None
    async with ctx.pool.acquire() as connection:
        session = await sessions.find_session(connection, session_id)
        if session is None:
            return None
        organisation = await accounts.require_organisation(connection, session.org_id)
    return Viewer(session, organisation["name"], organisation["timezone"])


def _render(template: str, status: int = 200, **values: Any) -> HTMLResponse:
    page = _templates.get_template(f"console/{template}").render(**values)
    return HTMLResponse(page, status_code=status, headers=PAGE_HEADERS)


def _to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"{PREFIX}/login?{urlencode({'next': target})}", status_code=303)


async def _page(
    request: Request, ctx: RulesContext, template: str, page: str, **values: Any
) -> Response:
    """A signed-in page, or the way to the login page."""
    viewer = await _viewer(request, ctx)
    if viewer is None:
        return _to_login(request)
    return _render(
        template,
        page=page,
        viewer=viewer,
        csrf_token=viewer.session.csrf_token(),
        development=ctx.settings.is_development,
        **values,
    )


# --- pages -------------------------------------------------------------------


@router.get("")
async def console_home() -> RedirectResponse:
    return RedirectResponse(f"{PREFIX}/rules", status_code=303)


@router.get("/login")
async def login_page(
    request: Request, ctx: Context, next: Text = "", joined: Text = ""
) -> Response:
    if await _viewer(request, ctx) is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    return _render("login.html", page="login", next=_safe_next(next), joined=bool(joined))


def _safe_next(target: str) -> str:
    """Where to go after signing in: a console page of this service, never another site."""
    if target.startswith(f"{PREFIX}/") and not target.startswith("//") and "\\" not in target:
        return target
    return f"{PREFIX}/rules"


@router.get("/rules")
async def rules_page(
    request: Request, ctx: Context, environment: Environment = "staging"
) -> Response:
    return await _page(request, ctx, "rules.html", "rules", environment=environment)


@router.get("/overview")
async def overview_page(
    request: Request, ctx: Context, environment: Environment = "staging"
) -> Response:
    return await _page(request, ctx, "overview.html", "overview", environment=environment)


@router.get("/rules/new")
async def new_rule_page(
    request: Request, ctx: Context, environment: Environment = "staging"
) -> Response:
    return await _page(request, ctx, "rule_form.html", "rules", environment=environment, rule_id="")


@router.get("/rules/{rule_id}/edit")
async def edit_rule_page(request: Request, ctx: Context, rule_id: Text) -> Response:
    return await _page(request, ctx, "rule_form.html", "rules", environment="", rule_id=rule_id)


@router.get("/rules/{rule_id}")
async def rule_page(request: Request, ctx: Context, rule_id: Text) -> Response:
    return await _page(request, ctx, "rule_detail.html", "rules", rule_id=rule_id)


@router.get("/clients")
async def clients_page(
    request: Request, ctx: Context, environment: Environment = "staging"
) -> Response:
    """API clients: every role sees the list; admins create, rotate, revoke and limit them."""
    return await _page(request, ctx, "clients.html", "clients", environment=environment)


@router.get("/members")
async def members_page(request: Request, ctx: Context) -> Response:
    return await _page(request, ctx, "members.html", "members")


@router.get("/callbacks")
async def callbacks_page(request: Request, ctx: Context) -> Response:
    """The callback log: the organisation's callbacks, and replaying parked ones."""
    return await _page(request, ctx, "callbacks.html", "callbacks")


@router.get("/team")
async def team_page(request: Request, ctx: Context) -> Response:
    """Who is in the organisation; admins invite, change roles and remove users."""
    hours = ctx.settings.invitation_lifetime_hours
    return await _page(request, ctx, "team.html", "team", invitation_hours=f"{hours:g}")


@router.get("/invitations/{token}")
async def invitation_page(token: Text) -> Response:
    """Where an invitation's link leads: the invitee sets a password (no session needed).
    The token stays in the address; the page's script sends it to accept, and nothing
    here reads, stores or logs it."""
    del token
    return _render("invitation.html", page="invitation")


@dataclass(frozen=True)
class ReceivedMail:
    name: str
    subject: str
    sender: str
    recipients: str
    date: str
    body: str


def read_mail(path: Path) -> ReceivedMail:
    """One message the local SMTP sink stored, as text to show (the page escapes it)."""
    message = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
    part = message.get_body(preferencelist=("plain", "html"))
    body = part.get_content() if part is not None else ""
    return ReceivedMail(
        name=path.name,
        subject=str(message.get("Subject", "")),
        sender=str(message.get("From", "")),
        recipients=str(message.get("To", "")),
        date=str(message.get("Date", "")),
        body=str(body),
    )


@router.get("/emails")
async def emails_page(request: Request, ctx: Context) -> Response:
    """Development only: the messages the local SMTP sink received."""
    if not ctx.settings.is_development:
        raise Problem("the mail page exists in development mode only", status=404, code="NOT_FOUND")
    # The directory comes from settings alone; nothing in the request names a file.
    mails = [read_mail(path) for path in list_messages(ctx.settings.mail_dir)[:MAIL_PAGE_SIZE]]
    return await _page(
        request, ctx, "emails.html", "emails", mails=mails, mail_dir=str(ctx.settings.mail_dir)
    )


# --- JSON reads the pages need beyond /v1 ------------------------------------------


@router.get("/api/rules/{rule_id}/activation-problems")
async def activation_problems(rule_id: Text, user: User, tx: Tx) -> dict[str, Any]:
    """Every problem that would stop the rule being activated now (empty when none)."""
    rule = await rules.get_rule(tx, user.org_id, rule_id)
    return {"problems": await rules.blocking_problems(tx, rule)}


#: The ledger reads the pages make, as ``/console/api/{collection}/{id}/{read}``, with the
#: page size each asks for.
LEDGER_READS: dict[tuple[str, str], Params] = {
    ("members", "balance"): {},
    ("members", "transactions"): {"limit": 20},
    ("rules", "transactions"): {"limit": 10},
    ("rules", "totals"): {},
}


@router.get("/api/{collection}/{subject_id}/{read}")
async def ledger_read(
    collection: Literal["members", "rules"],
    subject_id: Text,
    read: Literal["balance", "transactions", "totals"],
    environment: EnvironmentQuery,
    request: Request,
    ctx: Context,
    ledger: Ledger,
) -> Response:
    """A member's balance or transactions, or a rule's transactions or totals, from the
    ledger, for the signed-in user's organisation."""
    params = LEDGER_READS.get((collection, read))
    if params is None:
        raise Problem(f"no {read} read for {collection}", status=404, code="NOT_FOUND")
    path = f"/v1/{collection}/{quote(subject_id, safe='')}/{read}"
    return await _from_ledger(request, ctx, ledger, path, {"environment": environment, **params})


#: Callbacks the callback page shows at a time.
CALLBACK_PAGE_SIZE = 25
StatusQuery = Literal["pending", "delivered", "parked", "failed"]


@router.get("/api/deliveries")
async def callback_log(
    request: Request,
    ctx: Context,
    notifier: Notifier,
    client_id: Annotated[Text | None, Query(alias="clientId", max_length=200)] = None,
    status: StatusQuery | None = None,
    cursor: Annotated[Text | None, Query(max_length=40)] = None,
) -> Response:
    """The organisation's callbacks from the notifier, newest first, a page at a time."""
    session = await console_session(request, ctx)
    params = {"clientId": client_id, "status": status, "cursor": cursor}
    params = {name: value for name, value in params.items() if value is not None}
    return await _relay(
        ctx, session, notifier, "GET", "/v1/deliveries", {"limit": CALLBACK_PAGE_SIZE, **params}
    )


@router.post("/api/deliveries/{delivery_id}/replay")
async def replay_callback(
    delivery_id: Annotated[int, PathParameter(ge=1, le=BIGINT_MAX)],
    request: Request,
    ctx: Context,
    notifier: Notifier,
) -> Response:
    """Send a parked callback again (admins and editors; a change, so it needs the
    session's CSRF token)."""
    session = await console_session(request, ctx)
    require_csrf_token(request, session)
    return await _relay(ctx, session, notifier, "POST", f"/v1/deliveries/{delivery_id}/replay", {})


async def ledger_reader(request: Request) -> LedgerReader:
    reader: LedgerReader = request.app.state.console_ledger
    return reader


async def notifier_client(request: Request) -> NotifierClient:
    client: NotifierClient = request.app.state.console_notifier
    return client


Ledger = Annotated[LedgerReader, Depends(ledger_reader)]
Notifier = Annotated[NotifierClient, Depends(notifier_client)]


async def _from_ledger(
    request: Request, ctx: RulesContext, ledger: LedgerReader, path: str, params: Params
) -> Response:
    """The ledger's answer to ``GET path`` for the signed-in user, passed through as is."""
    session = await console_session(request, ctx)
    return await _relay(ctx, session, ledger, "GET", path, params)


async def _relay(
    ctx: RulesContext,
    session: sessions.ConsoleSession,
    upstream: UpstreamClient,
    method: Literal["GET", "POST"],
    path: str,
    params: Params,
) -> Response:
    """``upstream``'s answer to ``method path`` for the session's user, passed through as
    is; a 503 problem when it cannot be reached."""
    try:
        answer = await upstream.call(ctx.pool, session, method, path, params)
    except httpx.HTTPError as error:
        log.warning(f"console.{upstream.service}_unreachable", error=type(error).__name__)
        raise Problem(
            f"the {upstream.service} cannot be reached right now; try again shortly",
            status=503,
            code=upstream.unavailable_code,
            headers={"Retry-After": "5"},
        ) from error
    return Response(
        answer.content,
        status_code=answer.status_code,
        media_type=answer.headers.get("content-type", "application/json"),
        headers={"Cache-Control": "no-store"},
    )

"""Business users' routes for rules: their lifecycle, sharing them with developers, and
the organisation's audit history."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from contracts.text import Text
from infra.logging import get_logger
from infra.openapi import RETRY_AFTER, problems
from infra.storable import BIGINT_MAX, StorableDatetime
from services.rules import audit, rules, sharing
from services.rules.api import BusinessUser, Context, CorrelationId, Tx, User
from services.rules.schemas import (
    AuditPage,
    RuleCreate,
    RuleList,
    RuleUpdate,
    RuleView,
    ShareEmailAccepted,
    ShareEmailRequest,
    ShareInfo,
    StatusChange,
)

log = get_logger(__name__)

router = APIRouter()

#: What checking a rule's fields refuses (services.rules.rules._check_draft and the rest).
DRAFT_PROBLEMS = [
    "INVALID_PERIOD",
    "INVALID_AUTHORIZED_CLIENTS",
    "EXPIRY_POLICY_CONFLICT",
    "EXPIRY_ON_REDEEM_RULE",
    "EXPIRY_BEFORE_RULE_ENDS",
]
CHANGE_CONFLICTS = ["STALE_VERSION", "RULE_ARCHIVED"]
READ_ONLY = {403: ["READ_ONLY_ROLE"]}
NOT_FOUND = {404: ["RULE_NOT_FOUND"]}
#: What changing a rule's status refuses (activating, also a rule not ready: 422); an
#: archived rule is RULE_ARCHIVED, and archiving takes any other status.
ARCHIVE_PROBLEMS = {**READ_ONLY, **NOT_FOUND, 409: CHANGE_CONFLICTS}
TRANSITION_PROBLEMS = {**ARCHIVE_PROBLEMS, 409: [*CHANGE_CONFLICTS, "INVALID_TRANSITION"]}


@router.post(
    "/v1/rules",
    status_code=201,
    response_model=RuleView,
    tags=["rules"],
    responses=problems({400: DRAFT_PROBLEMS, **READ_ONLY}),
)
async def create_rule(body: RuleCreate, user: User, tx: Tx, cid: CorrelationId) -> RuleView:
    """Create a rule as a draft."""
    user.require_editor()
    draft = rules.RuleDraft(
        **body.model_dump(exclude={"authorized_client_ids"}),
        authorized_client_ids=tuple(body.authorized_client_ids),
    )
    return RuleView.of(await rules.create_rule(tx, user.org_id, user.id, draft, cid))


@router.get("/v1/rules", response_model=RuleList, tags=["rules"])
async def list_rules(user: User, tx: Tx, environment: Text | None = None) -> dict[str, Any]:
    """The organisation's rules, newest first."""
    found = await rules.list_rules(tx, user.org_id, environment)
    return {"items": [RuleView.of(rule).model_dump(by_alias=True, mode="json") for rule in found]}


@router.get(
    "/v1/rules/{rule_id}", response_model=RuleView, tags=["rules"], responses=problems(NOT_FOUND)
)
async def get_rule(rule_id: Text, user: User, tx: Tx) -> RuleView:
    """One rule."""
    return RuleView.of(await rules.get_rule(tx, user.org_id, rule_id))


@router.patch(
    "/v1/rules/{rule_id}",
    response_model=RuleView,
    tags=["rules"],
    responses=problems(
        {
            400: [*DRAFT_PROBLEMS, "EXPIRY_IN_PAST"],
            **READ_ONLY,
            **NOT_FOUND,
            409: [*CHANGE_CONFLICTS, "RULE_IMMUTABLE", "CAP_BELOW_USAGE"],
        }
    ),
)
async def update_rule(
    rule_id: Text, body: RuleUpdate, user: User, tx: Tx, cid: CorrelationId
) -> RuleView:
    """Change a rule; 409 when ``version`` is not the rule's current version."""
    user.require_editor()
    rule = await rules.update_rule(
        tx, user.org_id, user.id, rule_id, body.version, body.changes(), cid
    )
    return RuleView.of(rule)


async def _transition(
    action: str, rule_id: str, body: StatusChange | None, user: BusinessUser, tx: Any, cid: str
) -> RuleView:
    user.require_editor()
    version = body.version if body else None
    rule = await rules.change_status(tx, user.org_id, user.id, rule_id, action, cid, version)
    return RuleView.of(rule)


@router.post(
    "/v1/rules/{rule_id}/activate",
    response_model=RuleView,
    tags=["rules"],
    responses=problems(TRANSITION_PROBLEMS | {422: ["ACTIVATION_BLOCKED"]}),
)
async def activate_rule(
    rule_id: Text, user: User, tx: Tx, cid: CorrelationId, body: StatusChange | None = None
) -> RuleView:
    """Activate a draft or paused rule; refused with the reasons when it is not ready."""
    return await _transition("activate", rule_id, body, user, tx, cid)


@router.post(
    "/v1/rules/{rule_id}/pause",
    response_model=RuleView,
    tags=["rules"],
    responses=problems(TRANSITION_PROBLEMS),
)
async def pause_rule(
    rule_id: Text, user: User, tx: Tx, cid: CorrelationId, body: StatusChange | None = None
) -> RuleView:
    """Stop an active rule from accepting triggers."""
    return await _transition("pause", rule_id, body, user, tx, cid)


@router.post(
    "/v1/rules/{rule_id}/archive",
    response_model=RuleView,
    tags=["rules"],
    responses=problems(ARCHIVE_PROBLEMS),
)
async def archive_rule(
    rule_id: Text, user: User, tx: Tx, cid: CorrelationId, body: StatusChange | None = None
) -> RuleView:
    """Retire a rule for good."""
    return await _transition("archive", rule_id, body, user, tx, cid)


@router.post(
    "/v1/rules/{rule_id}/promote",
    status_code=201,
    response_model=RuleView,
    tags=["rules"],
    responses=problems({**READ_ONLY, **NOT_FOUND, 409: ["ALREADY_PRODUCTION", "RULE_ARCHIVED"]}),
)
async def promote_rule(rule_id: Text, user: User, tx: Tx, cid: CorrelationId) -> RuleView:
    """Copy a staging rule into a production draft; its production clients are chosen next."""
    user.require_editor()
    return RuleView.of(await rules.promote_rule(tx, user.org_id, user.id, rule_id, cid))


@router.get(
    "/v1/rules/{rule_id}/share",
    response_model=ShareInfo,
    tags=["rules"],
    responses=problems({**NOT_FOUND, 409: ["RULE_NOT_ACTIVE"]}),
)
async def share_rule(rule_id: Text, user: User, tx: Tx, ctx: Context) -> ShareInfo:
    """What a business user sends a third-party developer about an active rule."""
    return ShareInfo.of(await sharing.share_details(tx, user.org_id, rule_id, ctx.settings))


@router.post(
    "/v1/rules/{rule_id}/share/email",
    status_code=202,
    response_model=ShareEmailAccepted,
    tags=["rules"],
    responses=problems(
        {**READ_ONLY, **NOT_FOUND, 409: ["RULE_NOT_ACTIVE"], 429: ["SHARE_EMAIL_LIMIT"]},
        headers={429: RETRY_AFTER},
    ),
)
async def email_rule(
    rule_id: Text, body: ShareEmailRequest, user: User, tx: Tx, ctx: Context, cid: CorrelationId
) -> ShareEmailAccepted:
    """E-mail an active rule's share information to developers; the notifier sends it.
    An organisation may send to a limited number of addresses a day (429
    ``SHARE_EMAIL_LIMIT`` past it, with ``Retry-After``); every send is audited."""
    user.require_editor()
    notification_id = await sharing.request_share_email(
        tx, user.org_id, user.id, rule_id, body.recipients(), ctx.settings, cid
    )
    log.info("rule.share_email.requested", rule_id=rule_id, notification_id=str(notification_id))
    return ShareEmailAccepted(notification_id=str(notification_id))


@router.get(
    "/v1/audit",
    response_model=AuditPage,
    tags=["audit"],
    responses=problems({400: ["INVALID_PERIOD"]}),
)
async def audit_log(
    user: User,
    tx: Tx,
    rule_id: Annotated[Text | None, Query(alias="ruleId", max_length=100)] = None,
    actor: Annotated[Text | None, Query(max_length=100)] = None,
    since: Annotated[
        StorableDatetime | None, Query(description="From this time (ISO 8601).")
    ] = None,
    until: Annotated[
        StorableDatetime | None, Query(description="Before this time (ISO 8601).")
    ] = None,
    before: Annotated[
        int | None, Query(ge=1, le=BIGINT_MAX, description="Lines older than this id.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> dict[str, Any]:
    """The organisation's audit history, newest first, filtered by rule, actor and time."""
    where = audit.AuditFilter(rule_id, actor, since, until, before)
    rows = await audit.list_audit(tx, user.org_id, where, limit)
    items = [
        {
            "id": row["id"],
            "actor": row["actor"],
            "actorEmail": row["actor_email"],
            "action": row["action"],
            "subjectId": row["subject_id"],
            "details": row["details"],
            "at": row["at"].isoformat(),
        }
        for row in rows
    ]
    return {"items": items, "nextBefore": items[-1]["id"] if len(items) == limit else None}

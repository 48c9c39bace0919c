"""Rules: drafts, changes and status transitions, promotion to production, and the
points each rule has moved (its cap cannot be lowered below them). Every change is
audited and published as a full snapshot on the rule lifecycle topic."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from pydantic.alias_generators import to_camel

from contracts import POINTS_RESULTS, PointsResultEvent, RuleLifecycleEvent, RuleSnapshot
from infra import inbox, outbox
from infra.logging import get_logger
from infra.problems import Problem
from services.rules import repository
from services.rules.audit import audit
from services.rules.records import ENVIRONMENTS, Conflict, NotFound, new_id, now

log = get_logger(__name__)


class ActivationBlocked(Problem):
    status = 422
    code = "ACTIVATION_BLOCKED"

    def __init__(self, problems: list[dict[str, str]]) -> None:
        super().__init__("; ".join(problem["detail"] for problem in problems), problems=problems)


@dataclass(frozen=True)
class RuleDraft:
    """What a business user sets on a rule."""

    name: str
    type: str
    environment: str
    description: str = ""
    api_trigger: bool = False
    authorized_client_ids: tuple[str, ...] = ()
    cap_max: int | None = None
    cap_per_member: int | None = None
    max_amount_per_request: int | None = None
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    points_expire_after_days: int | None = None
    points_expire_at: datetime | None = None

    def columns(self) -> repository.RuleColumns:
        """The draft as stored: each authorised client once, in the order given."""
        return repository.RuleColumns(
            name=self.name,
            description=self.description,
            type=self.type,
            api_trigger=self.api_trigger,
            authorized_client_ids=list(dict.fromkeys(self.authorized_client_ids)),
            cap_max=self.cap_max,
            cap_per_member=self.cap_per_member,
            max_amount_per_request=self.max_amount_per_request,
            starts_at=self.starts_at,
            ends_at=self.ends_at,
            points_expire_after_days=self.points_expire_after_days,
            points_expire_at=self.points_expire_at,
        )


def rule_snapshot(rule: asyncpg.Record) -> RuleSnapshot:
    return RuleSnapshot(
        rule_id=rule["id"],
        org_id=rule["org_id"],
        environment=rule["environment"],
        name=rule["name"],
        description=rule["description"],
        type=rule["type"],
        status=rule["status"],
        api_trigger=rule["api_trigger"],
        authorized_client_ids=tuple(rule["authorized_client_ids"]),
        cap_max=rule["cap_max"],
        cap_per_member=rule["cap_per_member"],
        max_amount_per_request=rule["max_amount_per_request"],
        starts_at=rule["starts_at"],
        ends_at=rule["ends_at"],
        points_expire_after_days=rule["points_expire_after_days"],
        points_expire_at=rule["points_expire_at"],
        version=rule["version"],
        updated_at=rule["updated_at"],
    )


def display_status(rule: asyncpg.Record, at: datetime | None = None) -> str:
    """The status a business user sees: ``scheduled`` and ``ended`` come from the dates."""
    moment = at or now()
    if rule["status"] == "active":
        if rule["starts_at"] and moment < rule["starts_at"]:
            return "scheduled"
        if rule["ends_at"] and moment >= rule["ends_at"]:
            return "ended"
    return str(rule["status"])


async def _publish_rule(
    connection: asyncpg.Connection, rule: asyncpg.Record, event_type: str, correlation_id: str
) -> None:
    event = RuleLifecycleEvent.new_event(
        data=rule_snapshot(rule),
        environment=rule["environment"],
        org_id=rule["org_id"],
        correlation_id=correlation_id,
        type=event_type,
    )
    await outbox.enqueue(connection, event)


async def _check_draft(connection: asyncpg.Connection, org_id: str, draft: RuleDraft) -> None:
    if draft.environment not in ENVIRONMENTS:
        raise Problem("environment must be staging or production", code="INVALID_ENVIRONMENT")
    if draft.type not in ("earn", "redeem"):
        raise Problem("type must be earn or redeem", code="INVALID_RULE_TYPE")
    dates = (
        ("startsAt", draft.starts_at),
        ("endsAt", draft.ends_at),
        ("pointsExpireAt", draft.points_expire_at),
    )
    for field, value in dates:
        if value is not None and value.tzinfo is None:
            raise Problem(f"{field} must carry a timezone offset", code="INVALID_DATE")
    if draft.starts_at and draft.ends_at and draft.ends_at <= draft.starts_at:
        raise Problem("endsAt must be after startsAt", code="INVALID_PERIOD")
    _check_expiry_policy(draft)
    wanted = sorted(set(draft.authorized_client_ids))
    found = await repository.active_client_ids(connection, org_id, draft.environment, wanted)
    unknown = [client_id for client_id in wanted if client_id not in found]
    if unknown:
        raise Problem(
            f"not active {draft.environment} clients of this organisation: {', '.join(unknown)}",
            code="INVALID_AUTHORIZED_CLIENTS",
        )


def _check_expiry_policy(draft: RuleDraft) -> None:
    """At most one expiry policy, on an earn rule, and a fixed instant after the rule's
    period: points awarded at the end of the period must not be born expired."""
    after_days, at = draft.points_expire_after_days, draft.points_expire_at
    if after_days is not None and at is not None:
        raise Problem(
            "set pointsExpireAfterDays or pointsExpireAt, not both",
            code="EXPIRY_POLICY_CONFLICT",
            field="pointsExpireAt",
        )
    if draft.type != "earn" and (after_days is not None or at is not None):
        field = "pointsExpireAt" if at is not None else "pointsExpireAfterDays"
        raise Problem(
            "only an earn rule's points can expire; a redeem rule has no expiry policy",
            code="EXPIRY_ON_REDEEM_RULE",
            field=field,
        )
    if at is None:
        return
    for name, limit in (("endsAt", draft.ends_at), ("startsAt", draft.starts_at)):
        if limit is not None and at <= limit:
            raise Problem(
                f"pointsExpireAt must be after the rule's {name}, or points it awards "
                "would expire as they are awarded",
                code="EXPIRY_BEFORE_RULE_ENDS",
                field="pointsExpireAt",
            )


async def create_rule(
    connection: asyncpg.Connection, org_id: str, actor: str, draft: RuleDraft, correlation_id: str
) -> asyncpg.Record:
    await _check_draft(connection, org_id, draft)
    rule = await repository.insert_rule(
        connection,
        rule_id=new_id("rul"),
        org_id=org_id,
        environment=draft.environment,
        columns=draft.columns(),
        promoted_from=None,
    )
    await audit(connection, org_id, actor, "rule.created", rule["id"], {"name": draft.name})
    await _publish_rule(connection, rule, "rule.created", correlation_id)
    return rule


async def get_rule(connection: asyncpg.Connection, org_id: str, rule_id: str) -> asyncpg.Record:
    rule = await repository.get_rule(connection, org_id, rule_id)
    if rule is None:
        raise NotFound(f"rule {rule_id} does not exist", code="RULE_NOT_FOUND")
    return rule


async def list_rules(
    connection: asyncpg.Connection, org_id: str, environment: str | None
) -> list[asyncpg.Record]:
    return await repository.list_rules(connection, org_id, environment)


async def _rule_for_change(
    connection: asyncpg.Connection, org_id: str, rule_id: str, expected_version: int | None
) -> asyncpg.Record:
    rule = await repository.get_rule_for_update(connection, org_id, rule_id)
    if rule is None:
        raise NotFound(f"rule {rule_id} does not exist", code="RULE_NOT_FOUND")
    if expected_version is not None and rule["version"] != expected_version:
        raise Conflict(
            f"rule {rule_id} is at version {rule['version']}, not {expected_version}; "
            "reload it and apply your change again",
            code="STALE_VERSION",
            currentVersion=rule["version"],
        )
    if rule["status"] == "archived":
        raise Conflict(f"rule {rule_id} is archived", code="RULE_ARCHIVED")
    return rule


async def update_rule(
    connection: asyncpg.Connection,
    org_id: str,
    actor: str,
    rule_id: str,
    expected_version: int,
    changes: dict[str, Any],
    correlation_id: str,
) -> asyncpg.Record:
    rule = await _rule_for_change(connection, org_id, rule_id, expected_version)
    current = {
        field: rule[field]
        for field in (
            "name",
            "type",
            "environment",
            "description",
            "api_trigger",
            "cap_max",
            "cap_per_member",
            "max_amount_per_request",
            "starts_at",
            "ends_at",
            "points_expire_after_days",
            "points_expire_at",
        )
    }
    current["authorized_client_ids"] = tuple(rule["authorized_client_ids"])
    merged = RuleDraft(**{**current, **changes})
    if rule["status"] != "draft":
        if merged.type != rule["type"] or merged.environment != rule["environment"]:
            raise Conflict(
                "type and environment cannot change after activation", code="RULE_IMMUTABLE"
            )
    elif merged.environment != rule["environment"]:
        raise Conflict("a rule's environment cannot change; promote it", code="RULE_IMMUTABLE")
    await _check_draft(connection, org_id, merged)
    if rule["status"] == "active" and merged.points_expire_at != rule["points_expire_at"]:
        _refuse_past_expiry(merged.points_expire_at)
    if changes.get("cap_max") is not None:
        await _check_cap_covers_usage(connection, rule_id, merged.cap_max)
    updated = await repository.update_rule(connection, org_id, rule_id, merged.columns())
    await audit(
        connection, org_id, actor, "rule.updated", rule_id, _change_details(current, merged)
    )
    await _publish_rule(connection, updated, "rule.updated", correlation_id)
    return updated


def _refuse_past_expiry(points_expire_at: datetime | None) -> None:
    """A rule that can be triggered must not award points that are already expired."""
    if points_expire_at is not None and points_expire_at <= now():
        raise Problem(
            "pointsExpireAt has passed; choose a later instant",
            code="EXPIRY_IN_PAST",
            field="pointsExpireAt",
        )


async def _check_cap_covers_usage(
    connection: asyncpg.Connection, rule_id: str, cap_max: int | None
) -> None:
    # FOR SHARE: a result counted meanwhile waits until this change commits.
    used = await repository.rule_usage_for_share(connection, rule_id)
    if cap_max is not None and cap_max < used:
        raise Conflict(
            f"capMax {cap_max} is below the {used} points this rule has already moved",
            code="CAP_BELOW_USAGE",
            field="capMax",
            capUsed=used,
        )


async def record_usage(connection: asyncpg.Connection, event: PointsResultEvent) -> bool:
    """:func:`record_usages` of one event; False when it was seen before."""
    return await record_usages(connection, [event]) == 1


async def record_usages(connection: asyncpg.Connection, events: Sequence[PointsResultEvent]) -> int:
    """Count applied results' points against their rules, each event once; how many
    events were new.

    Runs in the caller's transaction. Rejected results moved nothing and count
    for nothing; a reversal takes back from the count the points it moved back.
    Each rule's row is updated at most twice a batch (what was added, then what
    was given back), not once an event: every result touches the same few hot
    rows. Rules are updated in rule id order, so replicas counting batches at
    once never deadlock on the same rules.
    """
    fresh = await inbox.claim_new(connection, events, POINTS_RESULTS)
    added: Counter[str] = Counter()
    released: Counter[str] = Counter()
    for event in fresh:
        result = event.data
        if result.status == "applied":
            added[result.rule_id] += result.amount
        elif result.status == "reversed" and result.reversed_amount:
            released[result.rule_id] += result.reversed_amount
    for rule_id in sorted(added.keys() | released.keys()):
        if added[rule_id]:
            await repository.add_rule_usage(connection, rule_id, added[rule_id])
        if released[rule_id]:
            await repository.release_rule_usage(connection, rule_id, released[rule_id])
    return len(fresh)


def _json_safe(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple | list):
        return list(value)
    return value


def _change_details(current: dict[str, Any], merged: RuleDraft) -> dict[str, Any]:
    """The audit details of an update: each changed field's value before and after, camelCase."""
    before, after = {}, {}
    for field, old in current.items():
        new = getattr(merged, field)
        if field == "authorized_client_ids":
            new = tuple(dict.fromkeys(new))
        if new != old:
            before[to_camel(field)] = _json_safe(old)
            after[to_camel(field)] = _json_safe(new)
    return {"fields": sorted(after), "before": before, "after": after}


def activation_problems(
    rule: asyncpg.Record, client_statuses: dict[str, str], at: datetime | None = None
) -> list[dict[str, str]]:
    """Every reason a rule cannot be activated, each naming the field to fix.

    ``client_statuses`` maps the rule's authorised clients that still exist in its
    organisation and environment to their status.
    """
    problems = []
    if rule["api_trigger"] and not rule["authorized_client_ids"]:
        problems.append(
            {
                "field": "authorizedClientIds",
                "code": "NO_AUTHORIZED_CLIENT",
                "detail": "an API-triggered rule needs at least one authorised client",
            }
        )
    for client_id in rule["authorized_client_ids"]:
        status = client_statuses.get(client_id)
        if status != "active":
            problems.append(
                {
                    "field": "authorizedClientIds",
                    "code": "CLIENT_NOT_ACTIVE",
                    "clientId": client_id,
                    "detail": f"authorised client {client_id} is {status or 'no longer available'}",
                }
            )
    if rule["ends_at"] and rule["ends_at"] <= (at or now()):
        problems.append(
            {"field": "endsAt", "code": "END_IN_PAST", "detail": "the rule's end date has passed"}
        )
    if rule["points_expire_at"] and rule["points_expire_at"] <= (at or now()):
        problems.append(
            {
                "field": "pointsExpireAt",
                "code": "EXPIRY_IN_PAST",
                "detail": "the instant the rule's points expire has passed",
            }
        )
    return problems


async def blocking_problems(
    connection: asyncpg.Connection, rule: asyncpg.Record
) -> list[dict[str, str]]:
    """What would stop ``rule`` being activated now (the console shows it before asking)."""
    statuses = await repository.client_statuses(
        connection, rule["org_id"], rule["environment"], rule["authorized_client_ids"]
    )
    return activation_problems(rule, statuses)


async def _check_activation(connection: asyncpg.Connection, rule: asyncpg.Record) -> None:
    problems = await blocking_problems(connection, rule)
    if problems:
        raise ActivationBlocked(problems)


_TRANSITIONS = {
    "activate": ({"draft", "paused"}, "active", "rule.activated"),
    "pause": ({"active"}, "paused", "rule.paused"),
    "archive": ({"draft", "active", "paused"}, "archived", "rule.archived"),
}


async def change_status(
    connection: asyncpg.Connection,
    org_id: str,
    actor: str,
    rule_id: str,
    action: str,
    correlation_id: str,
    expected_version: int | None = None,
) -> asyncpg.Record:
    sources, target, event_type = _TRANSITIONS[action]
    rule = await _rule_for_change(connection, org_id, rule_id, expected_version)
    if rule["status"] not in sources:
        raise Conflict(f"a {rule['status']} rule cannot be {target}", code="INVALID_TRANSITION")
    if action == "activate":
        await _check_activation(connection, rule)
    updated = await repository.set_rule_status(connection, org_id, rule_id, target)
    details = {
        "from": rule["status"],
        "before": {"status": rule["status"]},
        "after": {"status": target},
    }
    await audit(connection, org_id, actor, event_type, rule_id, details)
    await _publish_rule(connection, updated, event_type, correlation_id)
    log.info(event_type, rule_id=rule_id, environment=updated["environment"], actor=actor)
    return updated


async def promote_rule(
    connection: asyncpg.Connection, org_id: str, actor: str, rule_id: str, correlation_id: str
) -> asyncpg.Record:
    """Copy a staging rule into a production draft that remembers its source.

    Clients are per environment, so the copy has none: production clients must be
    chosen before it can be activated. Everything else, the expiry policy included,
    is copied.
    """
    source = await _rule_for_change(connection, org_id, rule_id, None)
    if source["environment"] == "production":
        raise Conflict(f"rule {rule_id} is already a production rule", code="ALREADY_PRODUCTION")
    columns = repository.RuleColumns(
        name=source["name"],
        description=source["description"],
        type=source["type"],
        api_trigger=source["api_trigger"],
        authorized_client_ids=[],
        cap_max=source["cap_max"],
        cap_per_member=source["cap_per_member"],
        max_amount_per_request=source["max_amount_per_request"],
        starts_at=source["starts_at"],
        ends_at=source["ends_at"],
        points_expire_after_days=source["points_expire_after_days"],
        points_expire_at=source["points_expire_at"],
    )
    rule = await repository.insert_rule(
        connection,
        rule_id=new_id("rul"),
        org_id=org_id,
        environment="production",
        columns=columns,
        promoted_from=rule_id,
    )
    details = {"name": rule["name"], "promotedFrom": rule_id}
    await audit(connection, org_id, actor, "rule.promoted", rule["id"], details)
    await _publish_rule(connection, rule, "rule.created", correlation_id)
    return rule

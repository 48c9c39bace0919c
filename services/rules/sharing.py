"""Sharing an active rule with third-party developers: its share details, and e-mailing
them through the notifier."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from contracts import Environment, RuleType, ShareEmailRequested, ShareEmailRequestedEvent
from infra import outbox
from infra.problems import Problem
from services.rules import repository
from services.rules.audit import audit
from services.rules.records import Conflict
from services.rules.rules import get_rule
from services.rules.settings import RulesSettings


@dataclass(frozen=True)
class ShareDetails:
    """What a business user hands a third-party developer about a rule: no secrets."""

    rule_name: str
    rule_id: str
    rule_type: RuleType
    environment: Environment
    url_endpoint: str
    integration_guide_url: str
    points_expire_after_days: int | None = None
    points_expire_at: datetime | None = None


async def share_details(
    connection: asyncpg.Connection, org_id: str, rule_id: str, settings: RulesSettings
) -> ShareDetails:
    """The share information of an active rule; other rules are not shared."""
    rule = await get_rule(connection, org_id, rule_id)
    if rule["status"] != "active":
        raise Conflict(
            f"rule {rule_id} is {rule['status']}; only active rules are shared",
            code="RULE_NOT_ACTIVE",
        )
    return ShareDetails(
        rule_name=rule["name"],
        rule_id=rule["id"],
        rule_type=rule["type"],
        environment=rule["environment"],
        url_endpoint=settings.trigger_url(rule["environment"]).rstrip("/") + "/v1/points/requests",
        integration_guide_url=settings.integration_guide_for(rule["environment"]),
        points_expire_after_days=rule["points_expire_after_days"],
        points_expire_at=rule["points_expire_at"],
    )


async def request_share_email(
    connection: asyncpg.Connection,
    org_id: str,
    actor: str,
    rule_id: str,
    recipients: list[str],
    settings: RulesSettings,
    correlation_id: str,
) -> uuid.UUID:
    """Ask the notifier, through the outbox, to e-mail an active rule's share details.

    An organisation sends to at most ``share_email_recipients_per_day`` addresses in
    any 24 hours (every send is in the audit log), so the platform cannot be used
    to mail strangers at volume.
    """
    details = await share_details(connection, org_id, rule_id, settings)
    await repository.lock_organisation(connection, org_id)  # one send counted at a time
    today = await repository.share_recipients_today(connection, org_id)
    allowance = settings.share_email_recipients_per_day
    if today.recipients + len(recipients) > allowance:
        wait = today.until_oldest_leaves or timedelta(days=1)
        retry_after = max(1, math.ceil(wait.total_seconds()))
        raise Problem(
            f"this organisation may send share e-mails to {allowance} addresses a day and "
            f"has sent to {today.recipients} in the last 24 hours; try again later",
            status=429,
            code="SHARE_EMAIL_LIMIT",
            headers={"Retry-After": str(retry_after)},
            retryAfter=retry_after,
        )
    notification_id = uuid.uuid4()
    event = ShareEmailRequestedEvent.new_event(
        data=ShareEmailRequested(
            notification_id=notification_id,
            rule_id=details.rule_id,
            rule_name=details.rule_name,
            rule_type=details.rule_type,
            environment=details.environment,
            url_endpoint=details.url_endpoint,
            integration_guide_url=details.integration_guide_url,
            recipients=tuple(recipients),
            requested_by=actor,
        ),
        environment=details.environment,
        org_id=org_id,
        correlation_id=correlation_id,
    )
    audit_details = {"recipients": recipients, "notificationId": str(notification_id)}
    await audit(connection, org_id, actor, "rule.shared_by_email", rule_id, audit_details)
    await outbox.enqueue(connection, event)
    return notification_id

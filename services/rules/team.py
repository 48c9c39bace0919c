"""The team: an organisation's business users, invited, given roles and removed by admins.

Roles: an *admin* manages the team and the API clients (and everything an editor
does); an *editor* manages rules and members; a *viewer* reads.

An admin invites an e-mail address with a role: the user exists at once as
``invited`` and an e-mail carries a one-time link to the console's invitation
page, where the invitee sets a password and becomes ``active``. The link's token
is a secret: only its SHA-256 is stored here, it travels to the notifier sealed
(:mod:`infra.sealing`), and it is never logged. It works once, until
``RULES_INVITATION_LIFETIME_HOURS`` have passed; inviting the same address again
replaces it. An unknown, used and expired token are refused alike
(``INVITATION_INVALID``): the invitee's remedy is the same (ask for a new
invitation), and a token that was once real tells a guesser nothing more.

Removing a user deletes it with its console sessions; every request checks the
user still exists and takes the role from the database, so removal and a change
of role take effect at once here. Other services that accept business users'
bearer tokens learn it from ``users.lifecycle.v1`` (:mod:`infra.user_standing`).
An organisation always keeps an active admin: its admins are locked while one of
them is demoted or removed, so two admins demoting each other at once leave one.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from contracts import (
    USERS_ENVIRONMENT,
    InvitationEmailRequested,
    InvitationEmailRequestedEvent,
    UserLifecycleEvent,
    UserStanding,
)
from infra import outbox
from infra.http import Forbidden
from infra.logging import get_logger
from infra.problems import Problem
from infra.sealing import invitation_sealer
from services.rules import repository, team_repository
from services.rules.accounts import ROLES, check_password, require_organisation
from services.rules.audit import audit
from services.rules.credentials import hasher
from services.rules.records import Conflict, NotFound, new_id, now
from services.rules.settings import RulesSettings

log = get_logger(__name__)


class InvitationInvalid(Problem):
    """An invitation token that is unknown, used or expired: one answer for the three."""

    status = 404
    code = "INVITATION_INVALID"


@dataclass(frozen=True)
class Actor:
    """The admin making a change, and the correlation id of the request."""

    id: str
    org_id: str
    correlation_id: str


@dataclass(frozen=True)
class Invited:
    user: asyncpg.Record
    expires_at: datetime


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def list_team(connection: asyncpg.Connection, org_id: str) -> list[asyncpg.Record]:
    return await team_repository.list_users(connection, org_id)


async def invite(
    connection: asyncpg.Connection,
    actor: Actor,
    email: str,
    role: str,
    settings: RulesSettings,
) -> Invited:
    """Invite ``email`` to the organisation as ``role`` (again: a new link replaces the old)."""
    organisation = await require_organisation(connection, actor.org_id)
    inviter = await repository.get_user(connection, actor.org_id, actor.id)
    if inviter is None:
        raise NotFound(f"user {actor.id} does not exist", code="USER_NOT_FOUND")
    user = await _invited_user(connection, actor, email.strip(), role)
    token = secrets.token_urlsafe(32)
    expires_at = await team_repository.upsert_invitation(
        connection, user["id"], hash_token(token), settings.invitation_lifetime
    )
    invitation_id = uuid.uuid4()
    sealer = invitation_sealer(settings.invitation_sealing_key)
    event = InvitationEmailRequestedEvent.new_event(
        data=InvitationEmailRequested(
            invitation_id=invitation_id,
            user_id=user["id"],
            organisation_name=organisation["name"],
            role=role,
            recipient=user["email"],
            invited_by=inviter["email"],
            accept_url_prefix=settings.invitation_page_prefix,
            sealed_token=sealer.seal(str(invitation_id), token),
            expires_at=expires_at,
        ),
        environment=USERS_ENVIRONMENT,
        org_id=actor.org_id,
        correlation_id=actor.correlation_id,
    )
    details = {"email": user["email"], "role": role, "invitationId": str(invitation_id)}
    await audit(connection, actor.org_id, actor.id, "user.invited", user["id"], details)
    await outbox.enqueue(connection, event)
    log.info("user.invited", user_id=user["id"], org_id=actor.org_id, actor=actor.id)
    return Invited(user, expires_at)


async def _invited_user(
    connection: asyncpg.Connection, actor: Actor, email: str, role: str
) -> asyncpg.Record:
    existing = await repository.get_user_by_email(connection, email)
    if existing is None:
        try:
            async with connection.transaction():  # a savepoint: a concurrent invite may win
                return await team_repository.insert_invited_user(
                    connection, new_id("usr"), actor.org_id, email, role, actor.id
                )
        except asyncpg.UniqueViolationError:
            existing = await repository.get_user_by_email(connection, email)
            if existing is None:
                raise
    if existing["org_id"] != actor.org_id:
        raise Conflict(f"a user with e-mail {email} exists", code="EMAIL_TAKEN")
    reinvited = await team_repository.reinvite_user(connection, existing["id"], role, actor.id)
    if reinvited is None:
        raise Conflict(f"{email} is already a member of this organisation", code="ALREADY_A_MEMBER")
    return reinvited


async def accept(
    connection: asyncpg.Connection, token: str, password: str, correlation_id: str
) -> asyncpg.Record:
    """Set the invitee's password and make the user active; the token then never works again."""
    check_password(password)
    user_id = await team_repository.take_invitation(connection, hash_token(token))
    if user_id is None:
        raise InvitationInvalid(
            "this invitation link is unknown, used or expired; ask an admin of your "
            "organisation to invite you again"
        )
    user = await team_repository.activate_user(connection, user_id, hasher.hash(password))
    assert user is not None, "an open invitation belongs to an invited user"
    await audit(connection, user["org_id"], user["id"], "user.joined", user["id"], {})
    await _publish(connection, user, "user.activated", None, correlation_id)
    log.info("user.joined", user_id=user["id"], org_id=user["org_id"])
    return user


async def change_role(
    connection: asyncpg.Connection, actor: Actor, user_id: str, role: str
) -> asyncpg.Record:
    """Give a user of the organisation another role; never its last admin's."""
    if role not in ROLES:
        raise Problem(f"role must be one of {', '.join(ROLES)}", code="INVALID_ROLE")
    user = await _require_member(connection, actor.org_id, user_id)
    if user["role"] == role:
        return user
    if user["role"] == "admin":
        await _keep_an_admin(connection, actor, user_id, "demote")
    changed = await team_repository.change_role(connection, actor.org_id, user_id, role)
    assert changed is not None
    details = {"email": user["email"], "from": user["role"], "to": role}
    await audit(connection, actor.org_id, actor.id, "user.role_changed", user_id, details)
    if changed["status"] == "active":
        await _publish(connection, changed, "user.role_changed", actor.id, actor.correlation_id)
    log.info("user.role_changed", user_id=user_id, org_id=actor.org_id, actor=actor.id, role=role)
    return changed


async def remove(connection: asyncpg.Connection, actor: Actor, user_id: str) -> None:
    """Remove a user (or withdraw an invitation): its sessions end and its tokens are
    refused at once. Never the organisation's last admin."""
    user = await _require_member(connection, actor.org_id, user_id)
    if user["role"] == "admin" and user["status"] == "active":
        await _keep_an_admin(connection, actor, user_id, "remove")
    removed = await team_repository.delete_user(connection, actor.org_id, user_id)
    assert removed is not None
    details = {"email": user["email"], "role": user["role"], "status": user["status"]}
    await audit(connection, actor.org_id, actor.id, "user.removed", user_id, details)
    await _publish(connection, removed, "user.removed", actor.id, actor.correlation_id)
    log.info("user.removed", user_id=user_id, org_id=actor.org_id, actor=actor.id)


async def _require_member(
    connection: asyncpg.Connection, org_id: str, user_id: str
) -> asyncpg.Record:
    user = await repository.get_user(connection, org_id, user_id)
    if user is None:
        raise NotFound(f"user {user_id} does not exist", code="USER_NOT_FOUND")
    return user


async def _keep_an_admin(
    connection: asyncpg.Connection, actor: Actor, user_id: str, change: str
) -> None:
    """Refuse to take away the organisation's last admin, judged under the lock of its
    admins (so of two concurrent changes the second sees the first), by an actor who is
    still an admin under that lock."""
    admins = await team_repository.lock_admins(connection, actor.org_id)
    if actor.id not in admins:
        raise Forbidden("only an admin can manage the team", code="ADMIN_ROLE_REQUIRED")
    if admins <= {user_id}:
        raise Conflict(
            f"cannot {change} the organisation's last admin; make another user an admin first",
            code="LAST_ADMIN",
        )


async def _publish(
    connection: asyncpg.Connection,
    user: asyncpg.Record,
    event_type: str,
    changed_by: str | None,
    correlation_id: str,
) -> None:
    event = UserLifecycleEvent.new_event(
        data=UserStanding(
            org_id=user["org_id"],
            user_id=user["id"],
            role=user["role"],
            removed=event_type == "user.removed",
            changed_by=changed_by,
            changed_at=now(),
        ),
        environment=USERS_ENVIRONMENT,
        org_id=user["org_id"],
        correlation_id=correlation_id,
        type=event_type,
    )
    await outbox.enqueue(connection, event)


async def active_role(pool: asyncpg.Pool, org_id: str, user_id: str) -> str | None:
    """The role of an active user of the organisation, or None (removed, or not active)."""
    return await team_repository.active_user_role(pool, org_id, user_id)

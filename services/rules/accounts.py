"""Organisations and business users: creating them, and signing users in."""

from __future__ import annotations

from typing import Any

import asyncpg

from infra.problems import Problem
from services.rules import repository, team_repository, throttle
from services.rules.credentials import (
    DUMMY_HASH,
    SignInThrottles,
    count_or_refuse_attempt,
    hasher,
    verify_secret,
)
from services.rules.records import Conflict, NotFound, new_id

ROLES = ("admin", "editor", "viewer")


class InvalidCredentials(Problem):
    """A failed sign-in. A 401 names how to authenticate (RFC 9110 §15.5.2): the console
    API takes the bearer token that a sign-in gives."""

    status = 401
    code = "INVALID_CREDENTIALS"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="console"'})


async def create_organisation(
    connection: asyncpg.Connection, name: str, timezone: str = "UTC"
) -> dict[str, Any]:
    if not name.strip():
        raise Problem("organisation name must not be empty", code="INVALID_NAME")
    org_id = new_id("org")
    await repository.insert_organisation(connection, org_id, name.strip(), timezone)
    return {"id": org_id, "name": name.strip()}


async def require_organisation(connection: asyncpg.Connection, org_id: str) -> asyncpg.Record:
    organisation = await repository.get_organisation(connection, org_id)
    if organisation is None:
        raise NotFound(f"organisation {org_id} does not exist", code="ORGANISATION_NOT_FOUND")
    return organisation


async def create_user(
    connection: asyncpg.Connection, org_id: str, email: str, password: str, role: str = "admin"
) -> dict[str, Any]:
    await require_organisation(connection, org_id)
    if role not in ROLES:
        raise Problem(f"role must be one of {', '.join(ROLES)}", code="INVALID_ROLE")
    if "@" not in email or len(email) > 254:
        raise Problem(f"{email!r} is not an e-mail address", code="INVALID_EMAIL")
    check_password(password)
    user_id = new_id("usr")
    try:
        await repository.insert_user(
            connection,
            user_id=user_id,
            org_id=org_id,
            email=email,
            password_hash=hasher.hash(password),
            role=role,
        )
    except asyncpg.UniqueViolationError as error:
        raise Conflict(f"a user with e-mail {email} exists", code="EMAIL_TAKEN") from error
    return {"id": user_id, "email": email}


#: The fewest characters of a business user's password.
MIN_PASSWORD_LENGTH = 8


def check_password(password: str) -> None:
    """Refuse a password too weak for a business user (``WEAK_PASSWORD``)."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise Problem(
            f"password must have at least {MIN_PASSWORD_LENGTH} characters", code="WEAK_PASSWORD"
        )


async def require_user(connection: asyncpg.Connection, org_id: str, user_id: str) -> asyncpg.Record:
    user = await repository.get_user(connection, org_id, user_id)
    if user is None:
        raise NotFound(f"user {user_id} does not exist", code="USER_NOT_FOUND")
    return user


async def log_in(
    pool: asyncpg.Pool,
    email: str,
    password: str,
    client_ip: str | None,
    throttles: SignInThrottles,
) -> asyncpg.Record:
    """The user these credentials name, counting the attempt against the throttles first
    (:class:`TooManySignInAttempts` when it must wait, :class:`InvalidCredentials` when
    they are wrong).

    Unlike the other functions here this one takes the pool and manages its own
    transactions: the attempt must be counted (committed) even when the login
    fails, and no connection is held while the password is checked, so a flood
    of wrong passwords cannot take the pool from every other request.
    """
    keys = throttle.keys_for(
        "login", client_ip, email.strip().lower(), throttles.login, throttles.login_address
    )
    async with pool.acquire() as connection:
        await count_or_refuse_attempt(
            connection, keys, throttles, "logins", "user.login_throttled", ip=client_ip
        )
        user = await repository.get_user_by_email(connection, email)
    if user is not None and user["status"] != "active":
        user = None  # invited: signs in once the invitation is accepted
    # An unknown address costs as long as a known one, so timing reveals no accounts.
    matches = await verify_secret(user["password_hash"] if user else DUMMY_HASH, password)
    if user is None or not matches:
        raise InvalidCredentials("e-mail or password is wrong")
    async with pool.acquire() as connection, connection.transaction():
        if hasher.check_needs_rehash(user["password_hash"]):
            await repository.update_password_hash(connection, user["id"], hasher.hash(password))
        await throttle.succeeded(connection, keys)
        await team_repository.record_sign_in(connection, user["id"])
    return user

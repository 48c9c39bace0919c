"""The projection of ``users.lifecycle.v1`` a service that accepts business users' tokens
keeps (``infra.user_standing``), on the ledger's migrated schema."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from contracts import USERS_ENVIRONMENT, UserLifecycleEvent, UserStanding
from infra.user_standing import UserRemoved, current_role, project_users

ORG = "org_1"
USER = "usr_1"
START = datetime(2026, 12, 1, tzinfo=UTC)


def event(kind: str, role: str, seconds: int) -> UserLifecycleEvent:
    return UserLifecycleEvent.new_event(
        data=UserStanding(
            org_id=ORG,
            user_id=USER,
            role=role,  # type: ignore[arg-type]
            removed=kind == "user.removed",
            changed_by="usr_admin",
            changed_at=START + timedelta(seconds=seconds),
        ),
        environment=USERS_ENVIRONMENT,
        org_id=ORG,
        correlation_id="corr",
        type=kind,
    )


async def project(pool: asyncpg.Pool, *events: UserLifecycleEvent) -> None:
    async with pool.acquire() as connection, connection.transaction():
        await project_users(connection, list(events))


class TestUserStanding:
    async def test_an_unknown_user_is_judged_by_its_token(self, pool: asyncpg.Pool) -> None:
        assert await current_role(pool, ORG, USER, "editor") == "editor"

    async def test_a_changed_role_replaces_the_tokens(self, pool: asyncpg.Pool) -> None:
        await project(
            pool, event("user.activated", "admin", 0), event("user.role_changed", "viewer", 1)
        )

        assert await current_role(pool, ORG, USER, "admin") == "viewer"

    async def test_a_removed_user_is_refused(self, pool: asyncpg.Pool) -> None:
        await project(pool, event("user.removed", "editor", 5))

        with pytest.raises(UserRemoved):
            await current_role(pool, ORG, USER, "editor")

    async def test_an_older_event_arriving_late_changes_nothing(self, pool: asyncpg.Pool) -> None:
        await project(pool, event("user.removed", "editor", 5))
        await project(pool, event("user.role_changed", "admin", 1))

        with pytest.raises(UserRemoved):
            await current_role(pool, ORG, USER, "admin")

    async def test_a_redelivered_event_is_applied_once(self, pool: asyncpg.Pool) -> None:
        changed = event("user.role_changed", "viewer", 1)
        await project(pool, changed)
        await project(pool, changed)

        assert await pool.fetchval("SELECT count(*) FROM inbox") == 1

    async def test_another_organisations_user_of_that_id_is_not_confused(
        self, pool: asyncpg.Pool
    ) -> None:
        await project(pool, event("user.removed", "editor", 5))

        assert await current_role(pool, "org_2", USER, "viewer") == "viewer"

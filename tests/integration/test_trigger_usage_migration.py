"""Upgrading a gateway that counted usage only under a cap (migration 0008).

Requests a gateway of the previous release accepted on uncapped rules reserved
nothing. After the upgrade, what they moved must count against a cap set
later, and a rejection must free it again.
"""

from __future__ import annotations

import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from infra.db import connect, migrate
from services.trigger.app import MIGRATIONS

UPGRADE = "0008_usage_and_redrives.sql"


async def insert_request(
    connection: asyncpg.Connection, rule_id: str, user_id: str, amount: int, **columns: object
) -> None:
    names = ["client_id", "request_id", "transaction_id", "body_hash", "org_id", "environment"]
    names += ["rule_id", "rule_version", "user_id", "type", "amount", *columns]
    values = ["client-1", f"req-{uuid.uuid4().hex}", uuid.uuid4(), "hash", "org-1", "staging"]
    values += [rule_id, 1, user_id, "earn", amount, *columns.values()]
    placeholders = ", ".join(f"${n}" for n in range(1, len(values) + 1))
    await connection.execute(
        f"INSERT INTO requests ({', '.join(names)}) VALUES ({placeholders})",  # noqa: S608
        *values,
    )


async def test_requests_accepted_uncapped_before_the_upgrade_count_against_caps(
    database_url: str, tmp_path: Path
) -> None:
    before = tmp_path / "previous_release"
    before.mkdir()
    for migration in sorted(MIGRATIONS.glob("*.sql")):
        if migration.name < UPGRADE:
            shutil.copy(migration, before / migration.name)
    await migrate(database_url, "trigger", [before])
    connection = await connect(database_url, "trigger")
    try:
        await insert_request(connection, "rule-a", "member-1", 300)
        await insert_request(connection, "rule-a", "member-1", 200, status="succeeded")
        await insert_request(connection, "rule-a", "member-2", 50)
        # Neither a failed request nor a reversed one holds points any more.
        await insert_request(connection, "rule-a", "member-2", 1000, status="failed")
        await insert_request(
            connection,
            "rule-a",
            "member-2",
            4000,
            status="succeeded",
            reversal_id=uuid.uuid4(),
            reversed_amount=4000,
            uncovered_amount=0,
            reversed_at=datetime.now(UTC),
        )
        # A capped rule's requests already reserved their amounts.
        await connection.execute("INSERT INTO cap_usage (rule_id, used) VALUES ('rule-b', 70)")
        await insert_request(connection, "rule-b", "member-1", 70, cap_reserved=70)

        await migrate(database_url, "trigger", [MIGRATIONS])

        usage = dict(await connection.fetch("SELECT rule_id, used FROM cap_usage"))
        assert usage == {"rule-a": 550, "rule-b": 70}
        members = {
            (row["rule_id"], row["user_id"]): row["used"]
            for row in await connection.fetch("SELECT * FROM member_cap_usage")
        }
        assert members == {
            ("rule-a", "member-1"): 500,
            ("rule-a", "member-2"): 50,
            ("rule-b", "member-1"): 70,
        }
    finally:
        await connection.close()

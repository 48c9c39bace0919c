"""The gateway's per-trigger statement reads by index whatever plan PostgreSQL caches.

A pooled connection runs a prepared statement with one cached generic plan
once it has run it a few times, and that plan is made from the statistics of
the moment: on a fresh deployment, empty tables. A plan that scans
``requests`` sequentially would then read the whole, growing table for every
batch of triggers until autovacuum happens to replan it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from infra import db
from infra.runtime import INFRA_MIGRATIONS
from services.trigger import repository
from services.trigger.app import MIGRATIONS

#: Tables that grow with traffic or with the number of clients and rules.
INDEXED_TABLES = {"requests", "rules", "clients", "client_rate_limits", "member_standings"}


@pytest.fixture
async def connection(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    await db.migrate(database_url, "trigger", [INFRA_MIGRATIONS, MIGRATIONS])
    connection = await asyncpg.connect(
        database_url, server_settings={"search_path": "trigger,public"}
    )
    try:
        yield connection
    finally:
        await connection.close()


def scans(plan: dict[str, Any]) -> list[tuple[str, str]]:
    """(node type, table) of every node of the plan that reads a table."""
    found = []
    if "Relation Name" in plan:
        found.append((plan["Node Type"], plan["Relation Name"]))
    for child in plan.get("Plans", ()):
        found.extend(scans(child))
    return found


async def generic_plan_scans(
    connection: asyncpg.Connection, statement: str, arguments: str
) -> list[tuple[str, str]]:
    await connection.execute("SET plan_cache_mode = force_generic_plan")
    await connection.execute(f"PREPARE under_test AS {statement}")
    try:
        explained = await connection.fetchval(
            f"EXPLAIN (FORMAT JSON) EXECUTE under_test({arguments})"
        )
    finally:
        await connection.execute("DEALLOCATE under_test")
    return scans(json.loads(explained)[0]["Plan"])


async def test_admitting_triggers_reads_every_growing_table_by_index_on_empty_tables(
    connection: asyncpg.Connection,
) -> None:
    found = await generic_plan_scans(
        connection,
        repository.ADMIT_TRIGGERS,
        "ARRAY['cli_a', 'cli_b'], ARRAY['r-1', 'r-2'], ARRAY['rul_a', 'rul_a'],"
        " ARRAY['member-1', NULL], 50, 100",
    )

    read = {table for _, table in found}
    assert read >= INDEXED_TABLES, found  # the check below would pass on a table never read
    sequential = [table for node, table in found if table in INDEXED_TABLES and "Index" not in node]
    assert sequential == [], found

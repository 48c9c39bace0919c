"""Fixtures the integration tests share: a rules service per module and what its tests
seed in it, and a migrated ledger database's pool. Plain helpers live in
``tests/helpers.py``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
import pytest_asyncio

from services.ledger.app import MIGRATIONS as LEDGER_MIGRATIONS
from tests.helpers import RulesStack, Tenant, migrated_pool, new_tenant, rules_stack


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(postgres_server_dsn: str) -> AsyncIterator[RulesStack]:
    """One rules service for the whole module, on a database and broker of its own."""
    async with rules_stack(postgres_server_dsn) as running:
        yield running


@pytest.fixture
def http(stack: RulesStack) -> httpx.AsyncClient:
    """The module's rules service over HTTP."""
    return stack.http


@pytest.fixture
async def tenant(stack: RulesStack) -> Tenant:
    """An organisation of this test's own in the module's rules service."""
    return await new_tenant(stack.http, stack.seeder)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the test's database, migrated to the ledger's schema."""
    async with migrated_pool(database_url, "ledger", LEDGER_MIGRATIONS) as pool:
        yield pool

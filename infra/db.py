"""PostgreSQL access: the asyncpg pool, start-up checks and migrations.

Every service keeps its tables in a schema of its own name and migrates it
with yoyo from plain ``.sql`` files in ``services/<name>/migrations``. yoyo
takes a lock in the database, so replicas starting together apply each
migration once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
from yoyo import get_backend, read_migrations

from infra.errors import StartupError
from infra.logging import get_logger

log = get_logger(__name__)


def redact_dsn(dsn: str) -> str:
    """The DSN without its password, fit for a log line or an error message."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def _yoyo_uri(dsn: str, schema: str) -> str:
    parts = urlsplit(dsn)
    query = dict(parse_qsl(parts.query))
    query["schema"] = schema
    return urlunsplit(parts._replace(scheme="postgresql+psycopg", query=urlencode(query)))


#: Run first in a transaction whose statement joins a batch's arrays
#: (``FROM unnest($1::text[])``) to a table that starts empty and grows: the
#: statement is then planned for the values it runs with. A pooled connection
#: otherwise settles on one generic plan, and one made while the table was
#: small scans the whole table for every batch until autovacuum happens to
#: invalidate it. Planning costs about a millisecond, so statements run per
#: request are written to need no such thing: their lookups are
#: ``LATERAL (… LIMIT 1)`` subqueries, which every plan runs on the index.
PLAN_FOR_THESE_VALUES = "SET LOCAL plan_cache_mode = force_custom_plan"


class PooledConnection(asyncpg.Connection):  # type: ignore[misc]
    """A pool connection given back without asyncpg's reset query.

    On release asyncpg runs ``UNLISTEN *; RESET ALL; pg_advisory_unlock_all()…``:
    one more round trip for every request that borrows a connection. Nothing in
    this code base leaves such state on a pooled connection: session settings
    are the pool's own (``server_settings``), advisory locks are taken per
    transaction, and the outbox relay listens on a connection of its own. An
    open transaction is still rolled back on release.
    """

    def get_reset_query(self) -> str:
        return ""


async def init_connection(connection: asyncpg.Connection) -> None:
    await connection.set_type_codec(
        "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
    )


async def create_pool(
    dsn: str,
    schema: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
) -> asyncpg.Pool:
    """Open a pool whose connections see ``schema`` first.

    Start-up runs :func:`migrate_with_retry` before this, so the database has
    already answered; a failure here is reported, not retried.
    """
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            init=init_connection,
            connection_class=PooledConnection,
            server_settings={
                "search_path": f"{schema},public",
                "application_name": schema,  # pg_stat_activity shows which service it is
            },
        )
    except (TimeoutError, OSError, asyncpg.PostgresError) as error:
        raise StartupError(
            f"PostgreSQL at {redact_dsn(dsn)} refused the connection pool: {error}."
        ) from error
    assert pool is not None
    return pool


def _apply_migrations(dsn: str, schema: str, directories: list[Path]) -> list[str]:
    backend = get_backend(_yoyo_uri(dsn, schema))
    migrations = read_migrations(*(str(directory) for directory in directories))
    with backend.lock():
        pending = backend.to_apply(migrations)
        backend.apply_migrations(pending)
    return [migration.id for migration in pending]


async def migrate(dsn: str, schema: str, directories: list[Path]) -> list[str]:
    """Create the service's schema and apply its pending migrations, in order."""
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    finally:
        await connection.close()
    applied = await asyncio.to_thread(_apply_migrations, dsn, schema, directories)
    if applied:
        log.info("db.migrated", schema=schema, migrations=applied)
    return applied


async def migrate_with_retry(
    dsn: str, schema: str, directories: list[Path], *, timeout: float
) -> list[str]:
    """:func:`migrate`, waiting up to ``timeout`` for the database to answer."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await migrate(dsn, schema, directories)
        except (TimeoutError, OSError) as error:
            if asyncio.get_running_loop().time() >= deadline:
                raise StartupError(
                    f"PostgreSQL at {redact_dsn(dsn)} is not reachable: {error}. "
                    "Start it or set DATABASE_URL."
                ) from error
            await asyncio.sleep(0.5)
        except asyncpg.InvalidCatalogNameError as error:
            raise StartupError(
                f"PostgreSQL at {redact_dsn(dsn)} has no such database: {error}. "
                "Create it or correct DATABASE_URL."
            ) from error


def array_columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows of ``width`` values as one list per column: the parallel arrays a statement
    reading ``unnest($1::type[], $2::type[], ...)`` takes."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(column) for column in zip(*rows, strict=True)]


async def connect(dsn: str, schema: str) -> asyncpg.Connection:
    """One connection that sees ``schema`` first (for commands and tools)."""
    connection = await asyncpg.connect(dsn, server_settings={"search_path": f"{schema},public"})
    await init_connection(connection)
    return connection

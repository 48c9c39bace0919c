"""What each ``points`` command does. Writes go through the services' own logic,
in one transaction with their audit lines and outbox events."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import asyncpg

from infra import db
from infra.runtime import INFRA_MIGRATIONS
from points_cli.main import emit
from services.rules import service as rules
from services.rules.settings import RulesSettings

SERVICE_SCHEMAS = ("rules", "trigger", "ledger", "notifier")


def migrations_of(schema: str) -> list[Path]:
    root = Path(__file__).resolve().parent.parent / "services" / schema / "migrations"
    return [INFRA_MIGRATIONS, root]


@asynccontextmanager
async def rules_transaction() -> AsyncIterator[tuple[asyncpg.Connection, RulesSettings]]:
    settings = RulesSettings()
    await db.migrate_with_retry(
        settings.database_url,
        "rules",
        migrations_of("rules"),
        timeout=settings.startup_timeout_seconds,
    )
    connection = await db.connect(settings.database_url, "rules")
    try:
        async with connection.transaction():
            yield connection, settings
    finally:
        await connection.close()


async def org_create(args: argparse.Namespace) -> int:
    async with rules_transaction() as (connection, _):
        organisation = await rules.create_organisation(connection, args.name, args.timezone)
    emit(organisation, args.json)
    return 0


async def user_create(args: argparse.Namespace) -> int:
    async with rules_transaction() as (connection, _):
        user = await rules.create_user(connection, args.org, args.email, args.password, args.role)
    emit(user, args.json)
    return 0


async def client_create(args: argparse.Namespace) -> int:
    async with rules_transaction() as (connection, settings):
        issued = await rules.create_client(
            connection,
            org_id=args.org,
            environment=args.environment,
            name=args.name,
            platform_signing_key=settings.callback_signing_key,
        )
    emit(issued.as_json(), args.json)
    return 0


async def client_revoke(args: argparse.Namespace) -> int:
    async with rules_transaction() as (connection, _):
        await rules.revoke_client(connection, args.client_id)
    print(f"client {args.client_id} revoked")
    return 0


async def client_rotate(args: argparse.Namespace) -> int:
    async with rules_transaction() as (connection, settings):
        issued = await rules.rotate_client_secret(
            connection,
            args.client_id,
            platform_signing_key=settings.callback_signing_key,
            overlap=timedelta(seconds=settings.secret_rotation_overlap_seconds),
        )
    emit(issued.as_json(), args.json)
    return 0


async def ledger_verify(args: argparse.Namespace) -> int:
    from services.ledger.service import verify_ledger
    from services.ledger.settings import LedgerSettings

    settings = LedgerSettings()
    await db.migrate_with_retry(
        settings.database_url,
        "ledger",
        migrations_of("ledger"),
        timeout=settings.startup_timeout_seconds,
    )
    connection = await db.connect(settings.database_url, "ledger")
    try:
        violations = await verify_ledger(connection)
    finally:
        await connection.close()
    if violations:
        print(f"ledger verify: {len(violations)} violation(s)")
        for violation in violations:
            print(f"  - {violation}")
        return 1
    print("ledger verify: every invariant holds")
    return 0


async def migrate(args: argparse.Namespace) -> int:
    settings = RulesSettings()
    for schema in SERVICE_SCHEMAS:
        applied = await db.migrate_with_retry(
            settings.database_url,
            schema,
            migrations_of(schema),
            timeout=settings.startup_timeout_seconds,
        )
        print(f"{schema}: {len(applied)} migration(s) applied")
    return 0


async def dev(args: argparse.Namespace) -> int:
    from points_cli.dev import run_stack

    return await run_stack()

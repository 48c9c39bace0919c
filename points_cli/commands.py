"""What each ``points`` command does. Writes go through the services' own logic,
in one transaction with their audit lines and outbox events."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg

from contracts.text import refusal
from infra import db, outbox, quarantine
from infra.catchup import GroupProgress
from infra.problems import Problem
from infra.runtime import INFRA_MIGRATIONS
from infra.settings import SERVICES, ServiceSettings, var_dir
from services.rules import accounts, clients, tokens
from services.rules.propagation import Propagation
from services.rules.settings import RulesSettings


def migrations_of(schema: str) -> list[Path]:
    root = Path(__file__).resolve().parent.parent / "services" / schema / "migrations"
    return [INFRA_MIGRATIONS, root]


def emit(value: dict[str, Any], as_json: bool) -> None:
    """A command's result: one JSON object for scripts, or a line per field."""
    if as_json:
        print(json.dumps(value))
    else:
        for key, item in value.items():
            print(f"{key}: {item}")


@asynccontextmanager
async def schema_transaction(
    schema: str, settings: ServiceSettings | None = None
) -> AsyncIterator[asyncpg.Connection]:
    """One transaction in a service's schema, migrated first (the command may run
    before the service ever started). Without ``settings``, the service's database
    settings (:func:`database_settings`) say where."""
    connection = await schema_connection(schema, settings)
    try:
        async with connection.transaction():
            yield connection
    finally:
        await connection.close()


async def schema_connection(
    schema: str, settings: ServiceSettings | None = None
) -> asyncpg.Connection:
    """A connection to a service's schema, migrated first."""
    settings = settings or database_settings(schema)
    await db.migrate_with_retry(
        settings.database_url,
        schema,
        migrations_of(schema),
        timeout=settings.startup_timeout_seconds,
    )
    return await db.connect(settings.database_url, schema)


@asynccontextmanager
async def rules_transaction() -> AsyncIterator[tuple[asyncpg.Connection, RulesSettings]]:
    """A transaction in the rules schema. As through the API, a command that changes a
    rule or client returns once the trigger gateway has the change (or after
    ``RULES_PROPAGATION_TIMEOUT_SECONDS``, with a warning)."""
    settings = RulesSettings()
    async with (
        schema_transaction("rules", settings) as connection,
        outbox.staging(connection) as staged,
    ):
        yield connection, settings
    if staged.row_id is not None:
        await reach_readers(settings, staged)


async def reach_readers(settings: RulesSettings, staged: outbox.Staged) -> None:
    progress = GroupProgress(settings)
    connection = await db.connect(settings.database_url, "rules")
    try:
        propagation = Propagation(
            lambda: connection, progress, timeout=settings.propagation_timeout_seconds
        )
        await propagation.reach_readers(staged)
    finally:
        await connection.close()
        await progress.stop()


async def org_create(args: argparse.Namespace) -> int:
    async with rules_transaction() as (connection, _):
        organisation = await accounts.create_organisation(connection, args.name, args.timezone)
    emit(organisation, args.json)
    return 0


async def user_create(args: argparse.Namespace) -> int:
    async with rules_transaction() as (connection, _):
        user = await accounts.create_user(
            connection, args.org, args.email, args.password, args.role
        )
    emit(user, args.json)
    return 0


def read_public_key(path: Path) -> str:
    """The PEM text of an operator's public-key file, or a problem naming the file."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not a text file"
        raise Problem(
            f"cannot read public key file {path}: {reason}", code="PUBLIC_KEY_UNREADABLE"
        ) from None


async def client_create(args: argparse.Namespace) -> int:
    public_key = None if args.public_key is None else read_public_key(args.public_key)
    async with rules_transaction() as (connection, settings):
        issued = await clients.create_client(
            connection,
            org_id=args.org,
            environment=args.environment,
            name=args.name,
            platform_signing_key=settings.callback_signing_key,
            request_signing_key=public_key,
        )
    emit(issued.as_json(), args.json)
    return 0


async def client_set_public_key(args: argparse.Namespace) -> int:
    public_key = None if args.remove else read_public_key(args.file)
    async with rules_transaction() as (connection, _):
        changed = await clients.set_request_signing_key(connection, args.client_id, public_key)
    emit(changed, args.json)
    return 0


async def client_revoke(args: argparse.Namespace) -> int:
    async with rules_transaction() as (connection, _):
        await clients.revoke_client(connection, args.client_id)
    print(f"client {args.client_id} revoked")
    return 0


async def client_set_rate_limit(args: argparse.Namespace) -> int:
    # As the console sets it: carried to the gateway on the client's lifecycle event.
    async with rules_transaction() as (connection, _):
        limit = await clients.set_rate_limit(
            connection, args.client_id, per_second=args.per_second, burst=args.burst
        )
    if args.json:
        emit(
            {"clientId": args.client_id, "perSecond": limit.per_second, "burst": limit.burst}, True
        )
    else:
        rate = f"{limit.per_second:g} triggers a second, bursts of {limit.burst}"
        print(f"client {args.client_id}: {rate}")
    return 0


def refuse_unstorable_text(value: str, field: str, max_length: int = 2048) -> str:
    """``value``, or a problem naming ``field`` when storage would refuse it."""
    reason = refusal(value)
    if reason is None and len(value) > max_length:
        reason = f"is longer than {max_length} characters"
    if reason is not None:
        raise Problem(f"{field} {reason}", code="INVALID_TEXT")
    return value


async def client_set_expiry_callback(args: argparse.Namespace) -> int:
    url = None if args.clear else refuse_unstorable_text(args.url, "url")
    async with rules_transaction() as (connection, settings):
        changed = await clients.set_expiry_callback_url(
            connection, args.client_id, url, check=settings.check_callback_url
        )
    emit(changed, args.json)
    return 0


async def client_rotate(args: argparse.Namespace) -> int:
    async with rules_transaction() as (connection, settings):
        issued = await clients.rotate_client_secret(
            connection,
            args.client_id,
            platform_signing_key=settings.callback_signing_key,
            overlap=timedelta(seconds=settings.secret_rotation_overlap_seconds),
        )
    emit(issued.as_json(), args.json)
    return 0


async def keys_rotate(args: argparse.Namespace) -> int:
    async with rules_transaction() as (connection, settings):
        kid = await tokens.rotate_signing_key(
            connection,
            tokens.TokenIssuer.for_settings(settings),
            token_lifetime=settings.longest_token_lifetime,
        )
    emit({"kid": kid}, args.json)
    return 0


async def ledger_verify(args: argparse.Namespace) -> int:
    from services.ledger.verification import verify_ledger

    async with schema_transaction("ledger") as connection:
        violations = await verify_ledger(connection)
    if args.json:
        print(json.dumps({"violations": violations}))
        return 1 if violations else 0
    if violations:
        print(f"ledger verify: {len(violations)} violation(s)")
        for violation in violations:
            print(f"  - {violation}")
        return 1
    print("ledger verify: every invariant holds")
    return 0


async def ledger_expire(args: argparse.Namespace) -> int:
    """One expiry pass now, as every ledger replica runs one each
    ``LEDGER_EXPIRY_INTERVAL_SECONDS``: what is left of each due lot expires once. Exits 1
    when some lot could not expire (``failed``; each is logged with its id)."""
    from services.ledger.expiry import expire_due_lots

    settings = database_settings("ledger")
    await (await schema_connection("ledger", settings)).close()  # migrated first
    pool = await db.create_pool(settings.database_url, "ledger", min_size=1, max_size=1)
    try:
        report = await expire_due_lots(pool)
    finally:
        await pool.close()
    emit({"lots": report.lots, "points": report.points, "failed": report.failed}, args.json)
    return 1 if report.failed else 0


async def deliveries_list(args: argparse.Namespace) -> int:
    from services.notifier import operator_actions

    status = "parked" if args.parked else None
    async with schema_transaction("notifier") as connection:
        rows = await operator_actions.list_deliveries(connection, status=status, limit=args.limit)
    if args.json:
        print(json.dumps([delivery_json(row) for row in rows]))
        return 0
    if not rows:
        print("no parked deliveries" if args.parked else "no deliveries")
    for row in rows:
        print(delivery_line(row))
    return 0


async def deliveries_replay(args: argparse.Namespace) -> int:
    from services.notifier import operator_actions

    async with schema_transaction("notifier") as connection:
        if args.all:
            ids = await operator_actions.replay_parked_deliveries(connection)
            print(f"{len(ids)} parked deliveries queued again")
            return 0
        if not await operator_actions.replay_delivery(connection, args.delivery_id):
            print(
                f"points: delivery {args.delivery_id} does not exist or is neither "
                "parked nor failed",
                file=sys.stderr,
            )
            return 1
    print(f"delivery {args.delivery_id} queued again")
    return 0


def delivery_json(row: dict[str, Any]) -> dict[str, Any]:
    """A delivery in the camelCase of the notifier's HTTP API."""
    return {
        _camel(name): value.isoformat() if isinstance(value, datetime) else _plain(value)
        for name, value in row.items()
    }


def delivery_line(row: dict[str, Any]) -> str:
    target = row["url"] if row["kind"] == "callback" else ", ".join(row["recipients"] or [])
    error = f"  last error: {row['last_error']}" if row["last_error"] else ""
    return (
        f"{row['id']}  {row['kind']:<8}  {row['status']:<9}  attempts={row['attempts']}  "
        f"{target}{error}"
    )


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, UUID) else value


async def quarantine_list(args: argparse.Namespace) -> int:
    listed: list[tuple[str, quarantine.Quarantined]] = []
    for service in [args.service] if args.service else SERVICES:
        async with schema_transaction(service) as connection:
            rows = await quarantine.list_quarantined(
                connection, include_resolved=args.resolved, limit=args.limit
            )
        listed.extend((service, row) for row in rows)
    if args.json:
        print(
            json.dumps([{"service": service, **quarantined_json(row)} for service, row in listed])
        )
        return 0
    if not listed:
        print("nothing quarantined" + ("" if args.resolved else " is waiting"))
    for service, row in listed:
        print(quarantined_line(service, row))
    return 0


def quarantined_json(row: quarantine.Quarantined) -> dict[str, Any]:
    return {
        _camel(name): value.isoformat() if isinstance(value, datetime) else _plain(value)
        for name, value in dataclasses.asdict(row).items()
    }


def quarantined_line(service: str, row: quarantine.Quarantined) -> str:
    state = row.resolution or "waiting"
    return (
        f"{service}  {row.id}  {state:<8}  {row.topic}[{row.partition}]@{row.offset}  "
        f"{row.consumer}  {row.quarantined_at:%Y-%m-%d %H:%M:%S}  "
        f"{row.error_type}: {row.error[:200]}"
    )


async def quarantine_replay(args: argparse.Namespace) -> int:
    if args.all == bool(args.ids):
        print("points: name quarantine ids (with --service) or --all", file=sys.stderr)
        return 2
    if args.ids and not args.service:
        print("points: quarantine ids are per service: add --service", file=sys.stderr)
        return 2
    for service in [args.service] if args.service else SERVICES:
        async with schema_transaction(service) as connection:
            try:
                replayed = await quarantine.replay(connection, args.ids or None)
            except quarantine.NotReplayable as error:
                print(f"points: {service}: {error}", file=sys.stderr)
                return 1
        if replayed or args.ids:
            print(f"{service}: {len(replayed)} replayed ({', '.join(map(str, replayed))})")
    return 0


async def outbox_republish(args: argparse.Namespace) -> int:
    """Mark what each chosen service published since ``--since`` as pending again; its
    running relay publishes it again in id order. All services or none: a window one
    outbox no longer holds refuses the whole command."""
    chosen = args.service or list(SERVICES)
    retention = timedelta(hours=ServiceSettings().outbox_retention_hours)
    marked: dict[str, outbox.Republished] = {}
    connections = [await schema_connection(service) for service in chosen]
    try:
        transactions = [connection.transaction() for connection in connections]
        for transaction in transactions:
            await transaction.start()
        try:
            for service, connection in zip(chosen, connections, strict=True):
                marked[service] = await outbox.republish(connection, args.since, retention)
        except outbox.TooFarBack as error:
            for transaction in transactions:
                await transaction.rollback()
            print(f"points: {service}: {error}; nothing was republished", file=sys.stderr)
            return 1
        for transaction in transactions:
            await transaction.commit()
    finally:
        for connection in connections:
            await connection.close()
    since = args.since.isoformat()
    if args.json:
        print(
            json.dumps(
                {
                    "since": since,
                    "services": {
                        service: {
                            "republished": result.rows,
                            "oldestPublishedAt": result.oldest.isoformat()
                            if result.oldest
                            else None,
                        }
                        for service, result in marked.items()
                    },
                }
            )
        )
        return 0
    for service, result in marked.items():
        print(f"{service}: {result.rows} event(s) published since {since} will be published again")
    return 0


async def topics_create(args: argparse.Namespace) -> int:
    from infra.broker import wait_for_broker
    from infra.kafka_admin import create_topics
    from infra.kafka_security import kafka_client_options

    settings = ServiceSettings()
    configs: dict[str, str] = {}
    if args.min_insync_replicas is not None:
        configs["min.insync.replicas"] = str(args.min_insync_replicas)
    await wait_for_broker(settings)
    try:
        created = await create_topics(
            settings.kafka_bootstrap_servers,
            settings.topics(),
            replication_factor=args.replication_factor,
            configs=configs,
            **kafka_client_options(settings),
        )
    except RuntimeError as error:
        print(f"points: {error}", file=sys.stderr)
        return 1
    for topic in settings.topics():
        state = "created" if topic.name in created else "already exists"
        policy = "compact" if topic.compacted else "delete"
        print(f"{topic.name}: {state} ({topic.partitions} partitions, cleanup.policy={policy})")
    return 0


def database_settings(service: str) -> ServiceSettings:
    """Only the infrastructure settings of one service, read with its prefix.

    ``TRIGGER_DATABASE_URL`` moves the gateway's schema as it moves the gateway,
    and a migration job needs no service's secrets (the token-key encryption key
    stays with the rules service).
    """
    return ServiceSettings(_env_prefix=f"{service.upper()}_")


async def migrate(args: argparse.Namespace) -> int:
    for schema in SERVICES:
        settings = database_settings(schema)
        applied = await db.migrate_with_retry(
            settings.database_url,
            schema,
            migrations_of(schema),
            timeout=settings.startup_timeout_seconds,
        )
        print(f"{schema}: {len(applied)} migration(s) applied")
    return 0


#: Where a running ``points dev`` takes ``points scale`` requests, in its state directory.
CONTROL_SOCKET = "dev.sock"


async def scale(args: argparse.Namespace) -> int:
    """Ask the running ``points dev`` for more or fewer replicas of some services."""
    path = var_dir() / CONTROL_SOCKET
    try:
        reader, writer = await asyncio.open_unix_connection(path)
    except OSError:
        print(f"points scale: no points dev runs with its state in {var_dir()}", file=sys.stderr)
        return 2
    writer.write(f"scale {args.replicas}\n".encode())
    await writer.drain()
    answer = json.loads(await reader.readline())
    writer.close()
    if "error" in answer:
        print(f"points scale: {answer['error']}", file=sys.stderr)
        return 1
    replicas: dict[str, int] = answer["replicas"]
    if args.json:
        emit(replicas, True)
    else:
        print(", ".join(f"{count} {name}" for name, count in replicas.items()))
    return 0

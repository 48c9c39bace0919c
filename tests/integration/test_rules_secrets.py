"""No secret leaves the rules service after the moment it is shown.

An operator creates a client and rotates its secret the way the CLI does; then
a business user works with it through the API. Neither client secret, neither
callback-signing secret, no password and no argon2 hash may appear in any API
answer, any outbox event or any log line written meanwhile.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
from structlog.testing import capture_logs

from contracts import CLIENTS_LIFECYCLE, ClientLifecycleEvent
from infra.signing import derive_signing_secret
from infra.tokens import TOKEN_PATH
from services.rules.clients import IssuedClient, create_client, rotate_client_secret
from tests.helpers import (
    PASSWORD,
    Client,
    RulesStack,
    bearer,
    login,
    request_token,
    rules_transaction,
)

ARGON2_HASH = re.compile(r"\$argon2(id|i|d)\$")


async def create_client_as_the_cli_does(stack: RulesStack, org_id: str) -> IssuedClient:
    async with rules_transaction(stack.database_url) as connection:
        return await create_client(
            connection,
            org_id=org_id,
            environment="staging",
            name="Bakery app",
            platform_signing_key=stack.settings.callback_signing_key,
        )


async def rotate_as_the_cli_does(stack: RulesStack, client_id: str) -> IssuedClient:
    async with rules_transaction(stack.database_url) as connection:
        return await rotate_client_secret(
            connection,
            client_id,
            platform_signing_key=stack.settings.callback_signing_key,
            overlap=timedelta(seconds=stack.settings.secret_rotation_overlap_seconds),
        )


async def stored_hashes(stack: RulesStack, client_id: str) -> list[str]:
    async with rules_transaction(stack.database_url) as connection:
        row = await connection.fetchrow(
            "SELECT secret_hash, previous_secret_hash FROM api_clients WHERE id = $1", client_id
        )
        passwords = await connection.fetch("SELECT password_hash FROM users")
    hashes = [row["secret_hash"], row["previous_secret_hash"]]
    return hashes + [user["password_hash"] for user in passwords]


async def use_the_api(stack: RulesStack, org_id: str, email: str, clients: list[Client]) -> str:
    """Everything a business user and a developer do with the client; every answer's text."""
    http = stack.http
    answers: list[httpx.Response] = []
    for client in clients:
        answers.append(await request_token(http, client))
    wrong = Client(clients[0].client_id, "not-the-secret")
    answers.append(await request_token(http, wrong))
    headers = bearer(await login(http, email))
    starts = datetime.now(UTC) - timedelta(hours=1)
    rule_body: dict[str, Any] = {
        "name": "Coffee stamps",
        "type": "earn",
        "environment": "staging",
        "apiTrigger": True,
        "authorizedClientIds": [clients[0].client_id],
        "startsAt": starts.isoformat(),
        "endsAt": (starts + timedelta(days=30)).isoformat(),
    }
    created = await http.post("/v1/rules", json=rule_body, headers=headers)
    rule_id = created.json()["id"]
    answers += [
        created,
        await http.post(f"/v1/rules/{rule_id}/activate", headers=headers),
        await http.get("/v1/rules", headers=headers),
        await http.get(f"/v1/rules/{rule_id}", headers=headers),
        await http.get(f"/v1/rules/{rule_id}/share", headers=headers),
        await http.post(
            f"/v1/rules/{rule_id}/share/email", json={"to": ["dev@example.com"]}, headers=headers
        ),
        await http.get("/v1/clients", headers=headers),
        await http.get("/v1/audit", headers=headers),
        await http.get(TOKEN_PATH.rsplit("/", 1)[0] + "/certs"),
    ]
    assert all(answer.status_code < 500 for answer in answers)
    assert [answer.status_code for answer in answers[-9:-1]] == [
        201,
        200,
        200,
        200,
        200,
        202,
        200,
        200,
    ]
    return "\n".join(f"{answer.headers}\n{answer.text}" for answer in answers)


@dataclass(frozen=True)
class Evidence:
    """Everything that left the service while the client was created, rotated and used."""

    secrets: list[str]
    api_answers: str
    outbox_rows: list[str]
    structlog_lines: list[str]
    stdlib_lines: list[str]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def evidence(stack: RulesStack) -> Evidence:
    organisation = await stack.seeder.organisation("Corner Bakery")
    # caplog is function-scoped; this module-scoped fixture keeps its own handler.
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        with capture_logs() as structlog_entries:
            first = await create_client_as_the_cli_does(stack, organisation.id)
            rotated = await rotate_as_the_cli_does(stack, first.client_id)
            answers = await use_the_api(
                stack,
                organisation.id,
                organisation.email,
                [
                    Client(first.client_id, first.client_secret),
                    Client(rotated.client_id, rotated.client_secret),
                ],
            )
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)
    rows = await stack.runtime.pool.fetch("SELECT topic, key, payload, headers FROM outbox")
    secrets = [
        first.client_secret,
        first.callback_signing_secret,
        rotated.client_secret,
        rotated.callback_signing_secret,
        PASSWORD,
        *await stored_hashes(stack, first.client_id),
    ]
    return Evidence(
        secrets=[secret for secret in secrets if secret],
        api_answers=answers,
        outbox_rows=[
            f"{row['topic']} {row['key']} {bytes(row['payload']).decode()} {row['headers']}"
            for row in rows
        ],
        structlog_lines=[repr(entry) for entry in structlog_entries],
        stdlib_lines=[f"{record.getMessage()} {record.__dict__!r}" for record in records],
    )


def leaks(texts: list[str], secrets: list[str]) -> list[str]:
    """The texts that contain a secret or something shaped like an argon2 hash."""
    return [
        text
        for text in texts
        if ARGON2_HASH.search(text) or any(secret in text for secret in secrets)
    ]


class TestNoSecretLeaks:
    async def test_the_secrets_to_look_for_are_all_there(self, evidence: Evidence) -> None:
        # Two client secrets, two signing secrets, a password, and the argon2 hashes of
        # both client secrets and of the user's password.
        assert len(evidence.secrets) == 8
        assert sum(bool(ARGON2_HASH.match(secret)) for secret in evidence.secrets) == 3

    async def test_no_api_answer_carries_a_secret_or_a_hash(self, evidence: Evidence) -> None:
        assert leaks([evidence.api_answers], evidence.secrets) == []

    async def test_no_outbox_event_carries_a_secret_or_a_hash(self, evidence: Evidence) -> None:
        assert (
            len(evidence.outbox_rows) >= 5
        )  # registered, rotated, rule created and activated, e-mail
        assert leaks(evidence.outbox_rows, evidence.secrets) == []

    async def test_no_structlog_line_carries_a_secret_or_a_hash(self, evidence: Evidence) -> None:
        assert any("token.issued" in line for line in evidence.structlog_lines)
        assert leaks(evidence.structlog_lines, evidence.secrets) == []

    async def test_no_standard_library_log_line_carries_a_secret_or_a_hash(
        self, evidence: Evidence
    ) -> None:
        assert leaks(evidence.stdlib_lines, evidence.secrets) == []

    async def test_no_log_line_written_through_pytests_capture_carries_a_secret(
        self, stack: RulesStack, caplog: pytest.LogCaptureFixture
    ) -> None:
        organisation = await stack.seeder.organisation("Second Bakery")
        with caplog.at_level(logging.DEBUG):
            issued = await create_client_as_the_cli_does(stack, organisation.id)
            rotated = await rotate_as_the_cli_does(stack, issued.client_id)
            await request_token(stack.http, Client(rotated.client_id, rotated.client_secret))
        secrets = [
            issued.client_secret,
            issued.callback_signing_secret,
            rotated.client_secret,
            rotated.callback_signing_secret,
        ]
        assert leaks([caplog.text, *map(repr, caplog.records)], secrets) == []


class TestRotationOverlap:
    async def test_the_rotation_event_lets_the_notifier_sign_with_the_old_secret_until_it_ends(
        self, stack: RulesStack
    ) -> None:
        organisation = await stack.seeder.organisation("Overlap Bakery")
        first = await create_client_as_the_cli_does(stack, organisation.id)
        rotated = await rotate_as_the_cli_does(stack, first.client_id)
        rows = await stack.runtime.pool.fetch(
            "SELECT payload FROM outbox WHERE topic = $1 AND key = $2 ORDER BY id",
            CLIENTS_LIFECYCLE,
            first.client_id,
        )
        event = ClientLifecycleEvent.model_validate_json(bytes(rows[-1]["payload"]))
        snapshot = event.data
        key = stack.settings.callback_signing_key

        assert event.type == "client.secret_rotated"
        assert snapshot.previous_signing_key_salt is not None
        previous = derive_signing_secret(key, first.client_id, snapshot.previous_signing_key_salt)
        current = derive_signing_secret(key, first.client_id, snapshot.signing_key_salt)
        assert (previous, current) == (
            first.callback_signing_secret,
            rotated.callback_signing_secret,
        )
        overlap = timedelta(seconds=stack.settings.secret_rotation_overlap_seconds)
        assert snapshot.previous_salt_valid_until is not None
        left = snapshot.previous_salt_valid_until - datetime.now(UTC)
        assert overlap - timedelta(minutes=1) < left <= overlap

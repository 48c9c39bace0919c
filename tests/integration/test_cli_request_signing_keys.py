"""An operator registers, replaces and removes a client's request-signing key with `points`.

The commands run against the database of a running rules service, whose API
(`GET /v1/clients`, `GET /v1/audit`) shows what a business user then sees.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from contracts import CLIENTS_LIFECYCLE, ClientLifecycleEvent
from infra.request_signing import fingerprint, public_pem
from tests.helpers import RulesStack, bearer, login, points


@pytest.fixture
def cli(stack: RulesStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The CLI pointed at the stack's database; returns a directory for key files."""
    monkeypatch.setenv("DATABASE_URL", stack.database_url)
    monkeypatch.setenv("POINTS_MODE", "development")
    monkeypatch.setenv("POINTS_VAR_DIR", str(tmp_path))
    return tmp_path


def last_json(capsys: pytest.CaptureFixture[str]) -> Any:
    """The command's JSON result; the in-process rules service logs to stdout around it."""
    lines = capsys.readouterr().out.splitlines()
    return json.loads(next(line for line in reversed(lines) if line.startswith("{")))


def key_file(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def ec_public_key() -> ec.EllipticCurvePublicKey:
    return ec.generate_private_key(ec.SECP256R1()).public_key()


async def listed_clients(stack: RulesStack, email: str) -> dict[str, dict[str, Any]]:
    response = await stack.http.get("/v1/clients", headers=bearer(await login(stack.http, email)))
    assert response.status_code == 200, response.text
    return {client["clientId"]: client for client in response.json()["items"]}


async def key_events(stack: RulesStack, client_id: str) -> list[ClientLifecycleEvent]:
    """The client's lifecycle events in the rules service's outbox, oldest first."""
    rows = await stack.runtime.pool.fetch(
        "SELECT payload FROM outbox WHERE topic = $1 AND key = $2 ORDER BY id",
        CLIENTS_LIFECYCLE,
        client_id,
    )
    return [ClientLifecycleEvent.model_validate_json(row["payload"]) for row in rows]


async def create_client(
    stack: RulesStack, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[str, dict[str, Any]]:
    """A new organisation's email and the JSON of `points client create` for it."""
    organisation = await stack.seeder.organisation()
    args = ["--org", organisation.id, "--environment", "staging", "--name", "Signed app"]
    assert await points("client", "create", *args, *extra, "--json") == 0
    return organisation.email, last_json(capsys)


class TestRegisteringAKey:
    async def test_a_client_created_with_a_public_key_shows_it_and_publishes_it(
        self, stack: RulesStack, cli: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        public_key = ec_public_key()
        path = key_file(cli, "client-public.pem", public_pem(public_key))

        email, created = await create_client(stack, capsys, "--public-key", str(path))

        assert created["requestSigningKeyFingerprint"] == fingerprint(public_key)
        listed = (await listed_clients(stack, email))[created["clientId"]]
        assert listed["requestSigningKey"] == public_pem(public_key)
        assert listed["requestSigningKeyFingerprint"] == fingerprint(public_key)
        [event] = await key_events(stack, created["clientId"])
        assert (event.type, event.data.request_signing_key) == (
            "client.registered",
            public_pem(public_key),
        )

    async def test_a_client_created_without_a_key_lists_none(
        self, stack: RulesStack, cli: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        email, created = await create_client(stack, capsys)

        listed = (await listed_clients(stack, email))[created["clientId"]]
        assert "requestSigningKeyFingerprint" not in created
        assert listed["requestSigningKey"] is None

    async def test_a_pkcs1_rsa_key_is_stored_in_the_standard_public_key_form(
        self, stack: RulesStack, cli: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        public_key = rsa.generate_private_key(65537, 3072).public_key()
        pkcs1 = public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
        ).decode()

        email, created = await create_client(
            stack, capsys, "--public-key", str(key_file(cli, "rsa.pem", pkcs1))
        )

        listed = (await listed_clients(stack, email))[created["clientId"]]
        assert listed["requestSigningKey"] == public_pem(public_key)


class TestChangingAKey:
    async def test_replacing_the_key_is_audited_with_both_fingerprints_and_published(
        self, stack: RulesStack, cli: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        first, second = ec_public_key(), rsa.generate_private_key(65537, 2048).public_key()
        path = key_file(cli, "first.pem", public_pem(first))
        email, created = await create_client(stack, capsys, "--public-key", str(path))
        client_id = created["clientId"]

        replacement = key_file(cli, "second.pem", public_pem(second))
        assert await points("client", "set-public-key", client_id, str(replacement), "--json") == 0

        assert last_json(capsys) == {
            "clientId": client_id,
            "requestSigningKeyFingerprint": fingerprint(second),
        }
        listed = (await listed_clients(stack, email))[client_id]
        assert listed["requestSigningKey"] == public_pem(second)
        audit = await stack.http.get("/v1/audit", headers=bearer(await login(stack.http, email)))
        [line] = [
            item
            for item in audit.json()["items"]
            if item["action"] == "client.request_signing_key_changed"
        ]
        assert line["subjectId"] == client_id and line["actor"] == "operator"
        assert line["details"]["before"] == {"requestSigningKey": fingerprint(first)}
        assert line["details"]["after"] == {"requestSigningKey": fingerprint(second)}
        events = await key_events(stack, client_id)
        assert events[-1].type == "client.request_signing_key_changed"
        assert events[-1].data.request_signing_key == public_pem(second)

    async def test_removing_the_key_publishes_a_client_without_one(
        self, stack: RulesStack, cli: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        path = key_file(cli, "key.pem", public_pem(ec_public_key()))
        email, created = await create_client(stack, capsys, "--public-key", str(path))
        client_id = created["clientId"]

        assert await points("client", "set-public-key", client_id, "--remove", "--json") == 0

        assert last_json(capsys)["requestSigningKeyFingerprint"] is None
        assert (await listed_clients(stack, email))[client_id]["requestSigningKey"] is None
        events = await key_events(stack, client_id)
        assert events[-1].type == "client.request_signing_key_changed"
        assert events[-1].data.request_signing_key is None

    async def test_setting_the_same_key_again_changes_and_publishes_nothing(
        self, stack: RulesStack, cli: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        path = key_file(cli, "key.pem", public_pem(ec_public_key()))
        _, created = await create_client(stack, capsys, "--public-key", str(path))

        assert await points("client", "set-public-key", created["clientId"], str(path)) == 0

        assert len(await key_events(stack, created["clientId"])) == 1

    async def test_a_revoked_clients_key_cannot_be_changed(
        self, stack: RulesStack, cli: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        _, created = await create_client(stack, capsys)
        assert await points("client", "revoke", created["clientId"]) == 0
        path = key_file(cli, "key.pem", public_pem(ec_public_key()))

        assert await points("client", "set-public-key", created["clientId"], str(path)) == 1

        assert "is revoked" in capsys.readouterr().err


class TestRefusedKeys:
    @pytest.mark.parametrize(
        ("make_text", "message"),
        [
            (
                lambda: public_pem(ec.generate_private_key(ec.SECP384R1()).public_key()),  # type: ignore[arg-type]
                "only P-256",
            ),
            (
                lambda: (
                    rsa.generate_private_key(65537, 1024)  # noqa: S505 - the point of the test
                    .public_key()
                    .public_bytes(
                        serialization.Encoding.PEM,
                        serialization.PublicFormat.SubjectPublicKeyInfo,
                    )
                    .decode()
                ),
                "1024 bits",
            ),
            (
                lambda: (
                    ec.generate_private_key(ec.SECP256R1())
                    .private_bytes(
                        serialization.Encoding.PEM,
                        serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption(),
                    )
                    .decode()
                ),
                "this is a private key",
            ),
            (lambda: "ssh-ed25519 AAAAC3Nza... me@laptop\n", "not a PEM public key"),
        ],
        ids=["ec-p384", "rsa-1024", "private-key", "ssh-key"],
    )
    async def test_a_refused_key_leaves_the_client_as_it_was(
        self,
        stack: RulesStack,
        cli: Path,
        capsys: pytest.CaptureFixture[str],
        make_text: Any,
        message: str,
    ) -> None:
        good = key_file(cli, "good.pem", public_pem(ec_public_key()))
        email, created = await create_client(stack, capsys, "--public-key", str(good))
        client_id = created["clientId"]
        bad = key_file(cli, "bad.pem", make_text())

        assert await points("client", "set-public-key", client_id, str(bad), "--json") == 1

        error = capsys.readouterr().err
        assert "public key refused" in error and message in error
        assert "PRIVATE KEY" not in error
        listed = (await listed_clients(stack, email))[client_id]
        assert listed["requestSigningKey"] == good.read_text()
        assert len(await key_events(stack, client_id)) == 1

    async def test_no_client_is_created_with_a_refused_key(
        self, stack: RulesStack, cli: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        organisation = await stack.seeder.organisation()
        bad = key_file(
            cli, "bad.pem", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
        )
        args = ["--org", organisation.id, "--environment", "staging", "--name", "App"]

        assert await points("client", "create", *args, "--public-key", str(bad), "--json") == 1

        assert "public key refused: not a PEM public key" in capsys.readouterr().err
        assert await listed_clients(stack, organisation.email) == {}

    async def test_a_missing_key_file_is_named_in_the_error(
        self, stack: RulesStack, cli: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        _, created = await create_client(stack, capsys)
        missing = cli / "nowhere.pem"

        assert await points("client", "set-public-key", created["clientId"], str(missing)) == 1

        assert f"cannot read public key file {missing}" in capsys.readouterr().err

"""The rules service's OpenAPI document describes every endpoint, with example bodies."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from services.rules import schemas
from services.rules.app import create_app
from services.rules.settings import RulesSettings

METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    app, _ = create_app(RulesSettings(mode="development"))
    return app.openapi()


def operations(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            if method in METHODS:
                yield f"{method.upper()} {path}", operation


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    target: dict[str, Any] = document
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return target


def has_example(document: dict[str, Any], media: dict[str, Any]) -> bool:
    """True when a request body's media type, or its schema, carries an example."""
    if media.get("example") is not None or media.get("examples"):
        return True
    schema = media.get("schema", {})
    candidates = [schema, *schema.get("anyOf", []), *schema.get("oneOf", [])]
    return any(resolve(document, candidate).get("examples") for candidate in candidates)


class TestTheOpenApiDocument:
    def test_it_lists_the_console_and_token_endpoints(self, document: dict[str, Any]) -> None:
        named = {name for name, _ in operations(document)}

        assert {
            "POST /v1/rules",
            "POST /realms/partner/protocol/openid-connect/token",
            "GET /docs/integration-guide",
        } <= named

    def test_every_operation_has_a_summary_and_a_description(
        self, document: dict[str, Any]
    ) -> None:
        undescribed = [
            name
            for name, operation in operations(document)
            if not operation.get("summary") or not operation.get("description", "").strip()
        ]

        assert undescribed == []

    def test_every_request_body_has_an_example(self, document: dict[str, Any]) -> None:
        bodies = [
            (name, media)
            for name, operation in operations(document)
            for media in operation.get("requestBody", {}).get("content", {}).values()
        ]
        without_example = [name for name, media in bodies if not has_example(document, media)]

        assert len(bodies) >= 8  # login, token, create, update, three transitions, e-mail
        assert without_example == []

    def test_the_examples_are_valid_request_bodies(self) -> None:
        for model in (
            schemas.LoginRequest,
            schemas.RuleCreate,
            schemas.RuleUpdate,
            schemas.StatusChange,
            schemas.ShareEmailRequest,
        ):
            for example in model.model_json_schema()["examples"]:
                model.model_validate(example)

"""`make docs` documents every service: its Kafka side (AsyncAPI) and HTTP side (OpenAPI)."""

from __future__ import annotations

import pytest

from contracts import (
    CLIENTS_LIFECYCLE,
    INVITATIONS_REQUESTED,
    MEMBERS_LIFECYCLE,
    NOTIFICATIONS_REQUESTED,
    POINTS_REQUESTED,
    POINTS_RESULTS,
    RULES_LIFECYCLE,
    USERS_LIFECYCLE,
)
from infra.settings import SERVICES, project_root
from points_cli import configuration
from points_cli.docs import _document

PUBLISHED = {
    "rules": {
        RULES_LIFECYCLE,
        CLIENTS_LIFECYCLE,
        MEMBERS_LIFECYCLE,
        NOTIFICATIONS_REQUESTED,
        USERS_LIFECYCLE,
        INVITATIONS_REQUESTED,
    },
    "trigger": {POINTS_REQUESTED},
    "ledger": {POINTS_RESULTS},
    "notifier": set(),
}
CONSUMED = {
    "rules": {POINTS_RESULTS},
    "trigger": {RULES_LIFECYCLE, CLIENTS_LIFECYCLE, MEMBERS_LIFECYCLE, POINTS_RESULTS},
    "ledger": {POINTS_REQUESTED, CLIENTS_LIFECYCLE, MEMBERS_LIFECYCLE, USERS_LIFECYCLE},
    "notifier": {
        CLIENTS_LIFECYCLE,
        POINTS_RESULTS,
        NOTIFICATIONS_REQUESTED,
        INVITATIONS_REQUESTED,
        USERS_LIFECYCLE,
    },
}


@pytest.mark.parametrize("service", SERVICES)
class TestServiceDocuments:
    def test_the_asyncapi_document_names_every_topic_the_service_uses(self, service: str) -> None:
        asyncapi, _ = _document(service)
        topics = {channel["address"] for channel in asyncapi["channels"].values()}
        assert topics == PUBLISHED[service] | CONSUMED[service]

    def test_the_openapi_document_has_the_health_endpoints(self, service: str) -> None:
        _, openapi = _document(service)
        assert {"/healthz", "/readyz"} <= set(openapi["paths"])


class TestTheConfigurationPage:
    def test_is_what_the_settings_classes_say_today(self) -> None:
        committed = (project_root() / configuration.PAGE).read_text()
        assert committed == configuration.render(), (
            "docs/configuration.md is out of date: run `python -m points_cli.configuration`"
        )

    @pytest.mark.parametrize("service", SERVICES)
    def test_lists_every_variable_a_service_reads(self, service: str) -> None:
        page = configuration.render()
        cls = configuration.settings_class(service)
        prefix = str(cls.model_config.get("env_prefix"))
        for name, field in cls.model_fields.items():
            documented = configuration.variables(name, field, prefix)
            shared = configuration.variables(name, field, "<SERVICE>_")
            assert any(f"`{variable}`" in page for variable in documented + shared), name

    def test_refuses_a_setting_without_a_description(self) -> None:
        from pydantic import Field

        with pytest.raises(ValueError, match="without a description"):
            configuration.meaning(Field(default=1))

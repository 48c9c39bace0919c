"""`make docs` documents every service: its Kafka side (AsyncAPI) and HTTP side (OpenAPI)."""

from __future__ import annotations

import pytest

from contracts import (
    CLIENTS_LIFECYCLE,
    NOTIFICATIONS_REQUESTED,
    POINTS_REQUESTED,
    POINTS_RESULTS,
    RULES_LIFECYCLE,
)
from points_cli.docs import SERVICES, _document

PUBLISHED = {
    "rules": {RULES_LIFECYCLE, CLIENTS_LIFECYCLE, NOTIFICATIONS_REQUESTED},
    "trigger": {POINTS_REQUESTED},
    "ledger": {POINTS_RESULTS},
    "notifier": set(),
}
CONSUMED = {
    "rules": {POINTS_RESULTS},
    "trigger": {RULES_LIFECYCLE, CLIENTS_LIFECYCLE, POINTS_RESULTS},
    "ledger": {POINTS_REQUESTED},
    "notifier": {CLIENTS_LIFECYCLE, POINTS_RESULTS, NOTIFICATIONS_REQUESTED},
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

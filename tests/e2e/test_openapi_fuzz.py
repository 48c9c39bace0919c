"""Each service's OpenAPI document, fuzzed against the running platform by schemathesis.

Every operation of the rules API, the trigger gateway, the ledger and the
notifier gets requests that fit its schema and requests that break it (wrong
types, out-of-range numbers, missing fields, unknown parameters), sent with
credentials that let them reach the handlers: a business user's token for the
rules API and the ledger, a developer's client token for the gateway (the
notifier's operator endpoints are open in development). Operations with path
parameters are also fuzzed with ids that exist (the organisation's rule, a
member with a transaction, a settled request), so their bodies reach the
service code rather than a 404. No answer may be a 5xx, and every answer must
be one the document describes: its status, its content type and its body's
schema (schemathesis's conformance checks), so a client generated from the
document can read whatever the service says.

Generated strings and headers carry no control characters (NUL, C0, DEL, C1):
the fuzzer leaves those out, since refusing them is the job of the text type in
``contracts/text.py``, and the hostile-client suite tries them in every field.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    Failure,
    FailureGroup,
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Ok
from schemathesis.schemas import APIOperation

from infra.dev.launcher import RunningPlatform
from tests.e2e.test_platform import business_with_an_active_rule
from tests.e2e.test_poison_messages import developer_headers
from tests.helpers import eventually, running_platform

pytestmark = pytest.mark.e2e

#: Generated cases per operation and generation mode (schema-conforming, schema-breaking),
#: and again with known path parameters. Raise it to fuzz harder locally.
EXAMPLES = int(os.environ.get("POINTS_FUZZ_EXAMPLES", "30"))
#: Left out of generated strings and headers (see the module's docstring).
CONTROL_CHARACTERS = "".join(chr(code) for code in [*range(0x20), *range(0x7F, 0xA0)])
# Rules last: the fuzzer may archive the rule whose ids the other services are fuzzed with.
SERVICES = ("trigger", "ledger", "notifier", "rules")
#: What every answer is checked for: not a 5xx, and described by the document.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@dataclass
class Target:
    """One service as the fuzzer reaches it: credentials and ids that exist."""

    headers: dict[str, str]
    known: dict[str, Any] = field(default_factory=dict)
    #: Body fields set to values that exist in a share of the cases (a rule's id).
    body: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="module")
def platform() -> Iterator[RunningPlatform]:
    with running_platform("points-fuzz-") as running:
        yield running


@pytest.fixture(scope="module")
async def targets(platform: RunningPlatform) -> dict[str, Target]:
    async with httpx.AsyncClient(timeout=10) as http:
        business = await business_with_an_active_rule(platform, http, "Fuzz Works", "Fuzz points")
        developer = await developer_headers(platform, http, business)
        trigger = {"userId": "member-1", "ruleId": business.rule_id, "amount": 5}

        async def settled() -> dict[str, Any] | None:
            accepted = await http.post(
                f"{platform.urls['trigger']}/v1/points/requests",
                headers=developer,
                json={**trigger, "requestId": "fuzz-1"},
            )
            if accepted.status_code not in (200, 202):
                return None
            status = await http.get(
                f"{platform.urls['trigger']}/v1/points/requests/fuzz-1", headers=developer
            )
            return status.json() if status.json()["status"] != "pending" else None

        outcome = await eventually(settled, what="a trigger to settle")
    rule = {"rule_id": business.rule_id}
    return {
        # Not a service: what the generated client's test needs.
        "generated": Target(developer, {"rule_id": business.rule_id}),
        "rules": Target(business.console, rule),
        "trigger": Target(developer, {"request_id": "fuzz-1"}, {"ruleId": business.rule_id}),
        "ledger": Target(
            business.console,
            {**rule, "user_id": "member-1", "transaction_id": outcome["transactionId"]},
        ),
        "notifier": Target({}, {"delivery_id": 1}),
    }


def operations(platform: RunningPlatform, service: str) -> list[APIOperation]:
    schema = schemathesis.openapi.from_url(f"{platform.urls[service]}/openapi.json")
    schema.config.generation.update(
        allow_x00=False,
        exclude_header_characters=CONTROL_CHARACTERS,
        with_security_parameters=False,
    )
    return [result.ok() for result in schema.get_all_operations() if isinstance(result, Ok)]


def cases(operation: APIOperation, target: Target) -> st.SearchStrategy[Any]:
    """Schema-conforming and schema-breaking cases; and with the ids that exist, where the
    operation takes them in its path or body."""
    names = {parameter.name for parameter in operation.path_parameters}
    fixed = {name: value for name, value in target.known.items() if name in names}
    strategies = [
        operation.as_strategy(generation_mode=mode)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    ]
    if names and fixed.keys() == names:
        strategies.append(operation.as_strategy(path_parameters=fixed))
    if target.body and operation.body:
        strategies.append(operation.as_strategy().map(lambda case: with_body(case, target.body)))
    return st.one_of(strategies)


def with_body(case: Any, fields: dict[str, Any]) -> Any:
    if isinstance(case.body, dict):
        case.body = {**case.body, **fields}
    return case


def printable(value: Any) -> bool:
    """True when no string inside ``value`` holds a control character."""
    if isinstance(value, str):
        return not any(character in CONTROL_CHARACTERS for character in value)
    if isinstance(value, dict):
        return all(printable(key) and printable(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return all(printable(item) for item in value)
    return True


@dataclass
class FuzzRun:
    statuses: Counter[int] = field(default_factory=Counter)
    #: Each answer the checks refused, once per operation, check and status.
    failures: dict[tuple[str, str, int], str] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return self.statuses.total()


def fuzz(base_url: str, operation: APIOperation, target: Target, run: FuzzRun) -> None:
    session = requests.Session()

    @settings(
        max_examples=EXAMPLES * 3,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(cases(operation, target))
    def one_request(case: Any) -> None:
        parts = (case.path_parameters, case.query, case.headers, case.body)
        if not all(printable(part) for part in parts):
            return
        response = case.call(base_url=base_url, session=session, headers=target.headers, timeout=10)
        run.statuses[response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS, headers=target.headers)
        except (FailureGroup, Failure) as error:
            failures = error.exceptions if isinstance(error, FailureGroup) else [error]
            for failure in failures:
                key = (operation.label, type(failure).__name__, response.status_code)
                run.failures.setdefault(
                    key,
                    f"{operation.label}: {response.status_code} {failure.title}: "
                    f"{failure.message[:300]}\n  {case.as_curl_command()}\n  {response.text[:300]}",
                )

    one_request()


#: openapi-python-client's settings: no formatter run over the code it writes.
GENERATOR_CONFIG = "post_hooks: []\npackage_name_override: gateway_client\n"


def generated_gateway_client(platform: RunningPlatform, folder: Path) -> ModuleType:
    """A client generated from the document the running gateway serves, imported as it is."""
    document = folder / "gateway.json"
    document.write_bytes(
        requests.get(f"{platform.urls['trigger']}/openapi.json", timeout=10).content
    )
    config = folder / "generator.yaml"
    config.write_text(GENERATOR_CONFIG)
    generated = subprocess.run(
        [
            str(Path(sys.executable).parent / "openapi-python-client"),
            "generate",
            "--path",
            str(document),
            "--config",
            str(config),
            "--meta",
            "none",
            "--output-path",
            str(folder / "gateway_client"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert generated.returncode == 0, generated.stdout + generated.stderr
    assert "Warning" not in generated.stdout, generated.stdout
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module("gateway_client")
    finally:
        sys.path.remove(str(folder))


# Before the fuzz run, which may pause or archive the rule it triggers.
async def test_a_client_generated_from_the_gateways_document_triggers_and_reads_the_outcome(
    platform: RunningPlatform, targets: dict[str, Target], tmp_path: Path
) -> None:
    generated_gateway_client(platform, tmp_path)
    from gateway_client import AuthenticatedClient  # type: ignore[import-not-found]
    from gateway_client.api.points import (  # type: ignore[import-not-found]
        get_points_request,
        trigger_points,
    )
    from gateway_client.models import (  # type: ignore[import-not-found]
        RequestStatus,
        TriggerAccepted,
        TriggerRequest,
    )

    token = targets["generated"].headers["Authorization"].removeprefix("Bearer ")
    rule_id = targets["generated"].known["rule_id"]
    client = AuthenticatedClient(base_url=platform.urls["trigger"], token=token)

    accepted = await trigger_points.asyncio_detailed(
        client=client,
        body=TriggerRequest(user_id="member-gen", rule_id=rule_id, amount=7, request_id="gen-1"),
    )
    assert accepted.status_code == 202, accepted.content
    assert isinstance(accepted.parsed, TriggerAccepted)
    assert accepted.parsed.status == "pending"
    assert "RateLimit" in accepted.headers  # as the document says it comes

    async def settled() -> Any:
        status = await get_points_request.asyncio(request_id="gen-1", client=client)
        assert isinstance(status, RequestStatus), status
        return status if status.status != "pending" else None

    outcome = await eventually(settled, what="the generated client to read the outcome")
    assert outcome.status == "succeeded"
    assert outcome.transaction_id == accepted.parsed.transaction_id

    refused = await trigger_points.asyncio_detailed(
        client=client,
        body=TriggerRequest(user_id="member-gen", rule_id="rul_none", amount=1, request_id="gen-2"),
    )
    assert refused.status_code == 400
    assert refused.parsed.code == "RULE_NOT_FOUND"
    assert refused.parsed.type_.endswith("/problems/rule-not-found")


@pytest.mark.parametrize("service", SERVICES)
def test_every_fuzzed_answer_is_one_the_document_describes(
    platform: RunningPlatform, targets: dict[str, Target], service: str
) -> None:
    run = FuzzRun()
    base_url = platform.urls[service]
    for operation in operations(platform, service):
        fuzz(base_url, operation, targets[service], run)
    statuses = ", ".join(f"{status}: {count}" for status, count in sorted(run.statuses.items()))
    print(
        f"\nopenapi fuzz: {service}: {run.requests} requests ({statuses}), "
        f"{len(run.failures)} failures"
    )
    assert not run.failures, "\n".join(run.failures.values())
    # The credentials work: most requests reach the handlers rather than bounce on a 401.
    assert run.statuses[401] < run.requests / 4, run.statuses

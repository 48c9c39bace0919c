"""The deployment files, checked offline for what an operator relies on when applying them.

Each Kubernetes overlay is rendered with ``kubectl kustomize`` (the test fails,
not skips, without kubectl: CI installs it). The environment variables are
checked against the services' own pydantic-settings classes: every setting a
service cannot run without outside development must be set, every variable
set must be one the platform reads, and each service's settings must load
from exactly what the manifest gives it.
"""

from __future__ import annotations

import base64
import functools
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices, ValidationError

from contracts.topics import ALL_TOPICS, POINTS_REQUESTED, POINTS_RESULTS
from infra.settings import SHARED_NAMES, ServiceSettings, shared_env_name
from services.ledger.settings import LedgerSettings
from services.notifier.settings import NotifierSettings
from services.rules.settings import RulesSettings
from services.trigger.settings import TriggerSettings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
COMPOSE_FILE = REPO / "deploy" / "compose.yaml"
ENVIRONMENTS = ("staging", "production")

SERVICES: dict[str, type[ServiceSettings]] = {
    "rules": RulesSettings,
    "trigger": TriggerSettings,
    "ledger": LedgerSettings,
    "notifier": NotifierSettings,
}
#: The topic whose partitions bound a service's useful replicas (its busiest consumer group).
CONSUMED_TOPIC = {"ledger": POINTS_REQUESTED, "notifier": POINTS_RESULTS}
PARTITIONS = {topic.name: topic.partitions for topic in ALL_TOPICS}
LOOPBACK = ("127.0.0.1", "localhost")

Document = dict[str, Any]


# --- what the settings classes read ------------------------------------------


def env_names(settings: type[ServiceSettings], field_name: str) -> set[str]:
    """Every variable that sets ``field_name``: its alias choices, or prefixed and shared names."""
    alias = settings.model_fields[field_name].validation_alias
    if isinstance(alias, AliasChoices):
        return {str(choice).upper() for choice in alias.choices}
    prefix = str(settings.model_config.get("env_prefix", ""))
    names = {f"{prefix}{field_name}".upper()}
    if field_name in SHARED_NAMES:
        names.add(shared_env_name(field_name))
    return names


def every_env_name() -> set[str]:
    classes = [ServiceSettings, *SERVICES.values()]
    return {name for cls in classes for field in cls.model_fields for name in env_names(cls, field)}


def required_fields(settings: type[ServiceSettings]) -> set[str]:
    """Fields a deployment must set: no default, a loopback default, or one only
    development mode fills in (the local SMTP sink, the placeholder signing key)."""
    development = settings(mode="development")
    required = set()
    for name, field in settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if (
            field.is_required()
            or any(host in str(default) for host in LOOPBACK)
            or getattr(development, name) != default
        ):
            required.add(name)
    return required


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Replace the process environment's platform variables with a manifest's."""
    for name in every_env_name():
        monkeypatch.delenv(name, raising=False)

    def use(variables: dict[str, str]) -> None:
        for name in every_env_name():
            monkeypatch.delenv(name, raising=False)
        for name, value in variables.items():
            monkeypatch.setenv(name, value)

    yield use


# --- Kubernetes ---------------------------------------------------------------


@functools.cache
def kustomize(path: Path) -> tuple[Document, ...]:
    """The rendered manifests; kustomize must not warn (deprecated fields)."""
    if shutil.which("kubectl") is None:
        pytest.fail("kubectl is needed to render deploy/k8s (.ci/run installs it)")
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert rendered.returncode == 0, rendered.stderr
    assert rendered.stderr == "", rendered.stderr
    return tuple(document for document in yaml.safe_load_all(rendered.stdout) if document)


def overlay(env: str) -> tuple[Document, ...]:
    return kustomize(K8S / "overlays" / env)


def find(documents: tuple[Document, ...], kind: str, name: str | None = None) -> list[Document]:
    return [
        document
        for document in documents
        if document["kind"] == kind and (name is None or document["metadata"]["name"] == name)
    ]


def one(documents: tuple[Document, ...], kind: str, name: str) -> Document:
    found = find(documents, kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def container_of(workload: Document) -> Document:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def k8s_environment(documents: tuple[Document, ...], container: Document) -> dict[str, str]:
    """The variables a container is sure to get; a required Secret key stands for a random
    secret (its real value lives outside the repository), an optional one is left out."""
    variables: dict[str, str] = {}
    for source in container.get("envFrom", []):
        config = one(documents, "ConfigMap", source["configMapRef"]["name"])
        variables.update(config["data"])
    for item in container.get("env", []):
        if "value" in item:
            variables[item["name"]] = item["value"]
        elif not item["valueFrom"]["secretKeyRef"].get("optional", False):
            variables[item["name"]] = secrets.token_urlsafe(32)
    return variables


@pytest.mark.parametrize("env", ENVIRONMENTS)
class TestKubernetesOverlays:
    def test_every_service_has_probes_resources_and_a_non_root_pod(self, env: str) -> None:
        documents = overlay(env)
        for name, settings in SERVICES.items():
            deployment = one(documents, "Deployment", name)
            container = container_of(deployment)
            port = settings.model_fields["port"].default
            assert container["ports"] == [{"name": "http", "containerPort": port}]
            assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
            assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
            for kind in ("requests", "limits"):
                assert set(container["resources"][kind]) == {"cpu", "memory"}, (name, kind)
            assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"]
            assert container["args"] == [name]

    def test_every_service_has_a_service_and_a_disruption_budget_over_its_pods(
        self, env: str
    ) -> None:
        documents = overlay(env)
        for name in SERVICES:
            pods = one(documents, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
            service = one(documents, "Service", name)
            budget = one(documents, "PodDisruptionBudget", name)
            assert service["spec"]["selector"].items() <= pods.items()
            assert budget["spec"]["selector"]["matchLabels"].items() <= pods.items()
            assert budget["spec"].get("maxUnavailable") == 1

    def test_consumers_never_outnumber_the_partitions_of_their_topic(self, env: str) -> None:
        documents = overlay(env)
        for name, topic in CONSUMED_TOPIC.items():
            replicas = one(documents, "Deployment", name)["spec"]["replicas"]
            assert 1 <= replicas <= PARTITIONS[topic], (name, replicas, topic)

    def test_the_gateway_scales_on_cpu(self, env: str) -> None:
        documents = overlay(env)
        autoscaler = one(documents, "HorizontalPodAutoscaler", "trigger")
        spec = autoscaler["spec"]
        assert spec["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "trigger",
        }
        assert [metric["resource"]["name"] for metric in spec["metrics"]] == ["cpu"]
        assert 2 <= spec["minReplicas"] < spec["maxReplicas"]
        assert find(documents, "HorizontalPodAutoscaler") == [autoscaler]

    def test_jobs_migrate_every_schema_and_create_every_topic(self, env: str) -> None:
        documents = overlay(env)
        migrate = container_of(one(documents, "Job", "points-migrate"))
        topics = container_of(one(documents, "Job", "points-topics"))
        assert migrate["args"] == ["points", "migrate"]
        assert topics["args"][:3] == ["points", "topics", "create"]

    def test_each_service_loads_its_settings_from_exactly_what_the_manifest_gives_it(
        self, env: str, environment: Any
    ) -> None:
        documents = overlay(env)
        loaded = {}
        for name, settings in SERVICES.items():
            variables = k8s_environment(documents, container_of(one(documents, "Deployment", name)))
            assert_complete(name, settings, variables)
            environment(variables)
            loaded[name] = settings()
            assert loaded[name].mode == "production"
        assert_one_token_issuer(loaded)

    def test_jobs_get_the_settings_their_commands_read(self, env: str, environment: Any) -> None:
        documents = overlay(env)
        jobs = {
            "points-migrate": (RulesSettings, "database_url"),
            "points-topics": (ServiceSettings, "kafka_bootstrap_servers"),
        }
        for job, (settings, needed) in jobs.items():
            variables = k8s_environment(documents, container_of(one(documents, "Job", job)))
            assert env_names(settings, needed) & variables.keys(), (job, needed)
            assert set(variables) <= every_env_name(), job
            environment(variables)
            settings()


def assert_complete(
    service: str, settings: type[ServiceSettings], variables: dict[str, str]
) -> None:
    missing = [
        sorted(env_names(settings, field))
        for field in sorted(required_fields(settings))
        if not env_names(settings, field) & variables.keys()
    ]
    assert not missing, f"{service} needs one of each of {missing}"
    unknown = set(variables) - every_env_name()
    assert not unknown, f"{service} is given variables no service reads: {sorted(unknown)}"


def assert_one_token_issuer(loaded: dict[str, Any]) -> None:
    """Tokens carry `<RULES_PUBLIC_URL>/realms/partner`; the gateway and the ledger check it."""
    issuer = loaded["rules"].public_url
    assert loaded["trigger"].token_issuer_url == issuer
    assert loaded["ledger"].token_issuer_url == issuer


class TestProductionOverlay:
    def test_runs_in_production_mode_on_real_servers_with_no_loopback_address(self) -> None:
        documents = overlay("production")
        config = one(documents, "ConfigMap", find(documents, "ConfigMap")[0]["metadata"]["name"])
        data = config["data"]
        assert data["POINTS_MODE"] == "production"
        assert data["KAFKA_IDEMPOTENT_PRODUCER"] == "true"
        assert data["KAFKA_SECURITY_PROTOCOL"] in {"SSL", "SASL_SSL"}
        assert not [value for value in data.values() if any(host in value for host in LOOPBACK)]
        assert not [name for name in data if name.startswith("DEV_")]

    def test_takes_its_secrets_from_a_secret_managed_outside_the_repository(self) -> None:
        documents = overlay("production")
        assert find(documents, "Secret") == []
        references = {
            item["valueFrom"]["secretKeyRef"]["name"]
            for deployment in find(documents, "Deployment")
            for item in container_of(deployment)["env"]
            if "valueFrom" in item
        }
        assert references == {"points-secrets"}

    def test_pins_the_image_to_a_release(self) -> None:
        for deployment in find(overlay("production"), "Deployment"):
            image = container_of(deployment)["image"]
            name, _, tag = image.rpartition(":")
            assert name and tag and tag != "latest", image


class TestStagingOverlay:
    def test_its_example_secrets_are_refused_until_replaced(self, environment: Any) -> None:
        documents = overlay("staging")
        secret = one(documents, "Secret", find(documents, "Secret")[0]["metadata"]["name"])
        values = {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}
        deployment = one(documents, "Deployment", "notifier")
        variables = k8s_environment(documents, container_of(deployment))
        variables["DATABASE_URL"] = values["database-url"]
        variables["CALLBACK_SIGNING_KEY"] = values["callback-signing-key"]
        environment(variables)

        with pytest.raises(ValidationError, match="placeholder"):
            NotifierSettings()


class TestStrimziTopics:
    def test_match_the_topic_plan_of_the_contracts(self) -> None:
        topics = find(kustomize(K8S / "strimzi-topics"), "KafkaTopic")
        declared = {
            topic["spec"]["topicName"]: (
                topic["spec"]["partitions"],
                topic["spec"]["config"]["cleanup.policy"],
            )
            for topic in topics
        }
        assert declared == {
            topic.name: (topic.partitions, "compact" if topic.compacted else "delete")
            for topic in ALL_TOPICS
        }
        assert all(topic["spec"]["replicas"] >= 3 for topic in topics)


# --- compose --------------------------------------------------------------------

INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:[?-])(?P<arg>[^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose's ``${NAME:?error}`` (a secret from deploy/.env) and ``${NAME:-default}``."""

    def replace(match: re.Match[str]) -> str:
        return match["arg"] if match["op"] == ":-" else secrets.token_urlsafe(32)

    return INTERPOLATION.sub(replace, value)


@functools.cache
def compose() -> Document:
    loaded: Document = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


def compose_environment(service: str) -> dict[str, str]:
    variables = compose()["services"][service]["environment"]
    return {name: interpolate(str(value)) for name, value in variables.items()}


class TestComposeStack:
    def test_every_long_running_container_has_a_health_check(self) -> None:
        for name, service in compose()["services"].items():
            if service.get("restart") != "no":
                assert service["healthcheck"]["test"], name

    def test_services_wait_for_the_init_job_and_a_healthy_database_and_broker(self) -> None:
        for name in SERVICES:
            depends = compose()["services"][name]["depends_on"]
            assert depends["init"] == {"condition": "service_completed_successfully"}, name
            assert depends["postgres"] == depends["kafka"] == {"condition": "service_healthy"}
            assert compose()["services"][name]["command"] == [name]

    def test_the_init_job_creates_every_topic_and_migrates_every_schema(self) -> None:
        init = compose()["services"]["init"]
        script = init["command"][-1]
        assert "points topics create" in script and "points migrate" in script
        # Topics come only from that job, with their partition counts and cleanup policy.
        kafka = compose()["services"]["kafka"]["environment"]
        assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
        assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller"

    def test_every_image_is_pinned_to_a_version(self) -> None:
        for name, service in compose()["services"].items():
            image = service["image"]
            if "build" in service:
                continue
            _, _, tag = image.rpartition(":")
            assert re.match(r"v?\d+\.\d+", tag), (name, image)

    def test_each_service_loads_its_settings_from_exactly_what_the_file_gives_it(
        self, environment: Any
    ) -> None:
        loaded = {}
        for name, settings in SERVICES.items():
            variables = compose_environment(name)
            assert_complete(name, settings, variables)
            environment(variables)
            loaded[name] = settings()
            assert loaded[name].mode == "production"
            assert loaded[name].kafka_idempotent_producer
        assert_one_token_issuer(loaded)

    def test_the_init_job_gets_the_settings_its_commands_read(self, environment: Any) -> None:
        variables = compose_environment("init")
        assert {"DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS"} <= variables.keys()
        environment(variables)
        RulesSettings()

"""The deployment files, checked offline for what an operator relies on when applying them.

Each Kubernetes overlay (an installation of the platform: points-staging,
points-production) is rendered with ``kubectl kustomize`` (the test fails, not
skips, without kubectl: CI installs it). Every installation serves both
business environments, and runs the ledger and the notifier as one Deployment
per business environment. The environment variables are checked against the
services' own pydantic-settings classes: every setting a service cannot run
without outside development must be set, every variable set must be one the
platform reads, and each Deployment's settings must load from exactly what the
manifest gives it.
"""

from __future__ import annotations

import copy
import functools
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from pydantic import AliasChoices

from contracts import Environment
from contracts.topics import ALL_TOPICS, POINTS_REQUESTED, POINTS_RESULTS, TOPICS_TO_CREATE
from infra.settings import SHARED_NAMES, ServiceSettings, shared_env_name
from services.ledger.settings import LedgerSettings
from services.notifier.settings import NotifierSettings
from services.rules.settings import RulesSettings
from services.trigger.settings import TriggerSettings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
COMPOSE_FILE = REPO / "deploy" / "compose.yaml"
INSTALLATIONS = ("staging", "production")
#: The business environments every installation serves (of rules, clients and events).
BUSINESS_ENVIRONMENTS: tuple[str, ...] = get_args(Environment)

SERVICES: dict[str, type[ServiceSettings]] = {
    "rules": RulesSettings,
    "trigger": TriggerSettings,
    "ledger": LedgerSettings,
    "notifier": NotifierSettings,
}
#: Each Deployment: the service it runs and the business environments it consumes.
#: The ledger and the notifier run one Deployment per environment, which scale apart.
DEPLOYMENTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "rules": ("rules", BUSINESS_ENVIRONMENTS),
    "trigger": ("trigger", BUSINESS_ENVIRONMENTS),
    "ledger-production": ("ledger", ("production",)),
    "ledger-staging": ("ledger", ("staging",)),
    "notifier-production": ("notifier", ("production",)),
    "notifier-staging": ("notifier", ("staging",)),
}
#: The topic whose partitions bound the useful replicas of each of a service's
#: consumer groups (its busiest), one group per environment.
CONSUMED_TOPIC = {"ledger": POINTS_REQUESTED, "notifier": POINTS_RESULTS}
#: The pod label that tells the business environment a Deployment consumes.
ENVIRONMENT_LABEL = "points.example.com/environment"
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


def overlay(installation: str) -> tuple[Document, ...]:
    return kustomize(K8S / "overlays" / installation)


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


def pod_labels(workload: Document) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def selected_by(selector: dict[str, str], workloads: list[Document]) -> list[Document]:
    """The workloads whose pods carry every label of ``selector``."""
    return [item for item in workloads if selector.items() <= pod_labels(item).items()]


def deployments_of(documents: tuple[Document, ...], service: str) -> list[Document]:
    """The Deployments that run ``service`` (their container's args name it)."""
    return [
        deployment
        for deployment in find(documents, "Deployment")
        if container_of(deployment)["args"] == [service]
    ]


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


@pytest.mark.parametrize("installation", INSTALLATIONS)
class TestKubernetesOverlays:
    def test_every_deployment_has_probes_resources_and_a_non_root_pod(
        self, installation: str
    ) -> None:
        documents = overlay(installation)
        assert {item["metadata"]["name"] for item in find(documents, "Deployment")} == set(
            DEPLOYMENTS
        )
        for name, (service, _) in DEPLOYMENTS.items():
            deployment = one(documents, "Deployment", name)
            container = container_of(deployment)
            port = SERVICES[service].model_fields["port"].default
            assert container["ports"] == [{"name": "http", "containerPort": port}]
            assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
            assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
            for kind in ("requests", "limits"):
                assert set(container["resources"][kind]) == {"cpu", "memory"}, (name, kind)
            assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"]
            assert container["args"] == [service]

    def test_every_deployment_owns_its_pods_and_a_disruption_budget_over_them(
        self, installation: str
    ) -> None:
        documents = overlay(installation)
        deployments = find(documents, "Deployment")
        for deployment in deployments:
            selector = deployment["spec"]["selector"]["matchLabels"]
            assert selected_by(selector, deployments) == [deployment]
        budgets = find(documents, "PodDisruptionBudget")
        for budget in budgets:
            assert budget["spec"].get("maxUnavailable") == 1
            (budgeted,) = selected_by(budget["spec"]["selector"]["matchLabels"], deployments)
            assert budgeted["metadata"]["name"] == budget["metadata"]["name"]
        assert len(budgets) == len(deployments)

    def test_each_service_answers_over_the_pods_of_all_its_deployments(
        self, installation: str
    ) -> None:
        documents = overlay(installation)
        deployments = find(documents, "Deployment")
        for service in SERVICES:
            selector = one(documents, "Service", service)["spec"]["selector"]
            assert selected_by(selector, deployments) == deployments_of(documents, service)
        assert len(find(documents, "Service")) == len(SERVICES)

    def test_consumers_never_outnumber_the_partitions_of_their_topic_per_environment(
        self, installation: str
    ) -> None:
        documents = overlay(installation)
        for service, topic in CONSUMED_TOPIC.items():
            for deployment in deployments_of(documents, service):
                replicas = deployment["spec"]["replicas"]
                name = deployment["metadata"]["name"]
                assert 1 <= replicas <= PARTITIONS[topic], (name, replicas, topic)

    def test_production_and_staging_ledgers_and_notifiers_are_separate_deployments(
        self, installation: str, environment: Any
    ) -> None:
        """Each consumes one environment, says which in its pods' label, and together
        they consume both: a staging flood never waits in front of production."""
        documents = overlay(installation)
        for service in CONSUMED_TOPIC:
            covered: list[str] = []
            for deployment in deployments_of(documents, service):
                environment(k8s_environment(documents, container_of(deployment)))
                consumed = SERVICES[service]().environments
                name = deployment["metadata"]["name"]
                assert len(consumed) == 1, (name, consumed)
                assert pod_labels(deployment)[ENVIRONMENT_LABEL] == consumed[0], name
                covered += consumed
            assert sorted(covered) == sorted(BUSINESS_ENVIRONMENTS), service

    def test_a_services_environment_deployments_run_the_same_pod_but_for_the_environment(
        self, installation: str
    ) -> None:
        documents = overlay(installation)
        for service in CONSUMED_TOPIC:
            pods = [without_environment(item) for item in deployments_of(documents, service)]
            assert len(pods) == len(BUSINESS_ENVIRONMENTS)
            assert all(pod == pods[0] for pod in pods), service

    def test_the_gateway_scales_on_cpu(self, installation: str) -> None:
        documents = overlay(installation)
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

    def test_jobs_migrate_every_schema_and_create_every_topic(self, installation: str) -> None:
        documents = overlay(installation)
        migrate = container_of(one(documents, "Job", "points-migrate"))
        topics = container_of(one(documents, "Job", "points-topics"))
        assert migrate["args"] == ["points", "migrate"]
        assert topics["args"][:3] == ["points", "topics", "create"]

    def test_each_deployment_loads_its_settings_from_exactly_what_the_manifest_gives_it(
        self, installation: str, environment: Any
    ) -> None:
        documents = overlay(installation)
        loaded = {}
        for name, (service, consumed) in DEPLOYMENTS.items():
            settings = SERVICES[service]
            variables = k8s_environment(documents, container_of(one(documents, "Deployment", name)))
            assert_complete(name, settings, variables)
            environment(variables)
            loaded[name] = settings()
            assert loaded[name].mode == "production"
            assert loaded[name].environments == consumed, name
        assert_one_token_issuer(loaded)

    def test_jobs_get_the_settings_their_commands_read(
        self, installation: str, environment: Any
    ) -> None:
        documents = overlay(installation)
        jobs = {
            "points-migrate": (ServiceSettings, "database_url"),
            "points-topics": (ServiceSettings, "kafka_bootstrap_servers"),
        }
        for job, (settings, needed) in jobs.items():
            variables = k8s_environment(documents, container_of(one(documents, "Job", job)))
            assert env_names(settings, needed) & variables.keys(), (job, needed)
            assert set(variables) <= every_env_name(), job
            environment(variables)
            settings()
        migrate = container_of(one(documents, "Job", "points-migrate"))
        assert not {"CALLBACK_SIGNING_KEY", "RULES_SIGNING_KEY_ENCRYPTION_KEY"} & set(
            k8s_environment(documents, migrate)
        ), "the migration job carries signing keys it never reads"


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
    """Tokens carry `<RULES_PUBLIC_URL>/realms/partner`; the gateway and every ledger check it."""
    issuer = loaded["rules"].public_url
    checking = {
        name: settings.token_issuer_url
        for name, settings in loaded.items()
        if isinstance(settings, TriggerSettings | LedgerSettings)
    }
    assert len(checking) >= 2 and set(checking.values()) == {issuer}, checking


def without_environment(deployment: Document) -> Document:
    """A Deployment's pod template but for the environment it consumes and its label."""
    template = copy.deepcopy(deployment["spec"]["template"])
    del template["metadata"]["labels"][ENVIRONMENT_LABEL]
    container = template["spec"]["containers"][0]
    container["env"] = [
        item for item in container["env"] if not item["name"].endswith("_ENVIRONMENTS")
    ]
    return template


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


class TestSecrets:
    @pytest.mark.parametrize("installation", INSTALLATIONS)
    def test_no_overlay_carries_a_secret_value(self, installation: str) -> None:
        """The operator creates `points-secrets` with generated keys (docs/operations.md);
        a Secret rendered from the repository would ship the same keys to everyone."""
        assert find(overlay(installation), "Secret") == []
        assert not list((K8S / "overlays" / installation).rglob("secrets"))


class TestStrimziTopics:
    def test_match_the_topic_plan_of_the_contracts(self) -> None:
        topics = find(kustomize(K8S / "strimzi-topics"), "KafkaTopic")
        declared = {
            topic["spec"]["topicName"]: (
                topic["spec"]["partitions"],
                {
                    name: value
                    for name, value in topic["spec"]["config"].items()
                    if name != "min.insync.replicas"
                },
            )
            for topic in topics
        }
        # Retentions too: the inboxes keep their rows as long as the topics keep events.
        assert declared == {
            topic.name: (topic.partitions, topic.config()) for topic in TOPICS_TO_CREATE
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
            # One process per service consumes both environments: the stack is for one machine.
            assert loaded[name].environments == BUSINESS_ENVIRONMENTS
        assert_one_token_issuer(loaded)

    def test_the_init_job_gets_the_settings_its_commands_read(self, environment: Any) -> None:
        variables = compose_environment("init")
        assert {"DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS"} <= variables.keys()
        assert not {"CALLBACK_SIGNING_KEY", "RULES_SIGNING_KEY_ENCRYPTION_KEY"} & variables.keys()
        environment(variables)
        ServiceSettings()

"""`points topics create`: what the compose init job and the Kubernetes topics Job run."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from contracts.topics import TOPICS_TO_CREATE
from infra.dev.launcher import free_port
from tests.helpers import points


@pytest.fixture
def cli_environment(
    kafka_bootstrap_servers: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap_servers)
    monkeypatch.setenv("POINTS_VAR_DIR", str(tmp_path))
    return kafka_bootstrap_servers


async def describe(bootstrap_servers: str) -> tuple[dict[str, int], dict[str, str]]:
    """Each platform topic's partition count and cleanup policy, as the broker reports them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        described = await admin.describe_topics([topic.name for topic in TOPICS_TO_CREATE])
        configs = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic.name) for topic in TOPICS_TO_CREATE]
        )
    finally:
        await admin.close()
    partitions = {topic["topic"]: len(topic["partitions"]) for topic in described}
    policies = {}
    for response in configs:
        for _, _, _, name, entries in response.resources:
            policies[name] = dict((entry[0], entry[1]) for entry in entries)["cleanup.policy"]
    return partitions, policies


class TestTopicsCreate:
    async def test_creates_every_topic_with_its_partitions_and_cleanup_policy(
        self, cli_environment: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert await points("topics", "create") == 0

        partitions, policies = await describe(cli_environment)
        assert partitions == {topic.name: topic.partitions for topic in TOPICS_TO_CREATE}
        assert policies == {
            topic.name: "compact" if topic.compacted else "delete" for topic in TOPICS_TO_CREATE
        }
        assert "points.requested.v1: created (12 partitions" in capsys.readouterr().out

    async def test_running_it_again_changes_nothing_and_says_so(
        self, cli_environment: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert await points("topics", "create") == 0
        capsys.readouterr()

        assert await points("topics", "create") == 0

        lines = capsys.readouterr().out.strip().splitlines()
        assert [line.split(":")[0] for line in lines] == [topic.name for topic in TOPICS_TO_CREATE]
        assert all(": already exists (" in line for line in lines)

    async def test_an_unreachable_broker_is_named_with_exit_code_2(
        self,
        cli_environment: str,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        address = f"127.0.0.1:{free_port()}"
        monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", address)
        monkeypatch.setenv("STARTUP_TIMEOUT_SECONDS", "0.5")

        assert await points("topics", "create") == 2

        assert f"Kafka broker at {address} is not reachable" in capsys.readouterr().err

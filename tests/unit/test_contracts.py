"""The Kafka contracts: examples, schema export, envelope rules, keys and topics."""

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from faststream.kafka import KafkaBroker, TestKafkaBroker
from pydantic import BaseModel, ValidationError

import contracts
from contracts import (
    ALL_TOPICS,
    CLIENTS_LIFECYCLE,
    EVENT_TYPES,
    MEMBERS_LIFECYCLE,
    NOTIFICATIONS_REQUESTED,
    POINTS_REQUESTED,
    POINTS_RESULTS,
    RULES_LIFECYCLE,
    ClientLifecycleEvent,
    ClientSnapshot,
    EventEnvelope,
    MemberLifecycleEvent,
    PointsRequested,
    PointsRequestedEvent,
    PointsResult,
    PointsResultEvent,
    RuleLifecycleEvent,
    RuleSnapshot,
    ShareEmailRequested,
    member_key,
)
from contracts.export import SCHEMAS_DIRECTORY, export_schemas, find_drift, main
from infra.consumers import read_event
from infra.request_signing import load_signing_key

EXAMPLES_DIRECTORY = Path(contracts.__file__).parent / "examples"


def examples_of(topic: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = json.loads(
        (EXAMPLES_DIRECTORY / f"{topic}.json").read_text(encoding="utf-8")
    )
    return messages


ALL_EXAMPLES = [
    pytest.param(topic, message, id=f"{topic}[{index}]:{message['type']}")
    for topic in EVENT_TYPES
    for index, message in enumerate(examples_of(topic))
]


def example_event(topic: str, index: int = 0) -> EventEnvelope[Any]:
    return EVENT_TYPES[topic].model_validate(examples_of(topic)[index])


def changed(message: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A copy of ``message`` with some envelope fields, or `data` fields, replaced."""
    data = {**message["data"], **fields.pop("data", {})}
    return {**message, **fields, "data": data}


class TestExampleMessages:
    def test_every_topic_has_at_least_one_example(self) -> None:
        for topic in ALL_TOPICS:
            assert examples_of(topic.name), topic.name

    @pytest.mark.parametrize(("topic", "message"), ALL_EXAMPLES)
    def test_every_example_validates_against_its_topics_model(
        self, topic: str, message: dict[str, Any]
    ) -> None:
        event = EVENT_TYPES[topic].model_validate(message)

        assert topic == event.TOPIC

    @pytest.mark.parametrize(("topic", "message"), ALL_EXAMPLES)
    def test_examples_round_trip_through_json_unchanged(
        self, topic: str, message: dict[str, Any]
    ) -> None:
        event_class = EVENT_TYPES[topic]
        event = event_class.model_validate_json(json.dumps(message))

        assert json.loads(event.model_dump_json()) == message
        assert event_class.model_validate_json(event.model_dump_json()) == event


class TestSchemaExport:
    def test_committed_schemas_match_the_models(self) -> None:
        assert find_drift(SCHEMAS_DIRECTORY) == [], "run `python -m contracts.export`"

    def test_writes_one_schema_file_per_topic(self, tmp_path: Path) -> None:
        written = export_schemas(tmp_path)

        assert sorted(path.name for path in written) == sorted(
            f"{topic.name}.schema.json" for topic in ALL_TOPICS
        )

    def test_writes_sorted_keys_with_a_trailing_newline(self, tmp_path: Path) -> None:
        for path in export_schemas(tmp_path):
            text = path.read_text(encoding="utf-8")
            assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"

    def test_writes_the_same_bytes_every_time(self, tmp_path: Path) -> None:
        first = {path.name: path.read_bytes() for path in export_schemas(tmp_path / "a")}
        second = {path.name: path.read_bytes() for path in export_schemas(tmp_path / "b")}

        assert first == second

    def test_check_names_the_drifted_file_and_fails(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        export_schemas(tmp_path)
        drifted = tmp_path / f"{POINTS_RESULTS}.schema.json"
        drifted.write_text("{}\n", encoding="utf-8")

        exit_code = main(["--check", "--directory", str(tmp_path)])

        assert exit_code == 1
        assert str(drifted) in capsys.readouterr().err

    def test_check_passes_right_after_an_export(self, tmp_path: Path) -> None:
        assert main(["--directory", str(tmp_path)]) == 0

        assert main(["--check", "--directory", str(tmp_path)]) == 0

    def test_check_reports_a_schema_of_a_topic_that_no_longer_exists(self, tmp_path: Path) -> None:
        export_schemas(tmp_path)
        stale = tmp_path / "points.requested.v0.schema.json"
        stale.write_text("{}\n", encoding="utf-8")

        assert find_drift(tmp_path) == [stale]

    def test_export_removes_schemas_of_topics_that_no_longer_exist(self, tmp_path: Path) -> None:
        stale = tmp_path / "points.requested.v0.schema.json"
        stale.parent.mkdir(exist_ok=True)
        stale.write_text("{}\n", encoding="utf-8")

        export_schemas(tmp_path)

        assert not stale.exists()

    def test_schemas_describe_every_field(self) -> None:
        for event_class in EVENT_TYPES.values():
            schema = event_class.model_json_schema()
            models = [schema, *schema["$defs"].values()]
            for model in models:
                for name, field in model["properties"].items():
                    assert field.get("description"), f"{model['title']}.{name}"


class TestEventEnvelope:
    def test_refuses_a_naive_occurred_at(self) -> None:
        message = changed(examples_of(POINTS_REQUESTED)[0], occurred_at="2026-12-02T10:05:44")

        with pytest.raises(ValidationError, match="timezone"):
            PointsRequestedEvent.model_validate(message)

    def test_refuses_a_naive_timestamp_inside_the_data(self) -> None:
        message = changed(
            examples_of(POINTS_REQUESTED)[0], data={"requested_at": "2026-12-02T10:05:44"}
        )

        with pytest.raises(ValidationError, match="timezone"):
            PointsRequestedEvent.model_validate(message)

    @pytest.mark.parametrize("topic", list(EVENT_TYPES))
    def test_refuses_an_event_type_its_topic_does_not_carry(self, topic: str) -> None:
        message = changed(examples_of(topic)[0], type="rule.deleted")

        with pytest.raises(ValidationError, match="type"):
            EVENT_TYPES[topic].model_validate(message)

    def test_refuses_another_schema_version(self) -> None:
        message = changed(examples_of(POINTS_REQUESTED)[0], version=2)

        with pytest.raises(ValidationError, match="version 2"):
            PointsRequestedEvent.model_validate(message)

    def test_a_writer_refuses_unknown_fields(self) -> None:
        message = {**examples_of(POINTS_REQUESTED)[0], "priority": "high"}

        with pytest.raises(ValidationError, match="priority"):
            PointsRequestedEvent.model_validate(message)


class TestTolerantReaders:
    """A consumer of today reads what a newer producer writes: a message with an added
    optional field, in the envelope or in the data, is read without it."""

    @pytest.mark.parametrize("topic", list(EVENT_TYPES))
    def test_an_older_consumer_reads_a_message_with_an_added_optional_field(
        self, topic: str
    ) -> None:
        for example in examples_of(topic):
            newer = changed(example, trace_parent="00-4bf92f35", data={"loyalty_tier": "gold"})

            read = read_event(EVENT_TYPES[topic], json.dumps(newer).encode())

            assert read == EVENT_TYPES[topic].model_validate(example)

    @pytest.mark.parametrize("topic", list(EVENT_TYPES))
    def test_a_message_missing_a_required_field_is_still_refused(self, topic: str) -> None:
        broken = {**examples_of(topic)[0]}
        del broken["event_id"]

        with pytest.raises(ValidationError, match="event_id"):
            read_event(EVENT_TYPES[topic], json.dumps(broken).encode())

    @pytest.mark.parametrize("topic", list(EVENT_TYPES))
    def test_events_and_their_data_are_frozen(self, topic: str) -> None:
        event = example_event(topic)

        first_data_field = next(iter(type(event.data).model_fields))

        with pytest.raises(ValidationError, match="frozen"):
            setattr(event, "correlation_id", "changed")  # noqa: B010
        with pytest.raises(ValidationError, match="frozen"):
            setattr(event.data, first_data_field, "changed")

    def test_new_event_fills_in_id_time_version_and_type(self) -> None:
        data = example_event(POINTS_REQUESTED).data
        before = datetime.now(UTC)

        event = PointsRequestedEvent.new_event(
            data=data, environment="staging", org_id="org_acme", correlation_id="req-1"
        )

        assert isinstance(event.event_id, UUID)
        assert before <= event.occurred_at <= datetime.now(UTC)
        assert event.version == PointsRequestedEvent.VERSION
        assert event.type == "points.requested"

    def test_new_event_gives_every_event_its_own_id(self) -> None:
        data = example_event(POINTS_REQUESTED).data
        first, second = (
            PointsRequestedEvent.new_event(
                data=data, environment="staging", org_id="org_acme", correlation_id="req-1"
            )
            for _ in range(2)
        )

        assert first.event_id != second.event_id

    def test_new_event_needs_a_type_when_the_topic_carries_several(self) -> None:
        snapshot = example_event(RULES_LIFECYCLE).data

        with pytest.raises(TypeError, match=r"rule\.created"):
            RuleLifecycleEvent.new_event(
                data=snapshot, environment="staging", org_id="org_acme", correlation_id="req-1"
            )

    def test_new_event_validates_the_type_it_is_given(self) -> None:
        snapshot = example_event(RULES_LIFECYCLE).data

        with pytest.raises(ValidationError, match="type"):
            RuleLifecycleEvent.new_event(
                data=snapshot,
                environment="staging",
                org_id="org_acme",
                correlation_id="req-1",
                type="rule.deleted",
            )

    def test_refuses_data_from_another_organisation(self) -> None:
        message = changed(examples_of(RULES_LIFECYCLE)[0], org_id="org_other")

        with pytest.raises(ValidationError, match="org_id"):
            RuleLifecycleEvent.model_validate(message)

    @pytest.mark.parametrize("topic", [RULES_LIFECYCLE, CLIENTS_LIFECYCLE, NOTIFICATIONS_REQUESTED])
    def test_refuses_data_from_another_environment(self, topic: str) -> None:
        message = examples_of(topic)[0]
        other = "production" if message["environment"] == "staging" else "staging"

        with pytest.raises(ValidationError, match="environment"):
            EVENT_TYPES[topic].model_validate(changed(message, environment=other))


class TestKafkaKeys:
    def test_rule_events_are_keyed_by_rule_id(self) -> None:
        event = example_event(RULES_LIFECYCLE)

        assert event.key() == "rule_5d2c91b7"

    def test_client_events_are_keyed_by_client_id(self) -> None:
        event = example_event(CLIENTS_LIFECYCLE)

        assert event.key() == "cli_partner_app_staging"

    @pytest.mark.parametrize("topic", [POINTS_REQUESTED, POINTS_RESULTS])
    def test_points_events_are_keyed_by_environment_organisation_and_member(
        self, topic: str
    ) -> None:
        event = example_event(topic)

        assert event.key() == "staging:org_acme:member-42"

    def test_a_request_and_its_result_share_a_key(self) -> None:
        assert example_event(POINTS_REQUESTED).key() == example_event(POINTS_RESULTS).key()

    def test_one_member_in_two_environments_has_two_keys(self) -> None:
        staging = examples_of(POINTS_REQUESTED)[0]
        production = changed(staging, environment="production")

        assert (
            PointsRequestedEvent.model_validate(staging).key()
            != PointsRequestedEvent.model_validate(production).key()
        )

    def test_share_email_requests_are_keyed_by_rule_id(self) -> None:
        event = example_event(NOTIFICATIONS_REQUESTED)

        assert event.key() == "rule_5d2c91b7"


class TestTopicSpecs:
    def test_every_event_class_has_a_topic_spec(self) -> None:
        assert {event.TOPIC for event in EVENT_TYPES.values()} == {t.name for t in ALL_TOPICS}

    def test_every_topic_maps_to_the_event_class_that_names_it(self) -> None:
        for topic, event_class in EVENT_TYPES.items():
            assert topic == event_class.TOPIC

    def test_topic_names_are_unique(self) -> None:
        names = [topic.name for topic in ALL_TOPICS]

        assert len(names) == len(set(names))

    @pytest.mark.parametrize(
        ("name", "partitions", "compacted"),
        [
            (RULES_LIFECYCLE, 3, True),
            (CLIENTS_LIFECYCLE, 3, True),
            (POINTS_REQUESTED, 12, False),
            (POINTS_RESULTS, 12, False),
            (NOTIFICATIONS_REQUESTED, 3, False),
        ],
    )
    def test_topics_are_laid_out_as_designed(
        self, name: str, partitions: int, compacted: bool
    ) -> None:
        spec = next(topic for topic in ALL_TOPICS if topic.name == name)

        assert (spec.partitions, spec.compacted) == (partitions, compacted)
        assert spec.config()["cleanup.policy"] == ("compact" if compacted else "delete")

    def test_every_event_class_says_when_it_is_sent(self) -> None:
        for event_class in EVENT_TYPES.values():
            assert (event_class.__doc__ or "").startswith("Sent when"), event_class.__name__


class TestRuleSnapshot:
    def test_refuses_a_cap_of_zero(self) -> None:
        snapshot = example_event(RULES_LIFECYCLE).data

        with pytest.raises(ValidationError, match="cap_max"):
            RuleSnapshot.model_validate({**snapshot.model_dump(), "cap_max": 0})

    def test_refuses_an_end_before_the_start(self) -> None:
        snapshot = example_event(RULES_LIFECYCLE).data
        fields = {**snapshot.model_dump(), "ends_at": snapshot.starts_at}

        with pytest.raises(ValidationError, match="ends_at"):
            RuleSnapshot.model_validate(fields)

    def test_an_activated_event_carries_an_active_rule(self) -> None:
        message = changed(examples_of(RULES_LIFECYCLE)[1], data={"status": "paused"})

        with pytest.raises(ValidationError, match="active"):
            RuleLifecycleEvent.model_validate(message)


class TestClientSnapshot:
    def test_has_no_field_for_a_secret_or_a_hash(self) -> None:
        for name in ClientSnapshot.model_fields:
            assert "secret" not in name
            assert "hash" not in name

    def test_a_revoked_event_carries_a_revoked_client(self) -> None:
        message = changed(examples_of(CLIENTS_LIFECYCLE)[2], data={"status": "active"})

        with pytest.raises(ValidationError, match="revoked"):
            ClientLifecycleEvent.model_validate(message)


class TestClientRequestSigningKey:
    def test_a_client_snapshot_without_the_key_reads_as_a_client_that_does_not_sign(
        self,
    ) -> None:
        message = examples_of(CLIENTS_LIFECYCLE)[0]
        data = {
            name: value for name, value in message["data"].items() if name != "request_signing_key"
        }

        event = ClientLifecycleEvent.model_validate({**message, "data": data})

        assert event.data.request_signing_key is None

    def test_a_key_change_event_carries_the_new_public_key(self) -> None:
        event = next(
            ClientLifecycleEvent.model_validate(message)
            for message in examples_of(CLIENTS_LIFECYCLE)
            if message["type"] == "client.request_signing_key_changed"
        )

        assert event.data.request_signing_key is not None
        assert load_signing_key(event.data.request_signing_key)

    def test_refuses_a_key_that_is_not_a_pem_public_key(self) -> None:
        private = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMG\n-----END PRIVATE KEY-----\n"
        message = changed(examples_of(CLIENTS_LIFECYCLE)[0], data={"request_signing_key": private})

        with pytest.raises(ValidationError, match="request_signing_key"):
            ClientLifecycleEvent.model_validate(message)


class TestPointsResult:
    def test_a_rejection_carries_a_reason(self) -> None:
        result = example_event(POINTS_RESULTS, 1).data

        with pytest.raises(ValidationError, match="reason"):
            PointsResult.model_validate({**result.model_dump(), "reason": None})

    def test_an_applied_result_carries_the_balance_after(self) -> None:
        result = example_event(POINTS_RESULTS, 0).data

        with pytest.raises(ValidationError, match="balance"):
            PointsResult.model_validate({**result.model_dump(), "balance": None})

    @pytest.mark.parametrize(
        ("index", "expected_type"),
        [(0, "points.applied"), (1, "points.rejected"), (2, "points.reversed")],
    )
    def test_new_event_names_the_event_after_the_status(
        self, index: int, expected_type: str
    ) -> None:
        result = example_event(POINTS_RESULTS, index).data

        event = PointsResultEvent.new_event(
            data=result, environment="staging", org_id="org_acme", correlation_id="req-1"
        )

        assert event.type == expected_type

    def test_refuses_an_event_name_that_contradicts_the_status(self) -> None:
        message = changed(examples_of(POINTS_RESULTS)[0], type="points.rejected")

        with pytest.raises(ValidationError, match="applied"):
            PointsResultEvent.model_validate(message)

    def test_a_reversal_follows_the_applied_result_it_undoes_on_the_same_key(self) -> None:
        applied, reversed_ = example_event(POINTS_RESULTS, 0), example_event(POINTS_RESULTS, 2)

        assert reversed_.data.transaction_id == applied.data.transaction_id
        assert reversed_.key() == applied.key()

    @pytest.mark.parametrize("missing", ["reversal_id", "reversed_amount", "uncovered_amount"])
    def test_a_reversal_says_what_it_moved_back(self, missing: str) -> None:
        result = example_event(POINTS_RESULTS, 2).data

        with pytest.raises(ValidationError, match="reversal_id, reversed_amount"):
            PointsResult.model_validate({**result.model_dump(), missing: None})

    def test_a_reversal_accounts_for_every_point_of_the_original(self) -> None:
        result = example_event(POINTS_RESULTS, 2).data

        with pytest.raises(ValidationError, match="must be amount"):
            PointsResult.model_validate({**result.model_dump(), "uncovered_amount": 0})

    def test_a_reversal_carries_the_balance_after_it(self) -> None:
        result = example_event(POINTS_RESULTS, 2).data

        with pytest.raises(ValidationError, match="balance"):
            PointsResult.model_validate({**result.model_dump(), "balance": None})

    @pytest.mark.parametrize("index", [0, 1])
    def test_only_a_reversal_carries_reversal_fields(self, index: int) -> None:
        result = example_event(POINTS_RESULTS, index).data

        with pytest.raises(ValidationError, match="carries no reversal_id"):
            PointsResult.model_validate({**result.model_dump(), "reversed_amount": 0})

    @pytest.mark.parametrize("missing", ["expiry_id", "expired_amount", "expires_at"])
    def test_an_expiry_says_what_expired_and_when(self, missing: str) -> None:
        result = example_event(POINTS_RESULTS, 3).data

        with pytest.raises(ValidationError, match="expiry_id, expired_amount, expires_at"):
            PointsResult.model_validate({**result.model_dump(), missing: None})

    @pytest.mark.parametrize("index", [0, 1, 2])
    def test_only_an_expiry_carries_expiry_fields(self, index: int) -> None:
        result = example_event(POINTS_RESULTS, index).data

        with pytest.raises(ValidationError, match="carries no expiry_id"):
            PointsResult.model_validate({**result.model_dump(), "expired_amount": 1})

    def test_no_more_expires_than_the_earn_awarded(self) -> None:
        result = example_event(POINTS_RESULTS, 3).data

        with pytest.raises(ValidationError, match="at most amount"):
            PointsResult.model_validate({**result.model_dump(), "expired_amount": 101})

    def test_a_redeem_has_nothing_to_expire(self) -> None:
        result = example_event(POINTS_RESULTS, 3).data

        with pytest.raises(ValidationError, match="only an earn"):
            PointsResult.model_validate({**result.model_dump(), "type": "redeem"})


class TestExpiryPolicy:
    def test_an_earn_rule_expires_its_points_some_days_after_the_award(self) -> None:
        rule = example_event(RULES_LIFECYCLE).data
        awarded = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)

        assert rule.points_expire_after_days == 365
        assert rule.expiry_of_points_awarded_at(awarded) == datetime(2027, 12, 2, 10, 0, tzinfo=UTC)

    def test_a_rule_with_a_fixed_instant_expires_every_award_then(self) -> None:
        instant = datetime(2027, 1, 31, 23, 59, tzinfo=UTC)
        rule = example_event(RULES_LIFECYCLE).data.model_copy(
            update={"points_expire_after_days": None, "points_expire_at": instant}
        )

        assert rule.expiry_of_points_awarded_at(datetime(2026, 12, 2, tzinfo=UTC)) == instant

    def test_a_rule_sets_one_policy_not_both(self) -> None:
        data = example_event(RULES_LIFECYCLE).data.model_dump()

        with pytest.raises(ValidationError, match="not both"):
            RuleSnapshot.model_validate({**data, "points_expire_at": "2027-01-01T00:00:00Z"})

    def test_a_redeem_rule_has_no_expiry(self) -> None:
        data = example_event(RULES_LIFECYCLE).data.model_dump()

        with pytest.raises(ValidationError, match="only an earn rule"):
            RuleSnapshot.model_validate({**data, "type": "redeem"})

    def test_a_redeem_request_carries_no_expiry(self) -> None:
        data = example_event(POINTS_REQUESTED).data.model_dump()

        with pytest.raises(ValidationError, match="only an earn"):
            PointsRequested.model_validate({**data, "type": "redeem"})


class TestMemberLifecycle:
    def test_the_event_name_follows_the_standing(self) -> None:
        blocked, unblocked = (example_event(MEMBERS_LIFECYCLE, index) for index in (0, 1))

        assert (blocked.type, blocked.data.blocked) == ("member.blocked", True)
        assert (unblocked.type, unblocked.data.blocked) == ("member.unblocked", False)

    def test_a_block_travels_on_the_members_key_like_their_points(self) -> None:
        blocked = example_event(MEMBERS_LIFECYCLE)

        assert blocked.key() == member_key("production", "org_acme", "member-42")

    def test_a_blocked_event_cannot_carry_an_unblocked_member(self) -> None:
        message = changed(examples_of(MEMBERS_LIFECYCLE)[0], type="member.unblocked")

        with pytest.raises(ValidationError, match="blocked=True"):
            MemberLifecycleEvent.model_validate(message)


class TestShareEmailRequested:
    def fields_with(self, recipients: list[str]) -> dict[str, Any]:
        data = example_event(NOTIFICATIONS_REQUESTED).data.model_dump()
        return {**data, "recipients": recipients}

    @pytest.mark.parametrize("address", ["not-an-email", "dev@localhost", "two words@example.com"])
    def test_refuses_an_implausible_email_address(self, address: str) -> None:
        with pytest.raises(ValidationError, match="recipients"):
            ShareEmailRequested.model_validate(self.fields_with([address]))

    def test_refuses_an_email_without_recipients(self) -> None:
        with pytest.raises(ValidationError, match="recipients"):
            ShareEmailRequested.model_validate(self.fields_with([]))

    def test_refuses_more_than_twenty_recipients(self) -> None:
        addresses = [f"dev{n}@partner.example.com" for n in range(21)]

        with pytest.raises(ValidationError, match="recipients"):
            ShareEmailRequested.model_validate(self.fields_with(addresses))

    def test_accepts_twenty_recipients(self) -> None:
        addresses = [f"dev{n}@partner.example.com" for n in range(20)]

        assert len(ShareEmailRequested.model_validate(self.fields_with(addresses)).recipients) == 20


class TestFastStreamDelivery:
    @pytest.mark.parametrize("topic", list(EVENT_TYPES))
    async def test_an_event_arrives_at_a_subscriber_as_it_was_published(self, topic: str) -> None:
        broker = KafkaBroker()
        received: list[BaseModel] = []
        event_class = EVENT_TYPES[topic]

        @broker.subscriber(topic)
        async def collect(event: event_class) -> None:  # type: ignore[valid-type]
            received.append(event)

        published = example_event(topic)
        async with TestKafkaBroker(broker) as test_broker:
            await test_broker.publish(published, topic, key=published.key().encode())

        assert received == [published]

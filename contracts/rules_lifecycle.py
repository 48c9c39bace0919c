"""Topic `rules.lifecycle.v1`: a full rule snapshot on every change of a rule."""

from datetime import datetime, timedelta
from typing import ClassVar, Literal, Self, get_args

from pydantic import AwareDatetime, Field, model_validator

from contracts.envelope import ContractModel, Environment, EventEnvelope
from contracts.limits import MAX_EXPIRY_DAYS
from contracts.text import MultilineText, Text
from contracts.topics import RULES_LIFECYCLE

RuleType = Literal["earn", "redeem"]
RuleStatus = Literal["draft", "active", "paused", "archived"]
RuleLifecycleType = Literal[
    "rule.created", "rule.updated", "rule.activated", "rule.paused", "rule.archived"
]

# The status a rule must have right after these transitions.
_STATUS_AFTER: dict[str, RuleStatus] = {
    "rule.activated": "active",
    "rule.paused": "paused",
    "rule.archived": "archived",
}


class RuleSnapshot(ContractModel):
    """Everything a consumer needs to know about a rule, as of one version of it."""

    rule_id: Text = Field(min_length=1, description="The rule's id, shared with developers.")
    org_id: Text = Field(min_length=1, description="Organisation that owns the rule.")
    environment: Environment = Field(description="Environment the rule lives in.")
    name: Text = Field(min_length=1, description="Name the business user gave the rule.")
    description: MultilineText = Field(default="", description="Optional longer description.")
    type: RuleType = Field(description="Whether the rule earns or redeems points.")
    status: RuleStatus = Field(description="Lifecycle status; only active rules can be triggered.")
    api_trigger: bool = Field(description="Whether API clients may trigger the rule.")
    authorized_client_ids: tuple[Text, ...] = Field(
        description="API clients allowed to trigger the rule."
    )
    cap_max: int | None = Field(
        default=None,
        ge=1,
        description="Most points the rule may ever move in total; null for no cap.",
    )
    cap_per_member: int | None = Field(
        default=None,
        ge=1,
        description="Most points the rule may move for one member; null for no cap.",
    )
    max_amount_per_request: int | None = Field(
        default=None, ge=1, description="Largest amount one request may carry; null for no limit."
    )
    starts_at: AwareDatetime | None = Field(
        default=None,
        description="When the rule starts to accept triggers; null for no start limit.",
    )
    ends_at: AwareDatetime | None = Field(
        default=None, description="When the rule stops accepting triggers; null for no end."
    )
    points_expire_after_days: int | None = Field(
        default=None,
        ge=1,
        le=MAX_EXPIRY_DAYS,
        description="An earn rule's points expire this many days after they are awarded;"
        " null when they do not (or when `points_expire_at` is set).",
    )
    points_expire_at: AwareDatetime | None = Field(
        default=None,
        description="An earn rule's points all expire at this instant; null when they do not"
        " (or when `points_expire_after_days` is set).",
    )
    version: int = Field(
        ge=1, description="Version of the rule, raised on every change (optimistic concurrency)."
    )
    updated_at: AwareDatetime = Field(description="When this version of the rule was saved.")

    @model_validator(mode="after")
    def _ends_after_it_starts(self) -> Self:
        starts_at, ends_at = self.starts_at, self.ends_at
        if starts_at is not None and ends_at is not None and ends_at <= starts_at:
            raise ValueError("ends_at must be later than starts_at")
        return self

    @model_validator(mode="after")
    def _one_expiry_policy_on_an_earn_rule(self) -> Self:
        if self.points_expire_after_days is not None and self.points_expire_at is not None:
            raise ValueError("a rule's points expire after some days or at an instant, not both")
        if self.type != "earn" and self.expires:
            raise ValueError("only an earn rule's points can expire")
        return self

    @property
    def expires(self) -> bool:
        """Whether the points this rule awards expire."""
        return self.points_expire_after_days is not None or self.points_expire_at is not None

    def expiry_of_points_awarded_at(self, awarded_at: datetime) -> datetime | None:
        """When points this rule awards at ``awarded_at`` expire; None when they never do."""
        if self.points_expire_after_days is not None:
            return awarded_at + timedelta(days=self.points_expire_after_days)
        return self.points_expire_at


class RuleLifecycleEvent(EventEnvelope[RuleSnapshot]):
    """Sent when a rule is created, updated, activated, paused or archived.

    The data is the full rule as of that change, so the latest message per
    rule id (the topic is compacted) is all a consumer needs.
    """

    TOPIC: ClassVar[str] = RULES_LIFECYCLE
    VERSION: ClassVar[int] = 1
    TYPES: ClassVar[tuple[str, ...]] = get_args(RuleLifecycleType)

    type: RuleLifecycleType = Field(description="What happened to the rule.")

    def key(self) -> str:
        """The rule id, so one rule's changes stay in order and compact together."""
        return self.data.rule_id

    @model_validator(mode="after")
    def _data_matches_envelope_and_type(self) -> Self:
        self._check_data_belongs_to_envelope(
            environment=self.data.environment, org_id=self.data.org_id
        )
        expected_status = _STATUS_AFTER.get(self.type)
        if expected_status is not None and self.data.status != expected_status:
            raise ValueError(
                f"a {self.type} event carries a rule with status {expected_status!r},"
                f" not {self.data.status!r}"
            )
        return self

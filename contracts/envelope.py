"""The envelope every Kafka message of the platform travels in.

A concrete event subclasses ``EventEnvelope[TheData]``, names its topic in
``TOPIC``, narrows ``type`` to the event names that topic carries, and says how
its Kafka key is built in ``key()``.
"""

from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, Literal, Self, TypeVar
from uuid import UUID, uuid4

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from contracts.text import Text

Environment = Literal["staging", "production"]

DataT = TypeVar("DataT", bound=BaseModel)


class ContractModel(BaseModel):
    """Base of every contract model: immutable, and unknown fields are an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class EventEnvelope(ContractModel, Generic[DataT]):
    """The versioned envelope around every event's data."""

    TOPIC: ClassVar[str]
    VERSION: ClassVar[int] = 1
    # The event names this class may carry; an empty tuple means any name.
    TYPES: ClassVar[tuple[str, ...]] = ()

    event_id: UUID = Field(
        description="Unique id of this event; consumers de-duplicate redeliveries on it."
    )
    type: Text = Field(description="Name of what happened, such as `rule.activated`.")
    version: int = Field(ge=1, description="Version of the event's schema.")
    occurred_at: AwareDatetime = Field(
        description="When the event happened, as an ISO 8601 timestamp with a time zone."
    )
    environment: Environment = Field(
        description="Environment the event belongs to; staging and production never mix."
    )
    org_id: Text = Field(min_length=1, description="Organisation (tenant) the event belongs to.")
    correlation_id: Text = Field(
        min_length=1,
        description="Id shared by every event and log line caused by the same original request.",
    )
    data: DataT = Field(description="The event's payload.")

    @classmethod
    def new_event(
        cls,
        *,
        data: DataT,
        environment: Environment,
        org_id: str,
        correlation_id: str,
        type: str | None = None,
    ) -> Self:
        """Build an event that happens now, with a fresh id and this class's version.

        ``type`` may be left out when the class can tell it from ``data``
        (see ``default_type``).
        """
        return cls(
            event_id=uuid4(),
            type=cls.default_type(data) if type is None else type,
            version=cls.VERSION,
            occurred_at=datetime.now(UTC),
            environment=environment,
            org_id=org_id,
            correlation_id=correlation_id,
            data=data,
        )

    @classmethod
    def default_type(cls, data: DataT) -> str:
        """The event name ``new_event`` uses when none is given.

        A class that carries a single event name uses it; a class that carries
        several must be told which one, unless it overrides this method.
        """
        if len(cls.TYPES) == 1:
            return cls.TYPES[0]
        raise TypeError(f"{cls.__name__}.new_event needs type=, one of {cls.TYPES}")

    def key(self) -> str:
        """The Kafka message key, which decides the partition and the order kept."""
        raise NotImplementedError(f"{type(self).__name__} does not define its Kafka key")

    @model_validator(mode="after")
    def _version_is_this_schemas(self) -> Self:
        # A message of another version must not be read as if it had this shape.
        if self.version != self.VERSION:
            raise ValueError(
                f"version {self.version} is not {type(self).__name__}'s version {self.VERSION}"
            )
        return self

    def _check_data_belongs_to_envelope(self, **data_values: Any) -> None:
        """Refuse data whose tenant or environment differs from the envelope's."""
        envelope_values = {"environment": self.environment, "org_id": self.org_id}
        for name, value in data_values.items():
            if value != envelope_values[name]:
                raise ValueError(f"data.{name} {value!r} differs from the envelope's {name}")

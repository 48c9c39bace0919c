"""Topic `clients.lifecycle.v1`: API clients registered, revoked, rotated or re-keyed."""

from typing import ClassVar, Literal, Self, get_args

from pydantic import AwareDatetime, Field, model_validator

from contracts.envelope import ContractModel, Environment, EventEnvelope
from contracts.limits import MOST_TRIGGERS_PER_CLIENT
from contracts.text import MultilineText, Text
from contracts.topics import CLIENTS_LIFECYCLE

ClientStatus = Literal["active", "revoked"]
ClientLifecycleType = Literal[
    "client.registered",
    "client.revoked",
    "client.secret_rotated",
    "client.request_signing_key_changed",
    "client.expiry_callback_changed",
    "client.rate_limit_changed",
]


class ClientRateLimit(ContractModel):
    """The trigger rate an operator or admin gave one client instead of the gateway's
    default: a token bucket refilled at ``per_second`` that holds ``burst``."""

    per_second: float = Field(
        gt=0,
        le=MOST_TRIGGERS_PER_CLIENT,
        allow_inf_nan=False,
        description="Triggers a second, sustained.",
    )
    burst: int = Field(ge=1, le=MOST_TRIGGERS_PER_CLIENT, description="Triggers accepted at once.")


class ClientSnapshot(ContractModel):
    """An API client as the trigger gateway and the notifier need to know it.

    No secret, and no hash of a secret, is ever carried: the topic is readable
    by every service and kept forever by compaction. Callback signatures use a
    per-client secret that the notifier derives from ``signing_key_salt`` with a
    key only the server side holds; the salt alone signs nothing.
    """

    client_id: Text = Field(min_length=1, description="The OAuth2 client id.")
    org_id: Text = Field(min_length=1, description="Organisation that owns the client.")
    environment: Environment = Field(description="The only environment the client may act in.")
    name: Text = Field(min_length=1, description="Name the operator gave the client.")
    status: ClientStatus = Field(description="Revoked clients can no longer trigger rules.")
    signing_key_salt: Text = Field(
        min_length=1,
        description=(
            "Public, non-secret salt from which the notifier derives the client's"
            " callback-signing secret with a server-side key. Not a secret or a hash."
        ),
    )
    previous_signing_key_salt: Text | None = Field(
        default=None,
        description=(
            "After a rotation, the salt of the previous callback-signing secret: callbacks"
            " carry a signature with it too until `previous_salt_valid_until`."
        ),
    )
    previous_salt_valid_until: AwareDatetime | None = Field(
        default=None,
        description="When the previous callback-signing secret stops signing; null if none.",
    )
    rotated_at: AwareDatetime | None = Field(
        default=None, description="When the client's secret was last rotated; null if never."
    )
    request_signing_key: MultilineText | None = Field(
        default=None,
        max_length=16_384,
        pattern=r"^-----BEGIN PUBLIC KEY-----\n",
        description=(
            "The public key (PEM SubjectPublicKeyInfo, RSA of 2048 bits or more or EC P-256)"
            " with which the client signs its requests to the gateway; null when the client"
            " does not sign them. Public by nature."
        ),
    )
    expiry_callback_url: Text | None = Field(
        default=None,
        max_length=2048,
        description=(
            "Where the notifier posts a signed `points.expired` callback when points this"
            " client's requests earned expire; null when the client has not opted in."
        ),
    )
    rate_limit: ClientRateLimit | None = Field(
        default=None,
        description=(
            "The client's own trigger rate limit; null when it has none of its own, and"
            " the gateway keeps what it had (its default, or a limit set before this"
            " field existed)."
        ),
    )


class ClientLifecycleEvent(EventEnvelope[ClientSnapshot]):
    """Sent when an API client is registered, revoked, has its secret rotated, has its
    request-signing public key registered, replaced or removed, has its `points.expired`
    callback URL set or cleared, or is given a trigger rate limit of its own."""

    TOPIC: ClassVar[str] = CLIENTS_LIFECYCLE
    VERSION: ClassVar[int] = 1
    TYPES: ClassVar[tuple[str, ...]] = get_args(ClientLifecycleType)

    type: ClientLifecycleType = Field(description="What happened to the client.")

    def key(self) -> str:
        """The client id, so one client's changes stay in order and compact together."""
        return self.data.client_id

    @model_validator(mode="after")
    def _data_matches_envelope_and_type(self) -> Self:
        self._check_data_belongs_to_envelope(
            environment=self.data.environment, org_id=self.data.org_id
        )
        if self.type == "client.revoked" and self.data.status != "revoked":
            raise ValueError("a client.revoked event carries a client with status 'revoked'")
        if self.type == "client.secret_rotated" and self.data.rotated_at is None:
            raise ValueError("a client.secret_rotated event carries the client's rotated_at")
        return self

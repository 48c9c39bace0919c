"""Request and response bodies of the rules API (camelCase JSON)."""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime
from typing import Annotated, Any, Literal

import asyncpg
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, model_validator
from pydantic.alias_generators import to_camel

from contracts.limits import MAX_EXPIRY_DAYS, MAX_POINTS, MOST_TRIGGERS_PER_CLIENT
from contracts.notifications_requested import EmailAddress
from contracts.text import MultilineText, Text
from infra.storable import StorableDatetime
from services.rules.members import Standing
from services.rules.rules import display_status
from services.rules.sharing import ShareDetails


def _date_time_text(value: object) -> object:
    """Let only a JSON string reach the date-time parser: pydantic would otherwise read
    a number, or a string of digits, as seconds since 1970, so a mistyped policy would
    make points expire at an instant nobody chose."""
    if not isinstance(value, str) or not _DATE_TIME_TEXT.match(value):
        raise ValueError("must be an ISO 8601 date-time string, such as 2027-12-31T23:00:00Z")
    return value


_DATE_TIME_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}")

#: An earn rule's expiry policy, one or the other (see ``rules._check_expiry_policy``).
#: Strict: ``true`` or ``"30"`` is refused, not read as 1 or 30 days.
ExpiryDays = Annotated[
    int,
    Strict(),
    Field(
        ge=1,
        le=MAX_EXPIRY_DAYS,
        description="An earn rule's points expire this many days after they are awarded.",
    ),
]
ExpiryInstant = Annotated[
    StorableDatetime,
    BeforeValidator(_date_time_text),
    Field(description="An earn rule's points all expire at this instant (after its endsAt)."),
]


class CamelModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class LoginRequest(CamelModel):
    """A business user's e-mail address and password."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"email": "owner@bakery.example", "password": "correct horse battery"}]
        }
    )

    email: Text = Field(max_length=254)
    password: Text = Field(max_length=1024)


class TokenResponse(CamelModel):
    access_token: str
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 - the scheme name
    expires_in: int


class ConsoleSessionOpened(CamelModel):
    """The CSRF token to send as ``X-CSRF-Token`` with every change made through the cookie."""

    csrf_token: str


class ConsoleSessionView(CamelModel):
    """Who the console's cookie session belongs to, and a fresh CSRF token for it."""

    id: str
    email: str
    role: str
    org_id: str
    expires_at: datetime
    csrf_token: str


class RuleCreate(CamelModel):
    """A new rule; it starts as a draft."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "Double points weekend",
                    "description": "Twice the points on Saturdays and Sundays",
                    "type": "earn",
                    "environment": "staging",
                    "apiTrigger": True,
                    "authorizedClientIds": ["cli_3f2c9a7e5b1d4c8e9f0a1b2c3d4e5f60"],
                    "capMax": 100000,
                    "capPerMember": 500,
                    "maxAmountPerRequest": 100,
                    "startsAt": "2026-12-01T00:00:00+00:00",
                    "endsAt": "2026-12-31T23:59:59+00:00",
                    "pointsExpireAfterDays": 365,
                }
            ]
        }
    )

    name: Text = Field(min_length=1, max_length=200)
    description: MultilineText = Field(default="", max_length=2000)
    type: Literal["earn", "redeem"]
    environment: Literal["staging", "production"]
    api_trigger: bool = False
    authorized_client_ids: list[Text] = Field(default_factory=list, max_length=100)
    cap_max: int | None = Field(default=None, ge=1, le=MAX_POINTS)
    cap_per_member: int | None = Field(default=None, ge=1, le=MAX_POINTS)
    max_amount_per_request: int | None = Field(default=None, ge=1, le=MAX_POINTS)
    starts_at: StorableDatetime | None = None
    ends_at: StorableDatetime | None = None
    points_expire_after_days: ExpiryDays | None = None
    points_expire_at: ExpiryInstant | None = None


class RuleUpdate(CamelModel):
    """A partial update; ``version`` is the version the caller read."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"version": 3, "capMax": 150000, "endsAt": "2027-01-15T23:59:59+00:00"}]
        }
    )

    version: int = Field(ge=1)
    name: Text | None = Field(default=None, min_length=1, max_length=200)
    description: MultilineText | None = Field(default=None, max_length=2000)
    type: Literal["earn", "redeem"] | None = None
    api_trigger: bool | None = None
    authorized_client_ids: list[Text] | None = Field(default=None, max_length=100)
    cap_max: int | None = Field(default=None, ge=1, le=MAX_POINTS)
    cap_per_member: int | None = Field(default=None, ge=1, le=MAX_POINTS)
    max_amount_per_request: int | None = Field(default=None, ge=1, le=MAX_POINTS)
    starts_at: StorableDatetime | None = None
    ends_at: StorableDatetime | None = None
    points_expire_after_days: ExpiryDays | None = None
    points_expire_at: ExpiryInstant | None = None

    @model_validator(mode="after")
    def _required_fields_are_not_cleared(self) -> RuleUpdate:
        # Only the optional fields (caps, limits, dates, clients) can be cleared with null.
        cleared = [
            name
            for name in ("name", "description", "type", "api_trigger")
            if name in self.model_fields_set and getattr(self, name) is None
        ]
        if cleared:
            raise ValueError(f"{', '.join(to_camel(name) for name in cleared)} cannot be null")
        return self

    def changes(self) -> dict[str, Any]:
        """The fields the caller sent (an explicit null clears an optional field).

        A rule has one expiry policy: setting one clears the other, so switching
        from "after N days" to "at an instant" is one field, not two.
        """
        changed = self.model_dump(exclude_unset=True, exclude={"version"})
        for chosen, other in _EXPIRY_POLICIES:
            if changed.get(chosen) is not None and other not in changed:
                changed[other] = None
        if "authorized_client_ids" in changed:
            changed["authorized_client_ids"] = tuple(changed["authorized_client_ids"] or ())
        return changed


_EXPIRY_POLICIES = (
    ("points_expire_after_days", "points_expire_at"),
    ("points_expire_at", "points_expire_after_days"),
)


class ExpiryCallbackChange(CamelModel):
    """Where a client's signed `points.expired` callbacks go; null opts the client out."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"url": "https://partner.example.com/points/expired"}]}
    )

    url: Text | None = Field(max_length=2048)


class StatusChange(CamelModel):
    """Optional: the version the caller read, so a change made meanwhile is not overridden."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"version": 2}]})

    version: int | None = Field(default=None, ge=1)


class RuleView(CamelModel):
    id: str
    name: str
    description: str
    type: str
    environment: str
    status: str
    display_status: str
    api_trigger: bool
    authorized_client_ids: list[str]
    cap_max: int | None
    cap_used: int = Field(
        description="Points the rule has moved so far (applied results); capMax cannot go below it."
    )
    cap_per_member: int | None
    max_amount_per_request: int | None
    starts_at: datetime | None
    ends_at: datetime | None
    points_expire_after_days: int | None = Field(
        description="Points the rule awards expire this many days later; null when not."
    )
    points_expire_at: datetime | None = Field(
        description="Points the rule awards all expire at this instant; null when not."
    )
    version: int
    promoted_from: str | None = Field(
        description="Id of the staging rule this production rule was promoted from."
    )
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, rule: asyncpg.Record) -> RuleView:
        return cls(
            id=rule["id"],
            name=rule["name"],
            description=rule["description"],
            type=rule["type"],
            environment=rule["environment"],
            status=rule["status"],
            display_status=display_status(rule),
            api_trigger=rule["api_trigger"],
            authorized_client_ids=list(rule["authorized_client_ids"]),
            cap_max=rule["cap_max"],
            cap_used=rule["cap_used"],
            cap_per_member=rule["cap_per_member"],
            max_amount_per_request=rule["max_amount_per_request"],
            starts_at=rule["starts_at"],
            ends_at=rule["ends_at"],
            points_expire_after_days=rule["points_expire_after_days"],
            points_expire_at=rule["points_expire_at"],
            version=rule["version"],
            promoted_from=rule["promoted_from"],
            created_at=rule["created_at"],
            updated_at=rule["updated_at"],
        )


class ShareInfo(CamelModel):
    rule_name: str
    rule_id: str
    rule_type: Literal["Earn Points", "Redeem Points"]
    environment: Literal["Staging", "Production"]
    url_endpoint: str
    integration_guide_url: str
    points_expire_after_days: int | None = Field(
        description="Points the rule awards expire this many days later; null when not."
    )
    points_expire_at: datetime | None = Field(
        description="Points the rule awards all expire at this instant; null when not."
    )

    @classmethod
    def of(cls, details: ShareDetails) -> ShareInfo:
        return cls(
            rule_name=details.rule_name,
            rule_id=details.rule_id,
            rule_type="Earn Points" if details.rule_type == "earn" else "Redeem Points",
            environment="Production" if details.environment == "production" else "Staging",
            url_endpoint=details.url_endpoint,
            integration_guide_url=details.integration_guide_url,
            points_expire_after_days=details.points_expire_after_days,
            points_expire_at=details.points_expire_at,
        )


class ShareEmailRequest(CamelModel):
    """Who should receive a rule's share details: 1 to 20 e-mail addresses."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"to": ["dev@partner.example.com"]}]})

    to: list[EmailAddress] = Field(
        min_length=1, max_length=20, examples=[["dev@partner.example.com"]]
    )

    def recipients(self) -> list[str]:
        """The addresses in the order given, each once (ignoring case)."""
        first: dict[str, str] = {}
        for address in self.to:
            first.setdefault(address.lower(), address)
        return list(first.values())


class ShareEmailAccepted(CamelModel):
    notification_id: str


#: A member's id as the trigger gateway accepts ``userId`` (so a member the gateway can
#: see is one the console can block, and nothing else): a letter or digit, then up to 127
#: letters, digits and ``._:@+-``.
MEMBER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}$"
MEMBER_ID_MAX_LENGTH = 128


class MemberBlock(CamelModel):
    """Block a member in one environment; the reason is kept and shown to business users."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"environment": "production", "reason": "Account reported as abused"}]
        }
    )

    environment: Literal["staging", "production"]
    reason: Text | None = Field(default=None, max_length=500)


class MemberUnblock(CamelModel):
    """Unblock a member in one environment."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"environment": "production"}]})

    environment: Literal["staging", "production"]


class MemberStandingView(CamelModel):
    """Whether a member is blocked in an environment; ``changedBy`` (a business user's id)
    and ``changedAt`` are null for a member nobody ever blocked."""

    user_id: str
    environment: str
    blocked: bool
    reason: str | None
    changed_by: str | None
    changed_at: datetime | None

    @classmethod
    def of(cls, standing: Standing) -> MemberStandingView:
        return cls(**dataclasses.asdict(standing))


class RuleList(CamelModel):
    items: list[RuleView]


class ClientCreate(CamelModel):
    """A new API client of the caller's organisation, for one environment."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"name": "Partner mobile app", "environment": "staging"}]}
    )

    name: Text = Field(min_length=1, max_length=200)
    environment: Literal["staging", "production"]


class RateLimitView(CamelModel):
    """A client's own trigger rate limit: a token bucket refilled at ``perSecond``
    that holds ``burst``."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"perSecond": 50, "burst": 100}]})

    per_second: Annotated[float, Strict()] = Field(
        gt=0,
        le=MOST_TRIGGERS_PER_CLIENT,
        allow_inf_nan=False,
        description="Triggers a second, sustained.",
    )
    burst: Annotated[int, Strict()] = Field(
        ge=1, le=MOST_TRIGGERS_PER_CLIENT, description="Triggers accepted at once."
    )


class PublicKeyChange(CamelModel):
    """The PEM public key (RSA of 2048 bits or more, or EC P-256) the client signs its
    trigger requests with; null removes it, and its requests need no signature."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "publicKey": "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcD"
                    "QgAEbU2WE3zYSWRBdD2IxzFWiIThLS7n\nbkpfGUeVlCV8SVYeBzPlB9HkHI3q5BiGol0bQ"
                    "CKaeroOZhAOnF3AuTemUQ==\n-----END PUBLIC KEY-----\n"
                }
            ]
        }
    )

    public_key: MultilineText | None = Field(max_length=16_384)


class PublicKeyView(CamelModel):
    client_id: str
    request_signing_key_fingerprint: str | None


class ClientView(CamelModel):
    """An API client, without its secrets."""

    client_id: str
    name: str
    environment: str
    status: str = Field(description="`active` or `revoked`.")
    created_at: datetime
    rotated_at: datetime | None
    revoked_at: datetime | None = None
    previous_secret_valid_until: datetime | None = Field(
        default=None,
        description="After a rotation, until when the previous secret still works; null when "
        "only the current one does.",
    )
    last_token_issued_at: datetime | None = Field(
        default=None,
        description="When a token was last issued to the client, to the minute; null if never.",
    )
    rate_limit: RateLimitView | None = Field(
        default=None,
        description="The client's own trigger rate limit; null when the gateway's default applies.",
    )
    request_signing_key_set: bool = Field(
        default=False, description="Whether the client must sign its trigger requests."
    )
    request_signing_key: str | None = Field(
        description="The PEM public key requests are signed with."
    )
    request_signing_key_fingerprint: str | None
    expiry_callback_url: str | None


class IssuedClientView(ClientView):
    """A client as created or rotated, with its secrets: shown this once, never again."""

    client_secret: str = Field(description="The OAuth2 client secret. Shown only this once.")
    callback_signing_secret: str = Field(
        description="The secret callbacks to this client are signed with. Shown only this once."
    )


class ClientList(CamelModel):
    items: list[ClientView]


class ExpiryCallbackView(CamelModel):
    client_id: str
    expiry_callback_url: str | None


class AuditEntry(CamelModel):
    id: int
    actor: str | None = Field(description="The business user's id; null for the platform.")
    actor_email: str | None
    action: str
    subject_id: str | None
    details: dict[str, Any]
    at: datetime


class AuditPage(CamelModel):
    items: list[AuditEntry]
    next_before: int | None = Field(description="Pass as `before` for the next page.")


class BlockedMembersPage(CamelModel):
    items: list[MemberStandingView]
    next_after: str | None = Field(description="Pass as `after` for the next page.")


class PublicJwk(BaseModel):
    """One of the realm's public signing keys (RFC 7517)."""

    model_config = ConfigDict(extra="allow")

    kty: str
    kid: str
    use: str | None = None
    alg: str | None = None


class JwkSet(BaseModel):
    keys: list[PublicJwk]


class AuthorizationServerMetadata(BaseModel):
    """The realm's RFC 8414 metadata (see ``TokenIssuer.metadata``)."""

    model_config = ConfigDict(extra="allow")

    issuer: str
    token_endpoint: str
    jwks_uri: str
    grant_types_supported: list[str]
    token_endpoint_auth_methods_supported: list[str]
    scopes_supported: list[str]


# --- the team ------------------------------------------------------------------------

Role = Literal["admin", "editor", "viewer"]


class TeamMemberView(CamelModel):
    """A business user of the organisation, as every role may see it."""

    id: str
    email: str
    role: Role
    status: Literal["invited", "active"] = Field(
        description="`invited` until the invitation is accepted, then `active`."
    )
    invited_at: datetime | None = Field(description="When last invited; null if never invited.")
    invitation_expires_at: datetime | None = Field(
        description="When the open invitation's link stops working; null when none is open."
    )
    last_sign_in_at: datetime | None = Field(description="Last sign-in, when known.")

    @classmethod
    def of(cls, row: asyncpg.Record | dict[str, Any]) -> TeamMemberView:
        return cls(
            id=row["id"],
            email=row["email"],
            role=row["role"],
            status=row["status"],
            invited_at=row["invited_at"],
            invitation_expires_at=row.get("invitation_expires_at"),
            last_sign_in_at=row["last_sign_in_at"],
        )


class TeamList(CamelModel):
    items: list[TeamMemberView]


class InvitationCreate(CamelModel):
    """Whom to invite, and as what."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"email": "sam@bakery.example", "role": "editor"}]}
    )

    email: EmailAddress
    role: Role


class RoleChange(CamelModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"role": "viewer"}]})

    role: Role


class InvitationAcceptance(CamelModel):
    """The password the invitee chooses (at least 8 characters)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"password": "correct horse"}]})

    password: Text = Field(max_length=1024)


class InvitationAccepted(CamelModel):
    """The invitee's account, now active: sign in with its e-mail and the new password."""

    id: str
    email: str
    role: Role

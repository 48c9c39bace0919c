"""Admitting triggers: the one way from a developer's trigger to its 202 or refusal.

:meth:`Gateway.accept` runs a trigger through the client's standing and
signature, its rate-limit token, the rule, member and amount checks, the
member's standing (a member the business blocked is refused), its caps and its
idempotency record, in the documented order; the HTTP layer only translates
the request in and the answer out.

A trigger costs two statements, each shared with the other triggers waiting
at the same moment (coalesced, see :mod:`infra.batching`). The first
(:func:`admit_triggers`) takes tokens from the clients' rate-limit buckets and
reads each client's standing, rule, member's standing and any earlier request
with the same requestId. The second (:func:`record_triggers`, after the
checks) writes each trigger's idempotency record, cap reservations and outbox
row of ``points.requested.v1``, which commit before the 202 is sent: an
accepted request is never lost and a refused one reserves nothing. Every
trigger is checked against what the first statement read, so a rule, client or
member changed a moment ago counts at once. (A path that checked triggers
against the clients and rules a replica remembered, and recorded them in one
statement, was removed: back to back, it gained no throughput beyond the
machine's noise.)

Rate-limit buckets live in PostgreSQL, so a client's limit holds however many
gateway replicas serve it (N replicas do not grant N times the limit) and a
restart forgets nothing; the bucket's row is locked for the first statement
only. Measured before the statements were merged: 0.13 ms per bucket update on
the embedded PostgreSQL of a 2-core machine, and 16 concurrent callers on one
bucket still took ~10,700 tokens/s, so the shared bucket does not dominate.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg

from infra import outbox
from infra.batching import Coalescer
from infra.callback_urls import check_callback_url
from infra.logging import get_logger
from infra.problems import Problem, is_unavailable
from services.trigger import repository
from services.trigger.activity import ACCEPTED, ActivityTally
from services.trigger.checks import (
    Caller,
    CheckedTrigger,
    Lookup,
    Refused,
    Replayed,
    Trigger,
    accepted_answer,
    check_trigger,
    replay_answer,
    replay_of,
    valid_user_id,
)
from services.trigger.rate_limits import RateLimit, RateLimited, rate_limit_headers
from services.trigger.settings import TriggerSettings
from services.trigger.signatures import SignedRequest, check_request_signature

log = get_logger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: A statement run for a batch of items: one outcome per item, in order (an exception
#: for that item alone), as :class:`infra.batching.Coalescer` serves them.
Batch = Callable[[list[T]], Awaitable[Sequence[R | BaseException]]]


class ClientNotReady(Problem):
    status = 503
    code = "CLIENT_NOT_READY"


class ClientRevoked(Problem):
    """A revoked client's token verifies until it expires; its requests are refused as
    any unauthorised one is (``infra.http.Unauthorized``)."""

    status = 401
    code = "UNAUTHORIZED"

    def __init__(self) -> None:
        super().__init__(
            "this client has been revoked", headers={"WWW-Authenticate": 'Bearer realm="partner"'}
        )


@dataclass(frozen=True)
class Receipt:
    """What a trigger's sender gets back on a 202: its body, and the rate-limit token
    its request took."""

    answer: dict[str, Any]
    rate_limit: RateLimit


class Gateway:
    """Accepts triggers: owns the coalescers that admit and record concurrent triggers
    in batches."""

    def __init__(
        self,
        settings: TriggerSettings,
        *,
        admit: Batch[Arrival, Admission],
        record: Batch[CheckedTrigger, dict[str, Any]],
        tally: ActivityTally | None = None,
    ) -> None:
        self.settings = settings
        #: Every answer, counted for the activity charts (services.trigger.activity).
        self.tally = tally or ActivityTally()
        self.admissions = batched(admit, settings)
        self.recordings = batched(record, settings)

    @classmethod
    def on_database(
        cls,
        pool_of: Callable[[], asyncpg.Pool],
        settings: TriggerSettings,
        *,
        committed: Callable[[], None] = lambda: None,
        tally: ActivityTally | None = None,
    ) -> Gateway:
        """A gateway whose batches are the statements below, on the pool ``pool_of`` gives;
        ``committed`` is called after each batch of requests is recorded (their outbox
        rows committed: the relay wakes)."""

        async def admit(batch: list[Arrival]) -> list[Admission]:
            return await admit_triggers(
                pool_of(),
                batch,
                default_per_second=settings.rate_limit_per_second,
                default_burst=settings.rate_limit_burst,
            )

        async def record(batch: list[CheckedTrigger]) -> list[dict[str, Any] | Problem]:
            outcomes = await record_triggers(pool_of(), batch)
            committed()
            return outcomes

        return cls(settings, admit=admit, record=record, tally=tally)

    async def accept(
        self, caller: Caller, trigger: Trigger, signed: SignedRequest, correlation_id: str
    ) -> Receipt:
        """Accept a trigger, or raise the problem that refuses it, in the documented
        order; nothing is recorded for a refused trigger.

        One round trip reads the client's standing, takes its rate-limit token and
        finds the rule and any earlier request with this requestId; a second
        records the request. Each is shared with the triggers waiting at the same
        moment. From the first on, the receipt and any refusal carry the client's
        rate-limit fields.
        """
        rule_id = None
        try:
            admission = await self.admissions.submit(Arrival(caller, trigger))
            rule_id = known_rule(admission.lookup, caller, trigger.rule_id)
            with telling_the_rate_limit(admission.rate_limit):
                receipt = await self.judge(caller, trigger, signed, correlation_id, admission)
        except Exception as error:
            outcome = error.code if isinstance(error, Problem) else UNAVAILABLE
            if isinstance(error, Problem) or is_unavailable(error):
                self.tally.count(caller.org_id, caller.environment, rule_id, outcome)
            raise
        self.tally.count(caller.org_id, caller.environment, rule_id, ACCEPTED)
        return receipt

    async def judge(
        self,
        caller: Caller,
        trigger: Trigger,
        signed: SignedRequest,
        correlation_id: str,
        admission: Admission,
    ) -> Receipt:
        """A trigger after its first round trip: checked, and recorded unless refused."""
        self.check_access(admission.access, signed)
        refuse_when_rate_limited(admission.rate_limit, caller.client_id)
        replay = replay_of(admission.lookup, trigger)
        if replay is not None:
            # The original answer, even if the callback's host has moved since.
            return Receipt(replay, admission.rate_limit)
        if trigger.callback_url is not None:
            await check_callback_url(
                trigger.callback_url,
                development=self.settings.is_development,
                timeout=self.settings.callback_dns_timeout_seconds,
            )
        checked = check_trigger(caller, trigger, admission.lookup, correlation_id)
        answer = await self.recordings.submit(checked)
        return recorded(caller, trigger, Receipt(answer, admission.rate_limit))

    def check_access(self, access: ClientAccess, signed: SignedRequest) -> None:
        """Refuse a revoked client and, when it registered a public key, a request it did
        not sign (checked before any rule)."""
        if not access.known:
            raise ClientNotReady(
                "this client was created moments ago and the gateway has not seen it yet; "
                "retry in a second",
                headers={"Retry-After": "1"},
            )
        if access.revoked:
            raise ClientRevoked()
        if access.request_signing_key is not None:
            check_request_signature(
                access.request_signing_key,
                signed,
                at=time.time(),
                window_seconds=self.settings.request_signature_window_seconds,
            )


#: The outcome counted for a trigger the gateway could not record (database away).
UNAVAILABLE = "SERVICE_UNAVAILABLE"


def known_rule(lookup: Lookup, caller: Caller, rule_id: str) -> str | None:
    """``rule_id`` if it names a rule of the caller's organisation, else None: activity is
    counted under rules that exist, never under an id a client made up."""
    if lookup.rule is None or lookup.rule["org_id"] != caller.org_id:
        return None
    return rule_id


def batched(run_batch: Batch[T, R], settings: TriggerSettings) -> Coalescer[T, R]:
    """Concurrent calls of one statement, coalesced. A database that is away fails every
    trigger of a batch alike; any other failure may be one trigger's, so the batch is
    retried one by one and only that trigger gets it."""
    return Coalescer(
        run_batch,
        max_batch=settings.db_batch_max,
        max_in_flight=settings.db_batches_in_flight,
        shared=is_unavailable,
    )


@contextmanager
def telling_the_rate_limit(limit: RateLimit) -> Iterator[None]:
    """Every refusal raised inside carries the rate-limit fields of the bucket its trigger
    was admitted by: a refused trigger took its token too (or, refused for its rate,
    found none), and its sender should hear what is left as a 202's would."""
    try:
        yield
    except Problem as refusal:
        refusal.headers = {**rate_limit_headers(limit), **refusal.headers}
        raise


def refuse_when_rate_limited(limit: RateLimit, client_id: str) -> None:
    if limit.granted:
        return
    log.info("points.request.rate_limited", client_id=client_id)
    raise RateLimited(
        f"this client may send {limit.per_second:g} requests per second "
        f"(bursts of {limit.burst}); retry after {limit.retry_after_seconds} s",
        headers={"Retry-After": str(limit.retry_after_seconds)},
    )


def recorded(caller: Caller, trigger: Trigger, receipt: Receipt) -> Receipt:
    """A newly recorded trigger's receipt, logged."""
    log.info(
        "points.request.accepted",
        client_id=caller.client_id,
        request_id=trigger.request_id,
        rule_id=trigger.rule_id,
        transaction_id=receipt.answer["transactionId"],
    )
    return receipt


@dataclass(frozen=True)
class ClientAccess:
    """What the projection says about a client's standing, read once per request.

    A client the gateway has not projected yet (its registration event is on its
    way, for a few milliseconds) is not ``known``: whether it must sign is not
    known either, so it is refused with a retryable error, never taken as unsigned.
    """

    revoked: bool
    request_signing_key: str | None
    known: bool = True


@dataclass(frozen=True)
class Admission:
    """What accepting a trigger reads in its first round trip: the client's standing,
    the rate-limit token its request took, and the rule and any earlier request."""

    access: ClientAccess
    rate_limit: RateLimit
    lookup: Lookup


@dataclass(frozen=True)
class Arrival:
    """A trigger waiting to be admitted: who sent it, and what it asks for."""

    caller: Caller
    trigger: Trigger


async def admit_triggers(
    pool: asyncpg.Pool,
    batch: Sequence[Arrival],
    *,
    default_per_second: float,
    default_burst: int,
) -> list[Admission]:
    """Admit a batch of triggers in one statement: each one's admission, in order."""
    rows = await repository.admit_triggers(
        pool,
        [
            (
                arrival.caller.client_id,
                arrival.trigger.request_id,
                arrival.trigger.rule_id,
                valid_user_id(arrival.trigger.user_id),
            )
            for arrival in batch
        ],
        default_per_second=default_per_second,
        default_burst=default_burst,
    )
    return [
        Admission(
            ClientAccess(
                row["client_status"] == "revoked",
                row["request_signing_key"],
                known=row["client_status"] is not None,
            ),
            RateLimit(row["granted"], row["tokens"], row["per_second"], row["burst"]),
            Lookup(
                rule=row if row["rule_id"] is not None else None,
                earlier_transaction_id=row["earlier_transaction_id"],
                earlier_body_hash=row["earlier_body_hash"],
                member_blocked=row["member_blocked"],
            ),
        )
        for row in rows
    ]


async def client_access(
    connection: asyncpg.Connection | asyncpg.Pool, client_id: str
) -> ClientAccess:
    """Whether the client is revoked and the key it signs with."""
    row = await repository.client_access(connection, client_id)
    if row is None:
        return ClientAccess(revoked=False, request_signing_key=None, known=False)
    return ClientAccess(row["status"] == "revoked", row["request_signing_key"])


CAP_REFUSALS = {
    "CAP_EXCEEDED": "the rule's cap of {cap_max} points would be exceeded",
    "MEMBER_CAP_EXCEEDED": "the rule's per-member cap of {cap_per_member} points would be "
    "exceeded for this member",
}


async def record_triggers(
    pool: asyncpg.Pool, batch: Sequence[CheckedTrigger]
) -> list[dict[str, Any] | Problem]:
    """Reserve and record a batch of checked triggers in one statement and one commit;
    each one's 202 body, in order, or the problem that refuses it.

    For each trigger the idempotency record, the cap reservations and the outbox
    row commit together; a trigger whose amount would overshoot a cap records
    and reserves nothing, and the others in its batch are not affected.
    """
    rows = [_request_row(checked) for checked in batch]
    recorded = await repository.record_requests(pool, rows)
    by_position = {
        row["request_position"]: _recorded_outcome(batch[row["request_position"] - 1], row)
        for row in recorded
    }
    return [by_position[position] for position in range(1, len(batch) + 1)]


def _request_row(checked: CheckedTrigger) -> tuple[Any, ...]:
    """The arguments of ``record_points_requests`` for one trigger, in its order."""
    event, requested = checked.event, checked.event.data
    return (
        requested.client_id,
        requested.request_id,
        requested.transaction_id,
        checked.trigger.body_hash(),
        event.org_id,
        event.environment,
        requested.rule_id,
        requested.rule_version,
        requested.user_id,
        requested.type,
        requested.amount,
        checked.rule["cap_max"],
        checked.rule["cap_per_member"],
        *outbox.outbox_row(event),
        requested.callback_url,
        event.correlation_id,
        requested.expires_at,
    )


def _recorded_outcome(checked: CheckedTrigger, row: asyncpg.Record) -> dict[str, Any] | Problem:
    outcome = row["outcome"]
    if outcome in CAP_REFUSALS:
        return Refused(CAP_REFUSALS[outcome].format(**checked.rule), code=outcome)
    if outcome == "replayed":
        # A concurrent request with the same requestId was recorded first.
        try:
            return replay_answer(checked.trigger, row["transaction_id"], row["body_hash"])
        except Replayed as conflict:
            return conflict
    return accepted_answer(checked.trigger, checked.event.data.transaction_id)

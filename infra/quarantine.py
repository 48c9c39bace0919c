"""The quarantine: messages a consumer could not process, kept whole for an operator.

A message is quarantined when processing it fails for a reason that another
attempt cannot change (it is not JSON, breaks its contract, or the database
refuses its values), so that it no longer holds up the messages behind it.
Nothing is dropped: the row keeps the message's bytes, key, headers, topic,
partition and offset with the error, in the consuming service's own schema,
and the same transaction stages a copy on the topic's dead-letter topic
through the outbox. Once the cause is fixed, an operator replays it
(``points quarantine replay``): it goes back on its topic, through the outbox
again, and every consumer's inbox makes that safe for the ones that had
processed it already.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import pydantic_core
from aiokafka import ConsumerRecord

from contracts.topics import dead_letter_topic
from infra import db, outbox

# One statement for a batch's messages; RETURNING names those inserted (a message
# another environment's consumer of this service kept already is not).
RECORD_ALL = """
INSERT INTO quarantine (consumer, topic, kafka_partition, kafka_offset, kafka_timestamp,
                        key, value, headers, event_id, error_type, error, attempts)
SELECT $1, topic, kafka_partition, kafka_offset, kafka_timestamp,
       key, value, headers::jsonb, event_id, error_type, error, attempts
FROM unnest($2::text[], $3::integer[], $4::bigint[], $5::bigint[], $6::bytea[], $7::bytea[],
            $8::text[], $9::uuid[], $10::text[], $11::text[], $12::integer[]) WITH ORDINALITY
     AS kept (topic, kafka_partition, kafka_offset, kafka_timestamp, key, value, headers,
              event_id, error_type, error, attempts, position)
ORDER BY position
ON CONFLICT (topic, kafka_partition, kafka_offset, kafka_timestamp) DO NOTHING
RETURNING id, topic, kafka_partition, kafka_offset, kafka_timestamp
"""
RESOLVE = "UPDATE quarantine SET resolution = $2, resolved_at = now() WHERE id = $1"
LIST = """
SELECT id, consumer, topic, kafka_partition, kafka_offset, key, value, headers, event_id,
       error_type, error, attempts, resolution, quarantined_at, resolved_at
FROM quarantine
WHERE ($1::boolean OR resolution IS NULL)
ORDER BY id DESC
LIMIT $2
"""
WAITING = """
SELECT id, topic, key, value, headers FROM quarantine
WHERE resolution IS NULL AND ($1::bigint[] IS NULL OR id = ANY($1::bigint[]))
ORDER BY id
FOR UPDATE
"""
FIND = "SELECT id, resolution FROM quarantine WHERE id = ANY($1::bigint[])"
WAITING_COUNT = "SELECT count(*) FROM quarantine WHERE resolution IS NULL"

#: The longest error text kept; a validation error of a huge message can be long.
ERROR_MAX_CHARS = 4_000
QUARANTINE_HEADER = "x-quarantine"


@dataclass(frozen=True)
class Refusal:
    """Why a message was quarantined."""

    error: BaseException
    attempts: int

    @property
    def error_type(self) -> str:
        return type(self.error).__name__

    @property
    def text(self) -> str:
        return storable_text(str(self.error) or self.error_type)[:ERROR_MAX_CHARS]


def storable_text(text: str) -> str:
    """``text`` as PostgreSQL can store it: the error of a message holding a NUL or a
    lone surrogate often quotes it."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def record_key_text(key: bytes | None) -> str:
    """A Kafka key as the outbox's text column holds it, as close to the original as
    PostgreSQL allows (a key that is not UTF-8 text keeps its partition only if it is)."""
    if not key:
        return ""
    return storable_text(key.decode("utf-8", "backslashreplace"))


@dataclass(frozen=True)
class Message:
    """A consumed record to quarantine, why, and its event id when it parsed."""

    record: ConsumerRecord[Any, Any]
    refusal: Refusal
    event_id: UUID | None = None

    @property
    def place(self) -> tuple[str, int, int, int]:
        record = self.record
        return record.topic, record.partition, record.offset, record.timestamp

    def headers(self) -> list[tuple[str, str]]:
        return [
            (storable_text(name), _header_text(value)) for name, value in self.record.headers or ()
        ]


async def quarantine(
    connection: asyncpg.Connection, messages: Sequence[Message], *, consumer: str
) -> list[int | None]:
    """Keep ``messages`` in the quarantine and stage their copies for the dead-letter
    topics, in the caller's transaction; each one's row id, or None where another
    consumer of this service (another environment's) kept it already."""
    assert connection.is_in_transaction(), "quarantine must commit with its dead letters"
    rows = [
        (
            *message.place,
            message.record.key,
            message.record.value,
            # JSON text: a list of pairs in an array parameter would read as a dimension.
            json.dumps(message.headers()),
            message.event_id,
            message.refusal.error_type,
            message.refusal.text,
            message.refusal.attempts,
        )
        for message in messages
    ]
    inserted = await connection.fetch(RECORD_ALL, consumer, *db.array_columns(rows, width=11))
    ids = {tuple(row.values())[1:]: row["id"] for row in inserted}
    kept = [ids.get(message.place) for message in messages]
    await outbox.enqueue_rows(
        connection,
        [
            _dead_letter(message, quarantine_id, consumer)
            for message, quarantine_id in zip(messages, kept, strict=True)
            if quarantine_id is not None
        ],
    )
    return kept


def _dead_letter(message: Message, quarantine_id: int, consumer: str) -> outbox.OutboxRow:
    record = message.record
    headers = dict(message.headers()) | {
        QUARANTINE_HEADER: pydantic_core.to_json(
            {
                "id": quarantine_id,
                "consumer": consumer,
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "error": message.refusal.text,
            }
        ).decode(),
    }
    return (
        dead_letter_topic(record.topic),
        record_key_text(record.key),
        record.value or b"",
        json.dumps(headers),
    )


def _header_text(value: bytes | None) -> str:
    return storable_text((value or b"").decode("utf-8", "backslashreplace"))


async def resolve(connection: asyncpg.Connection, quarantine_id: int, resolution: str) -> None:
    await connection.execute(RESOLVE, quarantine_id, resolution)


@dataclass(frozen=True)
class Quarantined:
    """One quarantined message as an operator sees it."""

    id: int
    consumer: str
    topic: str
    partition: int
    offset: int
    event_id: UUID | None
    error_type: str
    error: str
    attempts: int
    resolution: str | None
    quarantined_at: datetime
    resolved_at: datetime | None
    size: int


async def list_quarantined(
    connection: asyncpg.Connection, *, include_resolved: bool = False, limit: int = 100
) -> list[Quarantined]:
    """The newest quarantined messages first; only those waiting unless ``include_resolved``."""
    rows = await connection.fetch(LIST, include_resolved, limit)
    return [
        Quarantined(
            id=row["id"],
            consumer=row["consumer"],
            topic=row["topic"],
            partition=row["kafka_partition"],
            offset=row["kafka_offset"],
            event_id=row["event_id"],
            error_type=row["error_type"],
            error=row["error"],
            attempts=row["attempts"],
            resolution=row["resolution"],
            quarantined_at=row["quarantined_at"],
            resolved_at=row["resolved_at"],
            size=len(row["value"] or b""),
        )
        for row in rows
    ]


class NotReplayable(Exception):
    """Some of the asked-for messages cannot be replayed (unknown, or resolved already)."""


async def replay(connection: asyncpg.Connection, ids: Sequence[int] | None) -> list[int]:
    """Put the waiting quarantined messages (those in ``ids``, or all when None) back on
    their topics through the outbox, with their key, value and headers, in the
    caller's transaction; the ids replayed.

    A message whose request was already given a failed result is not replayed:
    applying it now would contradict what the developer was told.
    """
    assert connection.is_in_transaction(), "replay must commit with its outbox rows"
    if ids is not None:
        found = {row["id"]: row["resolution"] for row in await connection.fetch(FIND, list(ids))}
        unknown = sorted(set(ids) - set(found))
        resolved = sorted(i for i, resolution in found.items() if resolution is not None)
        if unknown or resolved:
            raise NotReplayable(
                "; ".join(
                    part
                    for part in (
                        f"no quarantined message {_ids(unknown)}" if unknown else "",
                        f"already resolved (failed or replayed): {_ids(resolved)}"
                        if resolved
                        else "",
                    )
                    if part
                )
            )
    rows = await connection.fetch(WAITING, list(ids) if ids is not None else None)
    await outbox.enqueue_rows(
        connection,
        [
            (
                row["topic"],
                record_key_text(row["key"]),
                row["value"] or b"",
                json.dumps(dict(row["headers"])),
            )
            for row in rows
        ],
    )
    for row in rows:
        await resolve(connection, row["id"], "replayed")
    return [row["id"] for row in rows]


def _ids(ids: Sequence[int]) -> str:
    return ", ".join(map(str, ids))


async def waiting_count(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval(WAITING_COUNT))

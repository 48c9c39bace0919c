"""Where a request stands, as its client polls it."""

from __future__ import annotations

from datetime import UTC
from typing import Any

import asyncpg

from infra.problems import Problem
from services.trigger import repository
from services.trigger.checks import Caller


def request_view(row: asyncpg.Record) -> dict[str, Any]:
    view: dict[str, Any] = {
        "requestId": row["request_id"],
        "transactionId": str(row["transaction_id"]),
        "status": row["status"],
    }
    if row["reason"]:
        view["reason"] = row["reason"]
    if row["reversed_at"] is not None:
        view["reversal"] = {
            "reversalId": str(row["reversal_id"]),
            "reversedAmount": row["reversed_amount"],
            "uncoveredAmount": row["uncovered_amount"],
            "reversedAt": row["reversed_at"].astimezone(UTC).isoformat().replace("+00:00", "Z"),
        }
    return view


async def request_status(
    connection: asyncpg.Connection, caller: Caller, request_id: str
) -> dict[str, Any]:
    row = await repository.get_request(connection, caller.client_id, request_id)
    if row is None:
        raise Problem(f"request {request_id} is not known", status=404, code="REQUEST_NOT_FOUND")
    return request_view(row)

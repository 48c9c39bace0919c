"""Which members are blocked: a projection of ``members.lifecycle.v1`` onto their accounts.

A blocked member's requests that the ledger applies from then on are settled
as rejected (``MEMBER_BLOCKED``): the standing sits on the member's account,
which every batch locks and reads anyway, so the hot path pays nothing for it.
"""

from __future__ import annotations

import asyncpg

from contracts import MemberLifecycleEvent
from services.ledger import repository
from services.ledger.repository import AccountKey


async def project_members(
    connection: asyncpg.Connection, events: list[MemberLifecycleEvent]
) -> None:
    """Keep each member's newest standing (an older event arriving late changes nothing),
    creating the member's account when the ledger has not seen the member yet."""
    keys = sorted(
        {
            AccountKey(event.environment, event.org_id, "member", event.data.user_id)
            for event in events
        }
    )
    await repository.create_missing_accounts(connection, keys)
    # The batches' lock order, so a projection and a batch queue rather than deadlock.
    accounts = await repository.lock_accounts(connection, keys)
    for event in events:
        standing = event.data
        key = AccountKey(event.environment, event.org_id, "member", standing.user_id)
        await repository.set_standing(
            connection, accounts[key].id, blocked=standing.blocked, changed_at=standing.changed_at
        )

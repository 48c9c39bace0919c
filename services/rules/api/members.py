"""Business users' routes for members: blocking and unblocking a member of one
environment, and reading members' standing."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Path, Query

from contracts import Environment
from contracts.text import Text
from infra.openapi import problems
from services.rules import members
from services.rules.api import BusinessUser, CorrelationId, Tx, User
from services.rules.schemas import (
    MEMBER_ID_MAX_LENGTH,
    MEMBER_ID_PATTERN,
    BlockedMembersPage,
    MemberBlock,
    MemberStandingView,
    MemberUnblock,
)

router = APIRouter()

MemberId = Annotated[
    Text,
    Path(
        alias="userId",
        max_length=MEMBER_ID_MAX_LENGTH,
        pattern=MEMBER_ID_PATTERN,
        description="The member, as partners send `userId` to the trigger gateway.",
    ),
]
EnvironmentQuery = Annotated[
    Literal["staging", "production"], Query(description="`staging` or `production`.")
]


@router.post(
    "/v1/members/{userId}/block",
    response_model=MemberStandingView,
    tags=["members"],
    responses=problems({403: ["READ_ONLY_ROLE"]}),
)
async def block_member(
    user_id: MemberId, body: MemberBlock, user: User, tx: Tx, cid: CorrelationId
) -> MemberStandingView:
    """Block a member in an environment: the gateway refuses its triggers with
    ``MEMBER_BLOCKED`` and requests not yet applied settle as rejected. Blocking a
    blocked member changes nothing."""
    return await _change_standing(user_id, body.environment, body.reason, user, tx, cid)


@router.post(
    "/v1/members/{userId}/unblock",
    response_model=MemberStandingView,
    tags=["members"],
    responses=problems({403: ["READ_ONLY_ROLE"]}),
)
async def unblock_member(
    user_id: MemberId, body: MemberUnblock, user: User, tx: Tx, cid: CorrelationId
) -> MemberStandingView:
    """Unblock a member in an environment; unblocking a member in good standing changes
    nothing."""
    return await _change_standing(user_id, body.environment, None, user, tx, cid, blocked=False)


async def _change_standing(
    user_id: str,
    environment: Environment,
    reason: str | None,
    user: BusinessUser,
    tx: asyncpg.Connection,
    cid: str,
    *,
    blocked: bool = True,
) -> MemberStandingView:
    user.require_editor()
    standing = await members.change_standing(
        tx,
        user.org_id,
        environment,
        user_id,
        blocked=blocked,
        reason=reason,
        actor=user.id,
        correlation_id=cid,
    )
    return MemberStandingView.of(standing)


@router.get("/v1/members/blocked", response_model=BlockedMembersPage, tags=["members"])
async def blocked_members(
    user: User,
    tx: Tx,
    environment: EnvironmentQuery,
    after: Annotated[
        Text | None,
        Query(max_length=MEMBER_ID_MAX_LENGTH, description="Members after this user id."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> dict[str, Any]:
    """The organisation's blocked members in an environment, by user id, a page at a time."""
    found = await members.blocked_members(tx, user.org_id, environment, after, limit)
    items = [
        MemberStandingView.of(standing).model_dump(by_alias=True, mode="json") for standing in found
    ]
    return {"items": items, "nextAfter": items[-1]["userId"] if len(items) == limit else None}


@router.get("/v1/members/{userId}/standing", response_model=MemberStandingView, tags=["members"])
async def member_standing(
    user_id: MemberId, user: User, tx: Tx, environment: EnvironmentQuery
) -> MemberStandingView:
    """Whether a member is blocked in an environment, why, and who decided it when."""
    return MemberStandingView.of(await members.standing(tx, user.org_id, environment, user_id))

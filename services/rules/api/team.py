"""The team's routes: listing business users, inviting, changing roles, removing, and
accepting an invitation."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response

from contracts.text import Text
from infra.openapi import problems
from services.rules import team
from services.rules.api import BusinessUser, CorrelationId, Tx, User
from services.rules.api import Context as RulesContextDep
from services.rules.schemas import (
    InvitationAcceptance,
    InvitationAccepted,
    InvitationCreate,
    RoleChange,
    TeamList,
    TeamMemberView,
)

router = APIRouter()

UserId = Annotated[Text, Path(max_length=100, description="The business user's id (`usr_…`).")]
#: An invitation link's token; long enough for any the service makes, and no more.
InvitationToken = Annotated[
    Text, Path(max_length=100, description="The token of the invitation link.")
]


def _actor(user: BusinessUser, cid: str) -> team.Actor:
    user.require_admin("manage the team")
    return team.Actor(id=user.id, org_id=user.org_id, correlation_id=cid)


@router.get("/v1/users", response_model=TeamList, tags=["team"])
async def list_users(user: User, tx: Tx) -> dict[str, Any]:
    """The organisation's business users, invited and active; every role may read it."""
    return {"items": [TeamMemberView.of(row) for row in await team.list_team(tx, user.org_id)]}


@router.post(
    "/v1/users",
    response_model=TeamMemberView,
    status_code=201,
    tags=["team"],
    responses=problems({403: ["ADMIN_ROLE_REQUIRED"], 409: ["ALREADY_A_MEMBER", "EMAIL_TAKEN"]}),
)
async def invite_user(
    body: InvitationCreate, user: User, tx: Tx, ctx: RulesContextDep, cid: CorrelationId
) -> TeamMemberView:
    """Invite an e-mail address with a role (admins only): the invitee gets an e-mail with a
    one-time link to set a password. Inviting an invited address again sends a new link and
    the old one stops working."""
    invited = await team.invite(tx, _actor(user, cid), body.email, body.role, ctx.settings)
    row = {**dict(invited.user), "invitation_expires_at": invited.expires_at}
    return TeamMemberView.of(row)


@router.patch(
    "/v1/users/{userId}",
    response_model=TeamMemberView,
    tags=["team"],
    responses=problems(
        {403: ["ADMIN_ROLE_REQUIRED"], 404: ["USER_NOT_FOUND"], 409: ["LAST_ADMIN"]}
    ),
)
async def change_role(
    user_id: Annotated[UserId, Path(alias="userId")],
    body: RoleChange,
    user: User,
    tx: Tx,
    cid: CorrelationId,
) -> TeamMemberView:
    """Give a user another role (admins only); it counts from the user's next request. The
    organisation's last admin cannot be demoted."""
    return TeamMemberView.of(await team.change_role(tx, _actor(user, cid), user_id, body.role))


@router.delete(
    "/v1/users/{userId}",
    status_code=204,
    tags=["team"],
    responses=problems(
        {403: ["ADMIN_ROLE_REQUIRED"], 404: ["USER_NOT_FOUND"], 409: ["LAST_ADMIN"]}
    ),
)
async def remove_user(
    user_id: Annotated[UserId, Path(alias="userId")], user: User, tx: Tx, cid: CorrelationId
) -> Response:
    """Remove a user, or withdraw an invitation (admins only): the user's console sessions
    and tokens are refused at once. The organisation's last admin cannot be removed."""
    await team.remove(tx, _actor(user, cid), user_id)
    return Response(status_code=204)


@router.post(
    "/v1/invitations/{token}/accept",
    response_model=InvitationAccepted,
    tags=["team"],
    responses=problems({400: ["WEAK_PASSWORD"], 404: ["INVITATION_INVALID"]}),
)
async def accept_invitation(
    token: InvitationToken, body: InvitationAcceptance, tx: Tx, cid: CorrelationId
) -> InvitationAccepted:
    """Accept an invitation with the password the invitee chooses; no session is needed, the
    link's token is the proof. It works once, until it expires; then sign in as usual."""
    user = await team.accept(tx, token, body.password, cid)
    return InvitationAccepted(id=user["id"], email=user["email"], role=user["role"])

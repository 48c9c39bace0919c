"""A business's callback log: the notifier's deliveries read, and parked callbacks
replayed, with a business user's token from the rules service, against real PostgreSQL
and real HTTP receivers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from contracts import USERS_ENVIRONMENT, PointsResultEvent, UserLifecycleEvent, UserStanding
from infra.user_standing import project_users
from tests.integration.test_ledger_app import TestIssuer
from tests.integration.test_notifier import (
    CallbackReceiver,
    RunningCallbacks,
    client_event,
    notifier_settings,
    operator_api,
    result_event,
    running_callbacks,
    serving,
)

OPERATOR = {"Authorization": "Bearer operator-token"}


@dataclass
class CallbackLog:
    """The notifier with its delivery endpoints, and the issuer of business users' tokens."""

    notifier: RunningCallbacks
    http: httpx.AsyncClient
    issuer: TestIssuer

    def user(self, role: str = "admin", org_id: str = "org-1") -> dict[str, str]:
        token = self.issuer.token(typ="user", environment=None, role=role, org_id=org_id)
        return {"Authorization": f"Bearer {token}"}

    async def callback(
        self, url: str, *, client_id: str = "client-1", org_id: str = "org-1", status: str
    ) -> PointsResultEvent:
        """A points result's callback to ``url``, once it is ``status``."""
        event = result_event(url, client_id=client_id).model_copy(update={"org_id": org_id})
        await self.notifier.receive_result(event)
        await self.notifier.wait_for_status(event, status)
        return event

    async def listed(self, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
        response = await self.http.get("/v1/deliveries", params=params, headers=headers)
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items


@pytest.fixture
async def callback_log(database_url: str) -> AsyncIterator[CallbackLog]:
    settings = notifier_settings(
        database_url, retry_schedule_seconds=(0.1,), operator_token="operator-token"
    )
    issuer = TestIssuer()
    async with running_callbacks(settings) as notifier:
        for client_id, org_id in (("client-1", "org-1"), ("client-2", "org-1"), ("other", "org-2")):
            await notifier.receive_client(client_event(client_id, org_id=org_id))
        async with operator_api(settings, notifier, issuer.verifier()) as http:
            yield CallbackLog(notifier, http, issuer)


@pytest.fixture
async def receiver() -> AsyncIterator[CallbackReceiver]:
    async with serving(CallbackReceiver()) as server:
        yield server


@pytest.fixture
async def failing() -> AsyncIterator[CallbackReceiver]:
    """A receiver that answers 500 until told otherwise."""
    async with serving(CallbackReceiver(then=500)) as server:
        yield server


def request_ids(items: list[dict[str, Any]]) -> list[str]:
    return [item["requestId"] for item in items]


class TestReadingTheLog:
    async def test_a_business_user_sees_its_organisations_callbacks_and_no_other(
        self, callback_log: CallbackLog, receiver: CallbackReceiver
    ) -> None:
        own = await callback_log.callback(receiver.url(), status="delivered")
        await callback_log.callback(
            receiver.url(), client_id="other", org_id="org-2", status="delivered"
        )

        items = await callback_log.listed(callback_log.user(role="viewer"))

        assert request_ids(items) == [own.data.request_id]
        [item] = items
        assert item["clientId"] == "client-1"
        assert (item["status"], item["attempts"], item["lastStatusCode"]) == ("delivered", 1, 200)
        assert item["host"] == "127.0.0.1"
        assert item["lastAttemptAt"] is not None

    async def test_a_business_user_never_sees_the_callback_url_whose_query_may_hold_secrets(
        self, callback_log: CallbackLog, receiver: CallbackReceiver
    ) -> None:
        await callback_log.callback(receiver.url("/hooks?token=secret"), status="delivered")

        response = await callback_log.http.get("/v1/deliveries", headers=callback_log.user())

        assert "secret" not in response.text
        assert response.json()["items"][0]["url"] is None

    async def test_another_organisations_client_has_no_callbacks_in_the_log(
        self, callback_log: CallbackLog, receiver: CallbackReceiver
    ) -> None:
        await callback_log.callback(
            receiver.url(), client_id="other", org_id="org-2", status="delivered"
        )

        items = await callback_log.listed(callback_log.user(), clientId="other")

        assert items == []

    async def test_the_log_holds_callbacks_only_so_asking_for_e_mails_finds_none(
        self, callback_log: CallbackLog, receiver: CallbackReceiver
    ) -> None:
        await callback_log.callback(receiver.url(), status="delivered")

        items = await callback_log.listed(callback_log.user(), kind="email")

        assert items == []

    async def test_the_log_is_filtered_by_client_and_by_status(
        self, callback_log: CallbackLog, receiver: CallbackReceiver, failing: CallbackReceiver
    ) -> None:
        delivered = await callback_log.callback(receiver.url(), status="delivered")
        parked = await callback_log.callback(failing.url(), status="parked")
        await callback_log.callback(receiver.url(), client_id="client-2", status="delivered")
        user = callback_log.user()

        of_client = await callback_log.listed(user, clientId="client-1")
        of_status = await callback_log.listed(user, status="parked")

        assert request_ids(of_client) == [parked.data.request_id, delivered.data.request_id]
        assert request_ids(of_status) == [parked.data.request_id]
        assert (of_status[0]["attempts"], of_status[0]["lastStatusCode"]) == (2, 500)

    async def test_pages_follow_each_other_newest_first_without_gaps_or_repeats(
        self, callback_log: CallbackLog, receiver: CallbackReceiver
    ) -> None:
        events = [await callback_log.callback(receiver.url(), status="delivered") for _ in range(5)]
        user = callback_log.user()
        pages: list[list[str]] = []
        cursor: str | None = None
        while True:
            params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
            response = await callback_log.http.get("/v1/deliveries", params=params, headers=user)
            pages.append(request_ids(response.json()["items"]))
            cursor = response.json()["nextCursor"]
            if cursor is None:
                break

        newest_first = [event.data.request_id for event in reversed(events)]
        assert pages == [newest_first[0:2], newest_first[2:4], newest_first[4:]]

    @pytest.mark.parametrize("cursor", ["0", "not-a-cursor", str(2**63)])
    async def test_a_cursor_the_log_never_gave_is_refused(
        self, callback_log: CallbackLog, cursor: str
    ) -> None:
        response = await callback_log.http.get(
            "/v1/deliveries", params={"cursor": cursor}, headers=callback_log.user()
        )

        assert response.status_code == 400
        assert response.json()["code"] == "INVALID_REQUEST"

    async def test_an_api_clients_token_cannot_read_the_log(
        self, callback_log: CallbackLog
    ) -> None:
        token = callback_log.issuer.token(typ="client")

        response = await callback_log.http.get(
            "/v1/deliveries", headers={"Authorization": f"Bearer {token}"}
        )

        assert response.status_code == 403
        assert response.json()["code"] == "FORBIDDEN"

    async def test_a_token_no_issuer_signed_is_unauthorized(
        self, callback_log: CallbackLog
    ) -> None:
        forged = TestIssuer().token(typ="user", role="admin", environment=None)

        response = await callback_log.http.get(
            "/v1/deliveries", headers={"Authorization": f"Bearer {forged}"}
        )

        assert response.status_code == 401

    async def test_operators_still_see_every_organisations_deliveries_with_their_urls(
        self, callback_log: CallbackLog, receiver: CallbackReceiver
    ) -> None:
        await callback_log.callback(receiver.url(), status="delivered")
        await callback_log.callback(
            receiver.url(), client_id="other", org_id="org-2", status="delivered"
        )

        items = await callback_log.listed(OPERATOR)

        assert sorted(item["orgId"] for item in items) == ["org-1", "org-2"]
        assert all(item["url"] == receiver.url() for item in items)


class TestReplayingAParkedCallback:
    async def test_an_editor_replays_a_parked_callback_which_is_then_delivered(
        self, callback_log: CallbackLog, failing: CallbackReceiver
    ) -> None:
        event = await callback_log.callback(failing.url(), status="parked")
        [item] = await callback_log.listed(callback_log.user(), status="parked")
        failing.then = 200

        replayed = await callback_log.http.post(
            f"/v1/deliveries/{item['id']}/replay", headers=callback_log.user(role="editor")
        )
        delivered = await callback_log.notifier.wait_for_status(event, "delivered")

        assert replayed.status_code == 202
        assert delivered["attempts"] == 1
        assert len(failing.received) == 3

    async def test_a_viewer_cannot_replay_a_parked_callback(
        self, callback_log: CallbackLog, failing: CallbackReceiver
    ) -> None:
        event = await callback_log.callback(failing.url(), status="parked")
        [item] = await callback_log.listed(callback_log.user(), status="parked")

        refused = await callback_log.http.post(
            f"/v1/deliveries/{item['id']}/replay", headers=callback_log.user(role="viewer")
        )

        assert refused.status_code == 403
        assert refused.json()["code"] == "READ_ONLY_ROLE"
        assert (await callback_log.notifier.delivery(event))["status"] == "parked"

    async def test_another_organisations_editor_cannot_replay_it(
        self, callback_log: CallbackLog, failing: CallbackReceiver
    ) -> None:
        event = await callback_log.callback(failing.url(), status="parked")
        [item] = await callback_log.listed(callback_log.user(), status="parked")

        refused = await callback_log.http.post(
            f"/v1/deliveries/{item['id']}/replay",
            headers=callback_log.user(role="editor", org_id="org-2"),
        )

        assert refused.status_code == 404
        assert refused.json()["code"] == "DELIVERY_NOT_PARKED"
        assert (await callback_log.notifier.delivery(event))["status"] == "parked"

    async def test_a_delivered_callback_is_not_sent_again(
        self, callback_log: CallbackLog, receiver: CallbackReceiver
    ) -> None:
        await callback_log.callback(receiver.url(), status="delivered")
        [item] = await callback_log.listed(callback_log.user())

        refused = await callback_log.http.post(
            f"/v1/deliveries/{item['id']}/replay", headers=callback_log.user(role="editor")
        )

        assert refused.status_code == 404
        assert len(receiver.received) == 1


def standing(kind: str, role: str) -> UserLifecycleEvent:
    """What the rules service publishes when an admin removes ``user-1`` or changes its role."""
    return UserLifecycleEvent.new_event(
        data=UserStanding(
            org_id="org-1",
            user_id="user-1",
            role=role,  # type: ignore[arg-type]
            removed=kind == "user.removed",
            changed_by="user-admin",
            changed_at=datetime.now(UTC),
        ),
        environment=USERS_ENVIRONMENT,
        org_id="org-1",
        correlation_id="corr",
        type=kind,
    )


class TestAUserWhoseStandingChanged:
    async def test_a_removed_users_token_reads_nothing_at_once(
        self, callback_log: CallbackLog
    ) -> None:
        token = callback_log.user(role="admin")
        assert (await callback_log.http.get("/v1/deliveries", headers=token)).status_code == 200

        await project_standing(callback_log, standing("user.removed", "admin"))
        refused = await callback_log.http.get("/v1/deliveries", headers=token)

        assert refused.status_code == 401
        assert "no longer a member" in refused.json()["detail"]

    async def test_an_editor_made_a_viewer_can_no_longer_replay(
        self, callback_log: CallbackLog, failing: CallbackReceiver
    ) -> None:
        event = await callback_log.callback(failing.url(), status="parked")
        [item] = await callback_log.listed(callback_log.user(), status="parked")

        await project_standing(callback_log, standing("user.role_changed", "viewer"))
        refused = await callback_log.http.post(
            f"/v1/deliveries/{item['id']}/replay", headers=callback_log.user(role="editor")
        )

        assert refused.status_code == 403
        assert (await callback_log.notifier.delivery(event))["status"] == "parked"


async def project_standing(callback_log: CallbackLog, event: UserLifecycleEvent) -> None:
    """The notifier's users consumer having consumed ``event``."""
    pool = callback_log.notifier.runtime.pool
    async with pool.acquire() as connection, connection.transaction():
        await project_users(connection, [event])

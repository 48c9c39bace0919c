"""The notifier takes a client's request-signing key change in its stride.

The event type is newer than the notifier's projection; a consumer that
refused it would re-read it forever and never learn the client.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ec

from contracts import ClientLifecycleEvent
from infra.request_signing import public_pem
from infra.signing import verify
from services.notifier.app import create_app
from tests.integration.test_notifier import (
    CallbackReceiver,
    client_event,
    notifier_settings,
    publish_in_order,
    receiver,
    result_event,
    signing_secret,
)

__all__ = ["receiver"]  # the fixture, used by name


def key_changed_event() -> ClientLifecycleEvent:
    registered = client_event()
    pem = public_pem(ec.generate_private_key(ec.SECP256R1()).public_key())
    return ClientLifecycleEvent.new_event(
        data=registered.data.model_copy(update={"request_signing_key": pem}),
        environment="staging",
        org_id=registered.org_id,
        correlation_id="corr-key",
        type="client.request_signing_key_changed",
    )


class TestClientKeyChanges:
    async def test_a_client_known_only_from_a_key_change_gets_its_callback_signed(
        self, database_url: str, kafka_bootstrap_servers: str, receiver: CallbackReceiver
    ) -> None:
        result = result_event(receiver.url())
        await publish_in_order(kafka_bootstrap_servers, key_changed_event(), result)

        _, runtime = create_app(
            notifier_settings(database_url, kafka_bootstrap_servers=kafka_bootstrap_servers)
        )
        await runtime.start()
        try:
            [callback] = await receiver.wait_for(1, timeout=30.0)
        finally:
            await runtime.stop()

        assert verify(signing_secret(), callback.body, callback.headers["x-points-signature"])

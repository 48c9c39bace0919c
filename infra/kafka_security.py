"""Kafka security: the TLS and SASL settings, as FastStream and aiokafka take them.

Every Kafka client of a service (its broker, the outbox relay's producer, the
lag reader and the admin client) connects with the same ``KAFKA_SECURITY_*``,
``KAFKA_SASL_*`` and ``KAFKA_SSL_*`` settings, made here once.
"""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka.helpers import create_ssl_context
from faststream.kafka.security import parse_security
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

from infra.errors import StartupError
from infra.settings import ServiceSettings


def broker_security(settings: ServiceSettings) -> BaseSecurity | None:
    """The FastStream security object for the configured protocol, if any.

    TLS verifies the brokers against ``KAFKA_SSL_CAFILE`` (else the system's
    CAs) and presents ``KAFKA_SSL_CERTFILE``/``KAFKA_SSL_KEYFILE`` when set.
    """
    protocol = settings.kafka_security_protocol
    context = _ssl_context(settings) if protocol.endswith("SSL") else None
    if protocol.startswith("SASL_"):
        sasl = _SASL_SECURITY[settings.kafka_sasl_mechanism]
        password = settings.kafka_sasl_password
        return sasl(
            settings.kafka_sasl_username or "",
            password.get_secret_value() if password else "",
            ssl_context=context,
            use_ssl=context is not None,
        )
    if context is not None:
        return BaseSecurity(ssl_context=context)
    return None


_SASL_SECURITY: dict[str, type[SASLPlaintext | SASLScram256 | SASLScram512]] = {
    "PLAIN": SASLPlaintext,
    "SCRAM-SHA-256": SASLScram256,
    "SCRAM-SHA-512": SASLScram512,
}


def _ssl_context(settings: ServiceSettings) -> ssl.SSLContext:
    password = settings.kafka_ssl_keyfile_password
    try:
        context: ssl.SSLContext = create_ssl_context(
            cafile=settings.kafka_ssl_cafile,
            certfile=settings.kafka_ssl_certfile,
            keyfile=settings.kafka_ssl_keyfile,
            password=password.get_secret_value() if password else None,
        )
    except (OSError, ssl.SSLError) as error:
        raise StartupError(
            f"cannot load the Kafka TLS files (KAFKA_SSL_CAFILE, KAFKA_SSL_CERTFILE, "
            f"KAFKA_SSL_KEYFILE): {error}"
        ) from error
    return context


def kafka_client_options(settings: ServiceSettings) -> dict[str, Any]:
    """The aiokafka keyword arguments for the configured security (protocol, TLS, SASL)."""
    return parse_security(broker_security(settings))

"""Errors that cross module boundaries inside the infrastructure package, and which of
them another attempt may cure. Nothing here imports a web or messaging framework, so a
service's logic can tell a transient failure without depending on one."""

from __future__ import annotations

import asyncpg
from aiokafka.errors import KafkaError


class StartupError(RuntimeError):
    """A dependency a service needs at start-up is missing or unreachable.

    The message names what is missing and how to fix it; entry points print it
    without a traceback.
    """


class ConcurrentUpdateConflict(RuntimeError):
    """A transaction lost a race with a concurrent one that the database caught.

    Nothing is wrong with the work itself: another attempt reads what the
    winner committed and decides afresh. Consumers retry it as a transient
    failure, and HTTP answers 503 with ``Retry-After``.
    """


#: Failures another attempt may cure: PostgreSQL or Kafka away or failing over, a
#: timeout, a conflict between transactions (PostgreSQL's, or one the code
#: recognised in a constraint, :class:`ConcurrentUpdateConflict`), a server short
#: of resources. A
#: statement that names what the schema lacks (class 42) is here too: that is a
#: deployment out of step with its migrations, which quarantining every message
#: would only hide.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    KafkaError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
    asyncpg.TransactionRollbackError,
    ConcurrentUpdateConflict,
    asyncpg.LockNotAvailableError,
    asyncpg.ReadOnlySQLTransactionError,
    asyncpg.PostgresSystemError,
    asyncpg.SyntaxOrAccessError,
)


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` says nothing about the message (retry it as it is, for ever)."""
    return isinstance(error, TRANSIENT_ERRORS)

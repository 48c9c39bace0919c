"""Errors that cross module boundaries inside the infrastructure package."""


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

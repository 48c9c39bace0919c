"""Errors that cross module boundaries inside the infrastructure package."""


class StartupError(RuntimeError):
    """A dependency a service needs at start-up is missing or unreachable.

    The message names what is missing and how to fix it; entry points print it
    without a traceback.
    """

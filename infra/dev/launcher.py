"""Start the whole platform (``points dev``) as a child process on free ports.

For programs that drive the platform from outside, as a user would: the
end-to-end tests and the benchmarks. Everything it needs lives in a fresh
state directory, so several can run beside a developer's ``make run``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from infra.settings import SERVICES, read_stack_environment

#: Variables of the caller's shell that would point the child at other servers.
_FOREIGN_PREFIXES = (
    "DATABASE_URL",
    "KAFKA_",
    "SMTP_",
    "RULES_",
    "TRIGGER_",
    "LEDGER_",
    "NOTIFIER_",
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class RunningPlatform:
    """A ``points dev`` child process and how to reach its services."""

    env: dict[str, str]
    urls: dict[str, str]
    process: subprocess.Popen[bytes]
    log: Path
    state: Path

    def stack_setting(self, name: str) -> str:
        """A connection setting ``points dev`` wrote for its clients, such as ``DATABASE_URL``
        or ``KAFKA_BOOTSTRAP_SERVERS``."""
        value = read_stack_environment(self.state / "dev.env").get(name)
        if value is None:
            raise RuntimeError(f"points dev wrote no {name}")
        return value

    @property
    def mail_dir(self) -> Path:
        """Where the platform's SMTP sink keeps each message it receives."""
        return self.state / "mail"

    def points(self, *args: str) -> Any:
        """Run the operator CLI against this platform with ``--json``; its output."""
        completed = subprocess.run(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "points_cli", *args, "--json"],
            env=self.env,
            capture_output=True,
            timeout=60,
            check=False,
        )
        if completed.returncode != 0:
            raise RuntimeError(f"points {' '.join(args)} failed: {completed.stderr.decode()}")
        return json.loads(completed.stdout)

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        waiting = set(SERVICES)
        while waiting and time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"points dev exited:\n{self.log.read_text()[-4000:]}")
            for name in list(waiting):
                try:
                    if httpx.get(f"{self.urls[name]}/readyz", timeout=2).status_code == 200:
                        waiting.discard(name)
                except httpx.HTTPError:
                    pass
            time.sleep(0.5)
        if waiting:
            raise RuntimeError(f"not ready: {sorted(waiting)}\n{self.log.read_text()[-4000:]}")

    def stop(self, timeout: float = 30.0, sig: signal.Signals = signal.SIGTERM) -> int:
        """Send ``sig`` (SIGTERM) to the platform and wait; its exit code (killed after
        ``timeout``)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def interrupt(self, timeout: float = 60.0) -> int:
        """Ctrl-C: SIGINT to ``points dev``, which stops every service cleanly; its exit code."""
        return self.stop(timeout, signal.SIGINT)

    @property
    def pids(self) -> dict[str, int]:
        """The process id of each service and of the embedded broker (``kafka``), as
        ``points dev`` wrote them; each leads a process group of its own."""
        pids: dict[str, int] = json.loads((self.state / "dev.pids").read_text())
        return pids

    def kill(self, timeout: float = 30.0) -> None:
        """``kill -9`` of everything: ``points dev``'s process group and each child's (the
        services, also a paused one, and the broker), as a crash would leave them; the
        embedded PostgreSQL, a daemon of its own, stays up as it would after
        ``kill -9`` of ``make run``. Returns once every one of them is gone."""
        children = self.pids
        for pgid in (self.process.pid, *children.values()):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        self.process.wait(timeout)
        deadline = time.monotonic() + timeout
        while any(_alive(pid) for pid in children.values()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"still running after SIGKILL: {children}")
            time.sleep(0.1)

    def start_again(self) -> RunningPlatform:
        """``points dev`` started again on this platform's state directory, ports and
        settings, once it has stopped (not yet ready: :meth:`wait_ready`)."""
        if self.process.poll() is None:
            raise RuntimeError("the platform is still running")
        return _launch(self.env, self.state, self.urls)

    def remove_state(self) -> None:
        shutil.rmtree(self.state, ignore_errors=True)


def start_platform(prefix: str = "points-", **settings: str) -> RunningPlatform:
    """Start ``points dev`` in a new state directory; ``settings`` are extra env vars."""
    state = Path(tempfile.mkdtemp(prefix=prefix))
    state.chmod(0o755)  # the embedded PostgreSQL runs as its own system user
    ports = {name: free_port() for name in SERVICES}
    env = {key: value for key, value in os.environ.items() if not key.startswith(_FOREIGN_PREFIXES)}
    env.update(
        POINTS_VAR_DIR=str(state),
        DEV_KAFKA_PORT=str(free_port()),
        DEV_SMTP_PORT=str(free_port()),
        **{f"{name.upper()}_PORT": str(port) for name, port in ports.items()},
        **settings,
    )
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    return _launch(env, state, urls)


def _launch(env: dict[str, str], state: Path, urls: dict[str, str]) -> RunningPlatform:
    log = state / "points-dev.log"
    with log.open("ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "points_cli", "dev"],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            # A group of its own, as `make run` has in a terminal: signalling the
            # group reaches points dev, not whoever started it.
            process_group=0,
        )
    return RunningPlatform(env, urls, process, log, state)


def _alive(pid: int) -> bool:
    """Running, and not a zombie waiting for whoever adopted it to reap it."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False

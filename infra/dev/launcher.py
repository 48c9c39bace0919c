"""Start the whole platform (``points dev``) as a child process on free ports.

For programs that drive the platform from outside, as a user would: the
end-to-end tests and the benchmarks. Everything it needs lives in a fresh
state directory, so several can run beside a developer's ``make run``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

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

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM the platform and wait; its exit code (killed after ``timeout``)."""
        self.process.terminate()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

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
    log = state / "points-dev.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "points_cli", "dev"],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    return RunningPlatform(env, urls, process, log, state)

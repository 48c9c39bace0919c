"""`make bench-e2e`: what a partner's app waits for, from a trigger to its points and callback.

Runs the whole platform (``points dev`` on free ports), a callback receiver in a
process of its own (so the load's event loop never delays a callback's
arrival time), several API clients authorised on one earn rule (each with a
rate limit well above its share of the load), and offers an **open-loop**
load: each trigger is sent at its scheduled instant whether or not earlier
ones were answered, at every rate of ``--rates`` in turn.

Per rate it prints p50/p95/p99/max of:

* trigger → 202 answer;
* trigger → ledger applied (the ledger transaction's own ``created_at``);
* trigger → callback received (the receiver's clock: same machine);
* trigger → status endpoint settled, for a sample of the requests (each
  polled every ``--status-poll-ms`` from its 202 on, five times less often
  after 200 ms, so the figure is at most that much late);

then where the time went, hop by hop, from the timestamps each service
stores: the gateway's request row, the gateway's outbox row published, the
ledger's transaction, the ledger's outbox row published, the notifier's
delivery queued, the callback received. Last, the share e-mail: from ``POST
/v1/rules/{id}/share/email`` to the SMTP sink writing the message.

Figures only; nothing is asserted (machines are noisy). ``--setting
NAME=VALUE`` passes a setting to every service, for back-to-back comparisons.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import uvicorn
import uvloop
from gateway import active_earn_rule, client_token

from infra.dev.launcher import RunningPlatform, free_port, start_platform

MEMBERS = 1_000
#: How long after the last trigger the bench waits for its callbacks.
SETTLE_SECONDS = 60.0


# --- the callback receiver, in its own process ----------------------------------------


class Receiver:
    """ASGI app: answers 204 to every callback and writes ``requestId arrival`` lines."""

    def __init__(self, log: Path) -> None:
        self._log = log.open("a", buffering=1)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        arrived = time.time()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        request_id = json.loads(body).get("requestId")
        self._log.write(f"{request_id} {arrived:.6f}\n")


def serve_receiver(port: int, log: str) -> None:
    uvicorn.run(Receiver(Path(log)), host="127.0.0.1", port=port, log_level="warning")


def read_arrivals(log: Path) -> dict[str, float]:
    """Each request id's first callback arrival (a redelivery keeps the first)."""
    arrivals: dict[str, float] = {}
    if log.exists():
        for line in log.read_text().splitlines():
            request_id, arrived = line.split()
            arrivals.setdefault(request_id, float(arrived))
    return arrivals


# --- a lean HTTP/1.1 client, so the load generator is not the bottleneck -----------


class LeanHttp:
    """Keep-alive HTTP/1.1 to one host over raw asyncio streams: requests are a few
    bytes written and a status line, headers and ``Content-Length`` body read. httpx
    took half a core at 100 req/s on this machine, which the platform then lacked."""

    def __init__(self, base_url: str) -> None:
        address = base_url.removeprefix("http://").rstrip("/")
        host, _, port = address.partition(":")
        self._host, self._port = host, int(port or 80)
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes = b""
    ) -> tuple[int, bytes]:
        """The status code and body of ``method path``."""
        head = [f"{method} {path} HTTP/1.1", f"Host: {self._host}:{self._port}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        head.append(f"Content-Length: {len(body)}")
        request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        while self._idle:
            reader, writer = self._idle.pop()
            try:
                return await self._exchange(reader, writer, request)
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()  # the server closed it while it was idle: take another
        reader, writer = await asyncio.open_connection(self._host, self._port)
        return await self._exchange(reader, writer, request)

    async def _exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
    ) -> tuple[int, bytes]:
        writer.write(request)
        response = await reader.readuntil(b"\r\n\r\n")
        lines = response.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = 0
        for header in lines[1:]:
            name, _, value = header.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        answer = await reader.readexactly(length)
        self._idle.append((reader, writer))
        return status, answer

    async def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


# --- seeding --------------------------------------------------------------------------


@dataclass
class Seeded:
    rule_id: str
    tokens: list[str]
    console: dict[str, str]
    clients: list[dict[str, str]] = field(default_factory=list)
    """The clients as `points client create` printed them, to get fresh tokens with."""

    def renew_tokens(self, platform: RunningPlatform) -> None:
        """New tokens in place of the ones held, which expire (a run longer than a
        token's lifetime would otherwise be refused from then on)."""
        self.tokens[:] = [client_token(platform, client) for client in self.clients]


def seed(platform: RunningPlatform, clients: int, per_second: int) -> Seeded:
    """An organisation, a user, ``clients`` staging clients and an active earn rule."""
    org = platform.points("org", "create", "Bench Tea")
    platform.points(
        "user", "create", "--org", org["id"],
        "--email", "bench@example.com", "--password", "bench-password",
    )  # fmt: skip
    created = [
        platform.points(
            "client",
            "create",
            "--org",
            org["id"],
            "--environment",
            "staging",
            "--name",
            f"Bench client {number}",
        )
        for number in range(clients)
    ]
    for client in created:
        platform.points(
            "client", "set-rate-limit", client["clientId"],
            "--per-second", str(per_second), "--burst", str(per_second),
        )  # fmt: skip
    rule_id, console = active_earn_rule(platform, [client["clientId"] for client in created])
    tokens = [client_token(platform, client) for client in created]
    return Seeded(rule_id, tokens, console, created)


# --- the load -------------------------------------------------------------------------


@dataclass
class Sent:
    request_id: str
    sent: float  # wall clock, comparable with the services' and the receiver's
    answered: float = 0.0
    status: int = 0
    settled: float | None = None  # the status endpoint first said other than pending


@dataclass
class Round:
    rate: int
    sent: list[Sent] = field(default_factory=list)
    late_sends: int = 0  # sends that left more than 5 ms after their scheduled instant


async def offer(
    gateway: LeanHttp,
    seeded: Seeded,
    receiver_url: str,
    rate: int,
    seconds: float,
    status_every: int,
    status_poll: float,
) -> Round:
    """Send ``rate`` triggers a second for ``seconds``, each at its own instant."""
    round_ = Round(rate)
    tasks: list[asyncio.Task[None]] = []
    total = int(rate * seconds)
    start = time.perf_counter() + 0.05
    for number in range(total):
        due = start + number / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.005:
            round_.late_sends += 1
        item = Sent(f"e2e-{rate}-{number}-{uuid.uuid4().hex[:8]}", time.time())
        round_.sent.append(item)
        token = seeded.tokens[number % len(seeded.tokens)]
        poll = status_poll if number % status_every == 0 else None
        tasks.append(
            asyncio.create_task(
                trigger(gateway, token, seeded.rule_id, receiver_url, number, item, poll)
            )
        )
    await asyncio.gather(*tasks)
    return round_


async def trigger(
    gateway: LeanHttp,
    token: str,
    rule_id: str,
    receiver_url: str,
    number: int,
    item: Sent,
    status_poll: float | None,
) -> None:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    body = {
        "userId": f"member-{number % MEMBERS}",
        "ruleId": rule_id,
        "amount": 10,
        "requestId": item.request_id,
        "callbackUrl": receiver_url,
    }
    status, _ = await gateway.request(
        "POST", "/v1/points/requests", headers, json.dumps(body).encode()
    )
    item.answered, item.status = time.time(), status
    if status != 202 or status_poll is None:
        return
    deadline = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < deadline:
        code, answer = await gateway.request(
            "GET", f"/v1/points/requests/{item.request_id}", headers
        )
        if code == 200 and json.loads(answer).get("status") != "pending":
            item.settled = time.time()
            return
        # Every poll costs the gateway and this process: past the first 200 ms, a
        # request that is still pending is asked five times less often.
        settling = time.time() - item.answered
        await asyncio.sleep(status_poll if settling < 0.2 else 5 * status_poll)


async def wait_for_callbacks(log: Path, request_ids: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if request_ids <= read_arrivals(log).keys():
            return
        await asyncio.sleep(0.2)


# --- what each service stored ---------------------------------------------------------

HOPS = """
SELECT r.request_id,
       extract(epoch FROM r.created_at) AS accepted,
       extract(epoch FROM requested.published_at) AS requested_published,
       extract(epoch FROM t.created_at) AS applied,
       extract(epoch FROM result.published_at) AS result_published,
       extract(epoch FROM d.created_at) AS queued
FROM trigger.requests AS r
LEFT JOIN ledger.transactions AS t
       ON t.environment = 'staging' AND t.request_id = r.request_id AND t.type = 'earn'
LEFT JOIN trigger.outbox AS requested
       ON requested.topic = 'points.requested.v1'
      AND convert_from(requested.payload, 'UTF8')::jsonb -> 'data' ->> 'request_id' = r.request_id
LEFT JOIN ledger.outbox AS result
       ON result.topic = 'points.results.v1'
      AND convert_from(result.payload, 'UTF8')::jsonb -> 'data' ->> 'request_id' = r.request_id
LEFT JOIN notifier.deliveries AS d ON d.request_id = r.request_id
WHERE r.request_id = ANY($1::text[])
"""


async def stored_times(dsn: str, request_ids: list[str]) -> dict[str, asyncpg.Record]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(HOPS, request_ids)
    finally:
        await connection.close()
    return {row["request_id"]: row for row in rows}


# --- figures --------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def line(label: str, values_ms: list[float]) -> str:
    if not values_ms:
        return f"  {label:<38} (none)"
    figures = "  ".join(
        f"{name} {percentile(values_ms, fraction):7.1f}"
        for name, fraction in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
    )
    return f"  {label:<38} {figures}  max {max(values_ms):7.1f} ms   (n={len(values_ms):,})"


def report(round_: Round, arrivals: dict[str, float], stored: dict[str, asyncpg.Record]) -> None:
    accepted = [item for item in round_.sent if item.status == 202]
    other = len(round_.sent) - len(accepted)
    print(
        f"\n{round_.rate} req/s offered: {len(round_.sent):,} sent, {len(accepted):,} accepted"
        + (f", {other:,} answered otherwise" if other else "")
        + (f", {round_.late_sends:,} sent >5 ms late" if round_.late_sends else "")
    )

    def after_sent(instant: Any, item: Sent) -> float | None:
        return None if instant is None else (float(instant) - item.sent) * 1000

    def spans(pick: Any) -> list[float]:
        return [span for item in accepted if (span := pick(item)) is not None]

    print(line("trigger -> 202", spans(lambda i: (i.answered - i.sent) * 1000)))
    print(
        line("trigger -> ledger applied", spans(lambda i: after_sent(_at(stored, i, "applied"), i)))
    )
    print(
        line(
            "trigger -> callback received",
            spans(lambda i: after_sent(arrivals.get(i.request_id), i)),
        )
    )
    print(line("trigger -> status settled (sample)", spans(lambda i: after_sent(i.settled, i))))
    missing = sum(1 for item in accepted if item.request_id not in arrivals)
    if missing:
        print(f"  {missing:,} accepted requests had no callback within {SETTLE_SECONDS:g} s")

    print("  where the time went, hop by hop (each from the step before):")
    steps = [
        ("sent -> gateway transaction began", None, "accepted"),
        ("-> request published (gateway relay)", "accepted", "requested_published"),
        ("-> ledger transaction began", "requested_published", "applied"),
        ("-> result published (ledger relay)", "applied", "result_published"),
        ("-> delivery queued (notifier)", "result_published", "queued"),
        ("-> callback received", "queued", None),
    ]
    for label, before, after in steps:
        values = []
        for item in accepted:
            start = item.sent if before is None else _at(stored, item, before)
            end = arrivals.get(item.request_id) if after is None else _at(stored, item, after)
            if start is not None and end is not None:
                values.append((float(end) - float(start)) * 1000)
        print(line(label, values))


def _at(stored: dict[str, asyncpg.Record], item: Sent, column: str) -> Any:
    row = stored.get(item.request_id)
    return None if row is None else row[column]


async def share_emails(platform: RunningPlatform, seeded: Seeded, count: int) -> list[float]:
    """Milliseconds from each share request to the SMTP sink writing its message."""
    mail_dir = platform.mail_dir
    spans = []
    async with httpx.AsyncClient(base_url=platform.urls["rules"], headers=seeded.console) as rules:
        for number in range(count):
            before = set(mail_dir.glob("*")) if mail_dir.exists() else set()
            sent = time.time()
            answer = await rules.post(
                f"/v1/rules/{seeded.rule_id}/share/email",
                json={"to": [f"dev{number}@partner.example.com"]},
            )
            if answer.status_code != 202:
                print(f"  share e-mail {number}: answered {answer.status_code} {answer.text[:200]}")
                continue
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                new = set(mail_dir.glob("*")) - before if mail_dir.exists() else set()
                if new:
                    written = min(os.stat(path).st_mtime for path in new)
                    spans.append((written - sent) * 1000)
                    break
                await asyncio.sleep(0.002)
            await asyncio.sleep(0.3)
    return spans


def start_receiver(platform: RunningPlatform) -> tuple[BaseProcess, str, Path]:
    """A callback receiver in a process of its own: the process, its URL and its log."""
    port = free_port()
    log = platform.state / "callbacks.log"
    receiver = multiprocessing.get_context("spawn").Process(
        target=serve_receiver, args=(port, str(log)), daemon=True
    )
    receiver.start()
    return receiver, f"http://127.0.0.1:{port}/points-callback", log


async def run(platform: RunningPlatform, seeded: Seeded, options: argparse.Namespace) -> None:
    receiver, receiver_url, log = start_receiver(platform)
    dsn = platform.stack_setting("DATABASE_URL")
    gateway = LeanHttp(platform.urls["trigger"])
    try:
        await warm_up(gateway, seeded, receiver_url, log)
        for rate in options.rates:
            status_every = max(1, rate // options.status_per_second)
            round_ = await offer(
                gateway, seeded, receiver_url, rate, options.seconds, status_every,
                options.status_poll_ms / 1000,
            )  # fmt: skip
            accepted = {item.request_id for item in round_.sent if item.status == 202}
            await wait_for_callbacks(log, accepted, SETTLE_SECONDS)
            stored = await stored_times(dsn, sorted(accepted))
            report(round_, read_arrivals(log), stored)
            await asyncio.sleep(2)  # let the platform go quiet between rates
        print(f"\nshare e-mail ({options.emails} sent one after another)")
        print(
            line(
                "POST share/email -> SMTP sink",
                await share_emails(platform, seeded, options.emails),
            )
        )
    finally:
        await gateway.close()
        receiver.kill()


async def warm_up(gateway: LeanHttp, seeded: Seeded, receiver_url: str, log: Path) -> None:
    """Until a trigger is accepted and called back: the rule has reached the gateway and
    every consumer has its partitions."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        item = Sent(f"warm-{uuid.uuid4().hex}", time.time())
        await trigger(gateway, seeded.tokens[0], seeded.rule_id, receiver_url, 0, item, None)
        if item.status == 202:
            await wait_for_callbacks(log, {item.request_id}, 60)
            return
        await asyncio.sleep(0.5)
    raise TimeoutError("no trigger was accepted within 120 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rates", type=lambda text: [int(rate) for rate in text.split(",")],
        default=[10, 100, 500], help="offered loads, triggers a second (default 10,100,500)",
    )  # fmt: skip
    parser.add_argument("--seconds", type=float, default=20, help="how long each rate is offered")
    parser.add_argument("--clients", type=int, default=4, help="API clients sharing the load")
    parser.add_argument(
        "--status-per-second", type=int, default=2, help="requests a second whose status is polled"
    )
    parser.add_argument("--status-poll-ms", type=float, default=10.0)
    parser.add_argument("--emails", type=int, default=10, help="share e-mails to time")
    parser.add_argument(
        "--setting", action="append", default=[], metavar="NAME=VALUE",
        help="an extra setting for the platform's services",
    )  # fmt: skip
    options = parser.parse_args()
    settings = {"LOG_LEVEL": "WARNING", **dict(s.split("=", 1) for s in options.setting)}

    on_seeded_platform(
        "bench-e2e-",
        settings,
        options.clients,
        max(options.rates) * 2,
        f"platform up; {options.clients} clients, one earn rule; "
        f"{options.seconds:g} s at each of {options.rates} req/s",
        lambda platform, seeded: run(platform, seeded, options),
    )


def on_seeded_platform(
    prefix: str,
    settings: dict[str, str],
    clients: int,
    per_second: int,
    announce: str,
    bench: Callable[[RunningPlatform, Seeded], Coroutine[Any, Any, None]],
) -> None:
    """Start the platform with ``settings``, seed it (:func:`seed`), say ``announce`` and
    run ``bench`` on it; then stop it and remove its state."""
    platform = start_platform(prefix=prefix, **settings)
    try:
        platform.wait_ready()
        seeded = seed(platform, clients, per_second=per_second)
        print(announce, flush=True)
        uvloop.run(bench(platform, seeded))
    finally:
        platform.stop()
        platform.remove_state()


if __name__ == "__main__":
    main()

"""`make bench-gateway`: accepted triggers per second and latency of the gateway.

Runs the whole platform (``points dev`` on free ports), seeds a client and an
active earn rule, then, on this machine:

1. drives the gateway with authenticated, valid, all-distinct triggers from
   wrk for the sustained-throughput figure;
2. offers a steady 500 requests/s from an open-loop generator and records
   p50/p99 latency;
3. measures a bare FastAPI endpoint served the same way (one uvicorn worker,
   same request body) as the framework's ceiling, in the same run;
4. reports how long the ledger takes to apply everything accepted, so a
   growing lag is visible.

Figures are printed; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import uvloop

from infra.dev.launcher import RunningPlatform, free_port, start_platform

WRK_SCRIPT = textwrap.dedent(
    """
    local threads = {}
    local counter = 0
    refused = 0  -- a global: done() reads it from each thread

    function setup(thread)
      thread:set("tid", #threads)
      table.insert(threads, thread)
    end

    function init(args)
      rule = args[1]
      prefix = args[2] .. "-" .. tid
      token = args[3]
    end

    function request()
      counter = counter + 1
      local body = string.format(
        '{"userId":"member-%d","ruleId":"%s","amount":1,"requestId":"%s-%d"}',
        counter % 10000, rule, prefix, counter)
      return wrk.format("POST", "/v1/points/requests",
        {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token}, body)
    end

    function response(status, headers, body)
      if status ~= 202 then refused = refused + 1 end
    end

    function done(summary, latency, requests)
      local total = 0
      for _, thread in ipairs(threads) do total = total + thread:get("refused") end
      io.write(string.format("refused %d\\n", total))
    end
    """
)

BARE_APP = textwrap.dedent(
    """
    from typing import Any
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, Field

    class Trigger(BaseModel):
        user_id: Any = Field(alias="userId")
        rule_id: str = Field(alias="ruleId")
        amount: Any
        request_id: str = Field(alias="requestId")

    app = FastAPI()

    @app.post("/v1/points/requests", status_code=202)
    async def accept(body: Trigger) -> JSONResponse:
        return JSONResponse({"requestId": body.request_id, "status": "pending"}, status_code=202)
    """
)


def run_wrk(
    url: str, script: Path, args: list[str], seconds: int, connections: int
) -> dict[str, float]:
    completed = subprocess.run(  # noqa: S603
        [
            shutil.which("wrk") or "/usr/bin/wrk",
            "-t2",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            url,
            "--",
            *args,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    out = completed.stdout
    if completed.returncode != 0:
        raise RuntimeError(f"wrk failed:\n{out}\n{completed.stderr}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    refused_match = re.search(r"refused (\d+)", out)
    refused = int(refused_match.group(1)) if refused_match else 0
    return {
        "rate": rate,
        "total": total,
        "refused": refused,
        "accepted_rate": rate * (1 - refused / max(total, 1)),
    }


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection of the open-loop generator, one request at a time.

    A bare protocol rather than asyncio streams: the generator shares the
    machine's two cores with what it measures, so it should spend little.
    """

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.answer: asyncio.Future[int] | None = None
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def send(self, request: bytes) -> asyncio.Future[int]:
        self.answer = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.answer

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return
        length = re.search(rb"(?i)content-length:\s*(\d+)", self.buffer[:head_end])
        response_end = head_end + 4 + (int(length.group(1)) if length else 0)
        if len(self.buffer) < response_end:
            return
        status = int(self.buffer[9:12])
        del self.buffer[:response_end]
        if self.answer is not None and not self.answer.done():
            self.answer.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(exc or ConnectionError("the server closed the connection"))


async def open_loop(
    url: str, token: str, rule_id: str, rate: int, seconds: int, connections: int = 64
) -> dict[str, float]:
    """Offer ``rate`` requests/s on a fixed schedule whatever the answers; latency in ms.

    An open loop: a slow server shows as latency, not as fewer requests sent, and
    each latency counts from the request's scheduled time, so time spent waiting
    for a free connection is included. Requests are raw HTTP/1.1 on keep-alive
    connections, which costs this process little of the CPU the gateway shares.
    """
    host, port = url.removeprefix("http://").split(":")
    loop = asyncio.get_running_loop()
    idle: asyncio.Queue[_Connection] = asyncio.Queue()
    for _ in range(connections):
        _, connection = await loop.create_connection(_Connection, host, int(port))
        idle.put_nowait(connection)
    prefix = uuid.uuid4().hex[:8]
    latencies: list[float] = []
    statuses: list[int] = []

    async def one(n: int, scheduled: float) -> None:
        body = (
            f'{{"userId":"member-{n % 10000}","ruleId":"{rule_id}","amount":1,'
            f'"requestId":"lat-{prefix}-{n}"}}'
        ).encode()
        head = (
            f"POST /v1/points/requests HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        connection = await idle.get()
        status = await connection.send(head + body)
        idle.put_nowait(connection)
        latencies.append((time.perf_counter() - scheduled) * 1000)
        statuses.append(status)

    tasks = []
    start = time.perf_counter()
    for n in range(rate * seconds):
        scheduled = start + n / rate
        delay = scheduled - time.perf_counter()
        if delay > 0.0005:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(n, scheduled)))
    await asyncio.gather(*tasks)
    while not idle.empty():
        idle.get_nowait().transport.close()
    latencies.sort()
    return {
        "p50": statistics.median(latencies),
        "p99": latencies[int(len(latencies) * 0.99) - 1],
        "non_202": sum(1 for status in statuses if status != 202),
    }


def measure_latency(url: str, token: str, rule_id: str, seconds: int) -> dict[str, float]:
    """Latency at a steady 500 requests/s, from a generator on uvloop like the services."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(open_loop(url, token, rule_id, 500, seconds))


def seed(platform: RunningPlatform) -> tuple[str, str]:
    org = platform.points("org", "create", "Bench Coffee")
    platform.points(
        "user",
        "create",
        "--org",
        org["id"],
        "--email",
        "bench@example.com",
        "--password",
        "bench-password",
    )
    client = platform.points(
        "client", "create", "--org", org["id"], "--environment", "staging", "--name", "Bench client"
    )
    rule_id, _ = active_earn_rule(platform, [client["clientId"]])
    token = client_token(platform, client)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until the gateway's projection has the rule
        probe = httpx.post(
            f"{platform.urls['trigger']}/v1/points/requests",
            headers={"Authorization": f"Bearer {token}"},
            json={
                "userId": "warm",
                "ruleId": rule_id,
                "amount": 1,
                "requestId": f"probe-{uuid.uuid4().hex}",
            },
        )
        if probe.status_code == 202:
            break
        time.sleep(0.5)
    return rule_id, token


def active_earn_rule(
    platform: RunningPlatform, client_ids: list[str]
) -> tuple[str, dict[str, str]]:
    """An active staging earn rule authorising ``client_ids``, made by the bench user
    through the rules API; its id and the user's console headers."""
    rules = platform.urls["rules"]
    login = httpx.post(
        f"{rules}/v1/auth/login", json={"email": "bench@example.com", "password": "bench-password"}
    )
    console = {"Authorization": f"Bearer {login.json()['accessToken']}"}
    rule = httpx.post(
        f"{rules}/v1/rules",
        headers=console,
        json={
            "name": "Bench earn",
            "type": "earn",
            "environment": "staging",
            "apiTrigger": True,
            "authorizedClientIds": client_ids,
        },
    ).json()
    httpx.post(f"{rules}/v1/rules/{rule['id']}/activate", headers=console).raise_for_status()
    return rule["id"], console


def client_token(platform: RunningPlatform, client: dict[str, str]) -> str:
    """An access token for ``client`` (as `points client create` printed it)."""
    return str(
        httpx.post(
            f"{platform.urls['rules']}/realms/partner/protocol/openid-connect/token",
            data={
                "grant_type": "client_credentials",
                "client_id": client["clientId"],
                "client_secret": client["clientSecret"],
            },
        ).json()["access_token"]
    )


async def ledger_drain_seconds(dsn: str, timeout: float = 300) -> tuple[float, int, int]:
    """Seconds until the ledger has a transaction for every accepted request."""
    connection = await asyncpg.connect(dsn)
    try:
        started = time.monotonic()
        while True:
            accepted = await connection.fetchval("SELECT count(*) FROM trigger.requests")
            applied = await connection.fetchval("SELECT count(*) FROM ledger.transactions")
            if applied >= accepted or time.monotonic() - started > timeout:
                return time.monotonic() - started, accepted, applied
            await asyncio.sleep(0.5)
    finally:
        await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60, help="sustained-load duration")
    parser.add_argument("--latency-seconds", type=int, default=30)
    parser.add_argument(
        "--connections",
        type=int,
        default=64,
        help="wrk's connections: enough that the machine, not the client, is the limit "
        "(at 32, a third of the two cores stayed idle)",
    )
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an extra setting for the platform's services, e.g. TRIGGER_DB_BATCH_MAX=50",
    )
    options = parser.parse_args()
    extra_settings = dict(setting.split("=", 1) for setting in options.setting)

    work = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    script = work / "trigger.lua"
    script.write_text(WRK_SCRIPT)
    platform = start_platform(
        prefix="bench-gateway-",
        TRIGGER_RATE_LIMIT_PER_SECOND="1000000",
        TRIGGER_RATE_LIMIT_BURST="1000000",
        LOG_LEVEL="WARNING",
        **extra_settings,
    )
    bare_port = free_port()
    (work / "bare_app.py").write_text(BARE_APP)
    bare = subprocess.Popen(  # noqa: S603
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bare_app:app",
            "--port",
            str(bare_port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        cwd=work,
    )
    try:
        platform.wait_ready()
        rule_id, token = seed(platform)
        gateway = platform.urls["trigger"]
        bare_url = f"http://127.0.0.1:{bare_port}"
        print(f"platform up; rule {rule_id}; measuring for {options.seconds} s each …", flush=True)

        run_wrk(gateway, script, [rule_id, "warm", token], 5, options.connections)
        sustained = run_wrk(
            gateway, script, [rule_id, "main", token], options.seconds, options.connections
        )
        drain, accepted, applied = asyncio.run(
            ledger_drain_seconds(platform.stack_setting("DATABASE_URL"))
        )
        ceiling = run_wrk(
            bare_url, script, [rule_id, "bare", token], options.seconds, options.connections
        )
        latency = measure_latency(gateway, token, rule_id, options.latency_seconds)
        bare_latency = measure_latency(bare_url, token, rule_id, options.latency_seconds)

        print()
        print("gateway benchmark (2-core machine, everything on it)")
        print(
            f"  accepted triggers/s, {options.seconds} s sustained: "
            f"{sustained['accepted_rate']:,.0f}  ({sustained['refused']} refused of "
            f"{sustained['total']:,})"
        )
        print(f"  bare FastAPI endpoint, same way:        {ceiling['rate']:,.0f} req/s")
        print(
            f"  ratio gateway / bare:                   "
            f"{sustained['accepted_rate'] / ceiling['rate']:.2f}"
        )
        print(
            f"  at 500 req/s offered: p50 {latency['p50']:.1f} ms, p99 {latency['p99']:.1f} ms "
            f"({latency['non_202']} non-202)"
        )
        print(
            f"  bare endpoint at 500 req/s: p50 {bare_latency['p50']:.1f} ms, "
            f"p99 {bare_latency['p99']:.1f} ms"
        )
        print(
            f"  ledger: {applied:,} of {accepted:,} accepted requests applied, "
            f"{drain:.1f} s after the load stopped"
        )
    finally:
        bare.terminate()
        bare.wait()
        platform.stop()
        platform.remove_state()


if __name__ == "__main__":
    main()

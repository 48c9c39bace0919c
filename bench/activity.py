"""`make bench-activity`: how fast the ledger answers a rule's activity chart.

On this machine, in one run:

1. starts an embedded PostgreSQL (or uses ``--server-dsn``), creates a throwaway
   database and migrates it with the ledger's migrations up to, not including,
   the activity rollup (0008);
2. loads one rule with ``--transactions`` transactions (1,000,000 by default: a
   tenth redeems, one in fifty expiries, the rest earns) and their two entries
   each, spread over ``--days`` days, in bulk with SQL, into the ledger's own
   tables; then applies the remaining migrations, whose backfill builds the
   rollup from those rows (its time is printed);
3. serves the ledger's HTTP app in-process (reads only, a business user's token
   signed here and verified against an in-memory JWKS) and calls
   ``GET /v1/rules/{id}/activity`` ``--calls`` times for each of: 30 days by day,
   7 days by hour, and the largest range one read answers (1,000 days by day),
   in ``--timezone`` (Europe/Berlin), printing p50 / p95 / max.

Figures are printed; nothing here is asserted (the goal is under 100 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from infra import db
from infra.activity import MAX_BUCKETS
from infra.dev.postgres import ensure_database, start_embedded_postgres
from infra.runtime import INFRA_MIGRATIONS
from infra.tokens import API_AUDIENCE, JWKS_PATH, REALM_PATH, JwksVerifier
from services.ledger.app import MIGRATIONS, create_app
from services.ledger.settings import LedgerSettings

ORG = "org_bench"
RULE = "rul_bench_activity"
ISSUER = "http://issuer.bench"
#: The migration that adds the rollup and backfills it.
ROLLUP_MIGRATION = "0008_activity_rollup.sql"

# One statement per table, all in the server: members, the rule's pool, then the
# transactions (spread evenly over the span, newest last) and their entries.
LOAD_ACCOUNTS = """
INSERT INTO accounts (environment, org_id, kind, owner_id)
SELECT 'staging', $1, 'member', 'member-' || n FROM generate_series(1, $2) AS n
UNION ALL SELECT 'staging', $1, 'pool', $3
"""

LOAD_TRANSACTIONS = """
INSERT INTO transactions (
    id, environment, org_id, user_id, request_id, client_id, rule_id, rule_version,
    correlation_id, type, amount, status, created_at
)
SELECT gen_random_uuid(), 'staging', $1, 'member-' || (1 + n % $4), 'bench-' || n, 'cli_bench',
       $2, 1, 'bench',
       CASE WHEN n % 50 = 0 THEN 'expiry' WHEN n % 10 = 0 THEN 'redeem' ELSE 'earn' END,
       1 + n % 100, 'applied',
       $5::timestamptz + (n::float8 / $3) * ($6::timestamptz - $5::timestamptz)
FROM generate_series(1, $3) AS n
"""

LOAD_ENTRIES = """
INSERT INTO entries (transaction_id, account_id, amount)
SELECT txn.id, side.account_id, side.sign * txn.amount
FROM transactions AS txn
JOIN accounts AS member
    ON (member.environment, member.org_id, member.kind, member.owner_id)
        = (txn.environment, txn.org_id, 'member', txn.user_id)
JOIN accounts AS pool
    ON (pool.environment, pool.org_id, pool.kind, pool.owner_id)
        = (txn.environment, txn.org_id, 'pool', txn.rule_id)
CROSS JOIN LATERAL (
    VALUES (member.id, CASE WHEN txn.type = 'earn' THEN 1 ELSE -1 END),
           (pool.id, CASE WHEN txn.type = 'earn' THEN -1 ELSE 1 END)
) AS side (account_id, sign)
WHERE txn.rule_id = $1
"""


class Issuer:
    """Signs a business user's token and serves the matching JWKS in memory."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())

    def verifier(self) -> JwksVerifier:
        public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        jwks = {"keys": [{**public, "kid": "bench", "use": "sig", "alg": "ES256"}]}

        def serve(request: httpx.Request) -> httpx.Response:
            assert request.url.path == JWKS_PATH
            return httpx.Response(200, json=jwks)

        return JwksVerifier(ISSUER, http=httpx.AsyncClient(transport=httpx.MockTransport(serve)))

    def user_token(self) -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER + REALM_PATH,
            "aud": API_AUDIENCE,
            "typ": "user",
            "sub": "usr_bench",
            "org_id": ORG,
            "role": "viewer",
            "iat": now,
            "exp": now + 3600,
        }
        return jwt.encode(claims, self.key, algorithm="ES256", headers={"kid": "bench"})


@contextmanager
def migrations_before_rollup() -> Iterator[Path]:
    """The ledger's migrations without the rollup and those after it."""
    with tempfile.TemporaryDirectory(prefix="bench-activity-") as folder:
        for migration in sorted(MIGRATIONS.glob("*.sql")):
            if migration.name >= ROLLUP_MIGRATION:
                break
            shutil.copy(migration, folder)
        yield Path(folder)


async def load(dsn: str, transactions: int, members: int, days: int) -> None:
    with migrations_before_rollup() as before:
        await db.migrate(dsn, "ledger", [INFRA_MIGRATIONS, before])
    connection = await db.connect(dsn, "ledger")
    end = datetime.now(UTC)
    start = end - timedelta(days=days)
    try:
        started = time.perf_counter()
        await connection.execute(LOAD_ACCOUNTS, ORG, members, RULE)
        await connection.execute(LOAD_TRANSACTIONS, ORG, RULE, transactions, members, start, end)
        await connection.execute(LOAD_ENTRIES, RULE)
        entries = await connection.fetchval("SELECT count(*) FROM entries")
        await connection.execute("ANALYZE")
        print(
            f"loaded {transactions:,} transactions ({entries:,} entries) of one rule over "
            f"{days} days in {time.perf_counter() - started:.1f} s"
        )
    finally:
        await connection.close()
    started = time.perf_counter()
    await db.migrate(dsn, "ledger", [INFRA_MIGRATIONS, MIGRATIONS])
    connection = await db.connect(dsn, "ledger")
    try:
        rows = await connection.fetchval("SELECT count(*) FROM activity")
        await connection.execute("ANALYZE activity")
    finally:
        await connection.close()
    print(
        f"migration 0008 backfilled {rows:,} rollup rows in {time.perf_counter() - started:.1f} s"
    )


def summary(name: str, seconds: list[float]) -> str:
    ordered = sorted(seconds)
    p95 = ordered[max(0, round(0.95 * len(ordered)) - 1)]
    return (
        f"{name:<28} p50 {statistics.median(ordered) * 1000:6.1f} ms   "
        f"p95 {p95 * 1000:6.1f} ms   max {ordered[-1] * 1000:6.1f} ms   ({len(ordered)} calls)"
    )


async def measure(dsn: str, calls: int, timezone: str) -> None:
    issuer = Issuer()
    settings = LedgerSettings(
        mode="development", database_url=dsn, token_issuer_url=ISSUER, db_pool_max=4
    )
    app, runtime = create_app(settings, verifier=issuer.verifier(), consume=False)
    await runtime.start()
    now = datetime.now(UTC)
    ranges = {
        "30 days by day": ("day", timedelta(days=30)),
        "7 days by hour": ("hour", timedelta(days=7)),
        f"{MAX_BUCKETS} days by day (largest)": ("day", timedelta(days=MAX_BUCKETS - 1)),
    }
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://ledger.bench",
            headers={"Authorization": f"Bearer {issuer.user_token()}"},
        ) as http:
            for name, (bucket, span) in ranges.items():
                params = {
                    "environment": "staging",
                    "bucket": bucket,
                    "timezone": timezone,
                    "from": (now - span).isoformat(),
                    "to": now.isoformat(),
                }
                path = f"/v1/rules/{RULE}/activity"
                first = await http.get(path, params=params)  # warms the JWKS and the plan
                assert first.status_code == 200, first.text
                earned = sum(b["earned"] for b in first.json()["buckets"])
                timings = []
                for _ in range(calls):
                    started = time.perf_counter()
                    response = await http.get(path, params=params)
                    timings.append(time.perf_counter() - started)
                    assert response.status_code == 200
                print(summary(name, timings) + f"   earned {earned:,}")
    finally:
        await runtime.stop()


async def run(args: argparse.Namespace, folder: Path) -> None:
    server = None
    try:
        if args.server_dsn:
            server_dsn = args.server_dsn
        else:
            server = start_embedded_postgres(folder / "data")
            server_dsn = server.dsn
        dsn = await ensure_database(server_dsn, f"bench_activity_{int(time.time())}")
        await load(dsn, args.transactions, args.members, args.days)
        await measure(dsn, args.calls, args.timezone)
    finally:
        if server is not None:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transactions", type=int, default=1_000_000)
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument(
        "--timezone",
        default="Europe/Berlin",
        help="whose hours and days to read: a whole-hour offset reads the hourly rollup, "
        "a half-hour one (Asia/Kolkata) the quarter-hours",
    )
    parser.add_argument(
        "--server-dsn", help="a PostgreSQL server to use instead of an embedded one"
    )
    args = parser.parse_args()
    # Run as root, the embedded server runs as a user of its own: it must enter the folder.
    folder = Path(tempfile.mkdtemp(prefix="bench-activity-pg-"))
    folder.chmod(0o755)
    try:
        asyncio.run(run(args, folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

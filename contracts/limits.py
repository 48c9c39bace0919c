"""The platform's documented limits on points: one place for every service and contract.

What an API accepts is what storage accepts. Amounts and balances are stored as
PostgreSQL ``bigint`` (largest 2**63 - 1) and travel as JSON numbers, which many
readers (JavaScript's, among others) hold exactly only up to 2**53 - 1. So:

- one request moves at most :data:`MAX_POINTS`, and a member's balance never
  goes past :data:`MAX_MEMBER_BALANCE`: every amount and balance a developer
  reads is exact in any JSON reader;
- a rule's pool (the other side of each earn and redeem: it goes negative by
  what the rule issued and positive by what it took back) stays within
  ±:data:`MAX_POOL_BALANCE`. A pool adds up many members, so it gets more room,
  yet half of ``bigint``'s: whatever one batch moves through it, its change
  fits a ``bigint`` too.

The gateway refuses an amount above :data:`MAX_POINTS`; the ledger settles a
request that would take any account past its limit as rejected with the
reason ``BALANCE_LIMIT_EXCEEDED``, exactly like an insufficient balance. The
ledger's migration ``0005_balance_limits.sql`` holds the same figures as CHECK
constraints; a test keeps the two in step.
"""

from typing import Final

#: The most points one request (earn, redeem, a rule's per-request maximum or cap) carries.
MAX_POINTS: Final = 2**53 - 1
#: The largest balance a member may hold.
MAX_MEMBER_BALANCE: Final = 2**53 - 1
#: The largest magnitude of a rule's pool balance, either way.
MAX_POOL_BALANCE: Final = 2**62
#: The longest expiry policy a rule may set: points expire at most this many days after
#: they are awarded (a hundred years; any instant it gives fits every date type).
MAX_EXPIRY_DAYS: Final = 36_500
#: The largest trigger rate one client may be given: triggers a second, and its burst.
MOST_TRIGGERS_PER_CLIENT: Final = 1_000_000

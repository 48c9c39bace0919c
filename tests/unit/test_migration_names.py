"""Migrations run in the order of their names, so each directory numbers them once each.

yoyo knows a migration by its file name: renaming one that databases have applied
would apply it again. The two pairs that shared a number before this rule keep
their names (yoyo orders each pair by the rest of the name, the same way everywhere)
and no other pair may join them.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DIRECTORIES = [ROOT / "infra" / "migrations", *sorted(ROOT.glob("services/*/migrations"))]
SHARED_BEFORE_THIS_RULE = {("trigger", "0003"), ("rules", "0004")}


def test_every_migration_is_named_with_a_four_digit_number_and_what_it_does() -> None:
    badly_named = [
        path.name
        for directory in DIRECTORIES
        for path in directory.glob("*.sql")
        if not re.fullmatch(r"\d{4}_[a-z0-9_]+\.sql", path.name)
    ]
    assert len(DIRECTORIES) == 5
    assert badly_named == []


def test_no_new_pair_of_migrations_shares_a_number() -> None:
    shared = set()
    for directory in DIRECTORIES:
        numbers = Counter(path.name[:4] for path in directory.glob("*.sql"))
        owner = directory.parent.name
        shared |= {(owner, number) for number, count in numbers.items() if count > 1}
    assert shared == SHARED_BEFORE_THIS_RULE

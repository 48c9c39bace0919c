"""Offers: callbacks a notifier process just queued, taken by id within the fair shares."""

from __future__ import annotations

import uuid

from services.notifier.fairness import MOST_OFFERS, Offer, WorkerPool


def offer(org_id: str, host: str = "hooks.example.com") -> Offer:
    return Offer(uuid.uuid4(), org_id, host)


def test_offers_are_taken_oldest_first() -> None:
    pool = WorkerPool("callback", workers=8, per_organisation=4)
    first, second = offer("org-a"), offer("org-b")
    pool.offer([first, second])

    assert [pool.next_offer(), pool.next_offer(), pool.next_offer()] == [first, second, None]


def test_an_organisation_at_its_share_waits_while_another_goes_ahead() -> None:
    pool = WorkerPool("callback", workers=4, per_organisation=2)
    pool.take("org-busy", "hooks.example.com")
    pool.take("org-busy", "hooks.example.com")
    held, other = offer("org-busy"), offer("org-other")
    pool.offer([held, other])

    assert pool.next_offer() == other
    assert pool.next_offer() is None  # the busy organisation is still at its share
    pool.give_back("org-busy", "hooks.example.com")
    assert pool.next_offer() == held


def test_a_host_at_its_share_waits_while_the_organisations_other_host_goes_ahead() -> None:
    pool = WorkerPool("callback", workers=8, per_organisation=4, per_host=1)
    pool.take("org-a", "slow.example.com")
    slow, fast = offer("org-a", "slow.example.com"), offer("org-a", "fast.example.com")
    pool.offer([slow, fast])

    assert [pool.next_offer(), pool.next_offer()] == [fast, None]


def test_an_offer_wakes_the_workers_and_the_oldest_are_forgotten_past_the_bound() -> None:
    pool = WorkerPool("callback", workers=8, per_organisation=4)
    offers = [offer("org-a") for _ in range(MOST_OFFERS + 5)]
    pool.offer(offers)

    assert pool.wake.is_set()
    assert pool.next_offer() == offers[5]

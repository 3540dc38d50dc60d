"""Usage metering, the write side: a batch of inference records summed into daily rows per key, team, deployment
and adapter; batches adding up; latency percentiles read from histograms; two flushers at once losing nothing."""

from __future__ import annotations

import itertools
import threading
import time
from datetime import date, datetime

import pytest
from django.db import connection, transaction

from deployments.gateway.models import UsageDay
from deployments.gateway.usage import (
    LATENCY_BOUNDS_MS,
    SLOTS,
    add_usage,
    latency_slot,
    percentile,
    usage_summary,
)
from tests.deployments.gateway.usage_support import call


def slot_of(bound: float) -> int:
    return LATENCY_BOUNDS_MS.index(bound)


def histogram(**counts_by_bound) -> list[int]:
    """A histogram from {"b<bound>": count}; "overflow" for the last slot."""
    slots = [0] * SLOTS
    for name, count in counts_by_bound.items():
        slots[-1 if name == "overflow" else slot_of(float(name[1:]))] += count
    return slots


def row(**match) -> UsageDay:
    return UsageDay.objects.get(**match)


def test_the_bounds_run_from_5_ms_to_600_s_each_at_most_a_quarter_wider_than_the_last():
    assert LATENCY_BOUNDS_MS[0] == 5 and LATENCY_BOUNDS_MS[-1] == 600_000
    assert all(1 < b / a <= 1.28 for a, b in itertools.pairwise(LATENCY_BOUNDS_MS))
    assert len(LATENCY_BOUNDS_MS) + 1 == SLOTS
    # A call on a bound counts in that bound's bucket; one just above, in the next; past the last, overflow.
    assert latency_slot(10) == slot_of(10) and latency_slot(10.01) == slot_of(12.5)
    assert latency_slot(0) == 0 and latency_slot(-3) == 0 and latency_slot(600_001) == SLOTS - 1


@pytest.mark.django_db
def test_a_batch_is_summed_into_one_row_per_day_key_team_deployment_and_adapter():
    add_usage(
        [
            call(key_id=1, team_id=3, duration_ms=9, prompt_tokens=5, completion_tokens=7),
            call(key_id=1, team_id=3, duration_ms=100, status=429, prompt_tokens=6, completion_tokens=0),
            call(key_id=1, team_id=3, duration_ms=700_000, status=500, prompt_tokens=1, completion_tokens=0),
            call(key_id=1, team_id=3, adapter="sql-lora", prompt_tokens=2, completion_tokens=3),
            call(key_id=2, team_id=None, started_at="2025-03-01T23:59:59+00:00"),
            # 00:30 in Berlin on March 2nd is still March 1st in UTC, the console's time zone
            call(key_id=2, team_id=None, started_at="2025-03-02T00:30:00+01:00"),
            call(key_id=2, team_id=None, started_at=datetime(2025, 3, 2, 8, 0)),  # naive: the console's time zone
            call(key_id=None, team_id=None, deployment_id=None, started_at="2025-03-02T08:00:00Z", status=401),
        ]
    )
    assert UsageDay.objects.count() == 5
    base = row(day=date(2025, 3, 1), key_id=1, team_id=3, deployment_id=7, adapter="")
    assert (base.requests, base.errors, base.prompt_tokens, base.completion_tokens) == (3, 2, 12, 7)
    assert base.latency_histogram == histogram(b10=1, b100=1, overflow=1)
    lora = row(day=date(2025, 3, 1), key_id=1, adapter="sql-lora")
    assert (lora.requests, lora.errors, lora.prompt_tokens, lora.completion_tokens) == (1, 0, 2, 3)
    late = row(day=date(2025, 3, 1), key_id=2, team_id=0)
    assert late.requests == 2
    assert row(day=date(2025, 3, 2), key_id=2).requests == 1
    refused = row(day=date(2025, 3, 2), key_id=0, team_id=0, deployment_id=0)
    assert (refused.requests, refused.errors) == (1, 1)


@pytest.mark.django_db
def test_batches_add_up_and_an_empty_batch_changes_nothing():
    add_usage([call(duration_ms=20, prompt_tokens=4), call(duration_ms=30, status=503)])
    add_usage([])
    add_usage([call(duration_ms=20, prompt_tokens=6), call(duration_ms=1_000_000)])
    (only,) = UsageDay.objects.all()
    assert (only.requests, only.errors, only.prompt_tokens, only.completion_tokens) == (4, 1, 30, 80)
    assert only.latency_histogram == histogram(b20=2, b32=1, overflow=1)


def test_percentiles_interpolate_within_the_bucket_the_rank_falls_in():
    # 100 calls: 50 in (8, 10] ms, 40 in (16, 20], 10 in (80, 100]
    counts = histogram(b10=50, b20=40, b100=10)
    assert percentile(counts, 25) == 9.0  # rank 25 of 50 in (8, 10]: halfway
    assert percentile(counts, 50) == 10.0
    assert percentile(counts, 90) == 20.0
    assert percentile(counts, 99) == 98.0  # rank 99: 9 of the 10 in (80, 100]
    assert percentile(counts, 100) == 100.0
    assert percentile(histogram(b5=4), 50) == 2.5  # the first bucket starts at 0
    assert percentile(histogram(b5=1, overflow=1), 99) == 600_000.0  # past the last bound: the last bound
    assert percentile([0] * SLOTS, 50) == 0.0
    with pytest.raises(ValueError):
        percentile(counts, 0)
    with pytest.raises(ValueError):
        percentile(counts, 101)


@pytest.mark.django_db
def test_the_summary_reads_percentiles_from_the_summed_histograms_of_every_row():
    # Two rows (two keys), 4 calls in each: together 8, whose median is in the second row's bucket.
    add_usage([call(key_id=1, duration_ms=9) for _ in range(3)] + [call(key_id=1, duration_ms=150, status=500)])
    add_usage([call(key_id=2, duration_ms=150) for _ in range(4)])
    summary = usage_summary(UsageDay.objects.all())
    assert summary["requests"] == 8 and summary["errors"] == 1 and summary["error_rate"] == 0.125
    assert summary["total_tokens"] == 8 * 30
    # 3 in (8, 10], 5 in (125, 160]: rank 4 is the 1st of 5 in (125, 160]; rank 7.92 is the 4.92nd
    assert summary["p50_ms"] == 132.0
    assert summary["p99_ms"] == 159.4  # 125 + 35 * 4.92 / 5 = 159.44
    assert usage_summary(UsageDay.objects.none())["p50_ms"] is None


@pytest.mark.django_db(transaction=True)
def test_two_flushers_at_once_lose_no_addition_and_never_deadlock():
    """Each round both threads add a batch over the same rows (created by the first round, concurrently) and hold
    their transaction a moment: an unlocked read-modify-write would lose the other's addition."""
    assert connection.vendor == "postgresql"
    rounds, barrier, failures = 8, threading.Barrier(2), []
    days = ["2025-03-01T10:00:00Z", "2025-03-02T10:00:00Z"]

    def flusher(order: int) -> None:
        try:
            for n in range(rounds):
                batch = [
                    call(started_at=day, key_id=key, deployment_id=7, duration_ms=40, prompt_tokens=n + 1)
                    for day in days
                    for key in (1, 2, 3)
                ]
                barrier.wait(timeout=30)
                with transaction.atomic():
                    add_usage(batch[::order])
                    time.sleep(0.02)
        except Exception as exc:  # reported below, with the thread's order
            failures.append(f"{order}: {exc!r}")
            barrier.abort()
        finally:
            connection.close()

    threads = [threading.Thread(target=flusher, args=(order,)) for order in (1, -1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures
    rows = list(UsageDay.objects.all())
    assert len(rows) == 6
    for usage in rows:
        assert usage.requests == 2 * rounds
        assert usage.prompt_tokens == 2 * sum(range(1, rounds + 1))
        assert usage.latency_histogram == histogram(b40=2 * rounds)

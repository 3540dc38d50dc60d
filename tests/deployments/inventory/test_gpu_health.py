"""GPU health rules (pure): each XID class, uncorrectable ECC, pending repairs, thermal slowdown sustained or short,
and failed staying failed until a reset shows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from deployments.inventory import gpu_health
from deployments.inventory.gpu_health import DEGRADED, FAILED, MEMORY_KEY, OK, assess

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
THERMAL = 300


def reading(**fields) -> dict:
    return {"index": 0, "uuid": "GPU-0", "ecc_uncorrected": 0, "throttle_reasons": 0, "xids": [], **fields}


def judge(now_reading: dict, previous: dict | None = None, health: str = OK, cause: str = "", now=T0):
    return assess(now_reading, previous=previous, health=health, cause=cause, now=now, thermal_seconds=THERMAL)


@pytest.mark.parametrize(
    ("xid", "health", "cause"),
    [
        (48, FAILED, "xid-48"),  # double-bit ECC
        (64, FAILED, "xid-64"),  # page retirement / row remap failed
        (74, FAILED, "xid-74"),  # NVLink
        (79, FAILED, "xid-79"),  # fallen off the bus
        (95, FAILED, "xid-95"),  # uncontained ECC
        (119, FAILED, "xid-119"),  # GSP timeout
        (120, FAILED, "xid-120"),  # GSP error
        (63, DEGRADED, "xid-63"),  # row remapping pending
        (92, DEGRADED, "xid-92"),  # high single-bit ECC rate
        (94, DEGRADED, "xid-94"),  # contained ECC
        (13, OK, ""),  # application XIDs: the program's fault
        (31, OK, ""),
        (43, OK, ""),
        (45, OK, ""),
        (999, OK, ""),  # unknown: no change
    ],
)
def test_each_xid_class(xid, health, cause):
    result = judge(reading(xids=[xid]), previous=reading())
    assert (result.health, result.cause) == (health, cause)
    if health != OK:
        assert str(result.detail).startswith(f"XID {xid}:") and str(result.next_step)


@pytest.mark.parametrize(
    ("fields", "health", "cause"),
    [
        ({"ecc_uncorrected": 3}, FAILED, "ecc-uncorrectable"),  # rose from 2
        ({"ecc_uncorrected": 2}, OK, ""),  # the same count: old news
        ({"ecc_uncorrected": None}, OK, ""),  # not reported
        ({"remapped_rows_failed": True}, FAILED, "remap-failed"),
        ({"remapped_rows_pending": True}, DEGRADED, "remap-pending"),
        ({"retired_pages_pending": True}, DEGRADED, "retired-pages-pending"),
        ({"throttle_reasons": 0x4}, OK, ""),  # SW power cap: not heat
    ],
)
def test_ecc_and_pending_repairs(fields, health, cause):
    result = judge(reading(**fields), previous=reading(ecc_uncorrected=2))
    assert (result.health, result.cause) == (health, cause)


def test_the_first_reading_has_no_rise_to_see():
    assert judge(reading(ecc_uncorrected=5), previous=None).health == OK


@pytest.mark.parametrize("bit", [0x8, 0x20, 0x40, 0x80])
def test_thermal_slowdown_counts_only_when_sustained(bit):
    hot = reading(throttle_reasons=bit)
    first = judge(hot, previous=reading())
    assert first.health == OK and first.memory["thermal_since"] == T0.isoformat()
    stored = {**hot, MEMORY_KEY: first.memory}
    short = judge(hot, previous=stored, now=T0 + timedelta(seconds=THERMAL - 1))
    assert short.health == OK
    long = judge(hot, previous={**hot, MEMORY_KEY: short.memory}, now=T0 + timedelta(seconds=THERMAL))
    assert (long.health, long.cause) == (DEGRADED, "thermal-throttle")
    # One clear reading forgets: a new spike starts the clock again.
    cool = judge(reading(), previous={**hot, MEMORY_KEY: long.memory}, now=T0 + timedelta(seconds=THERMAL + 1))
    assert cool.health == OK and "thermal_since" not in cool.memory
    again = judge(hot, previous={**reading(), MEMORY_KEY: cool.memory}, now=T0 + timedelta(seconds=THERMAL + 2))
    assert again.health == OK


def test_a_degrading_xid_holds_for_an_hour_then_clears():
    first = judge(reading(xids=[92]), previous=reading())
    later = judge(reading(), previous={**reading(), MEMORY_KEY: first.memory}, now=T0 + timedelta(minutes=59))
    assert (later.health, later.cause) == (DEGRADED, "xid-92")
    after = gpu_health.XID_DEGRADED_HOLD_SECONDS
    gone = judge(reading(), previous={**reading(), MEMORY_KEY: later.memory}, now=T0 + timedelta(seconds=after))
    assert gone.health == OK


def test_failed_is_sticky_until_a_reset_zeroes_the_volatile_counts():
    failed = judge(reading(ecc_uncorrected=4), previous=reading(ecc_uncorrected=1))
    assert (failed.health, failed.cause) == (FAILED, "ecc-uncorrectable")
    stored = {**reading(ecc_uncorrected=4), MEMORY_KEY: failed.memory}
    still = judge(reading(ecc_uncorrected=4), previous=stored, health=FAILED, cause="ecc-uncorrectable")
    assert (still.health, still.cause) == (FAILED, "ecc-uncorrectable")
    reset = judge(reading(ecc_uncorrected=0), previous=stored, health=FAILED, cause="ecc-uncorrectable")
    assert (reset.health, reset.cause) == (OK, "")


def test_a_gpu_that_fell_off_the_bus_waits_for_an_admin():
    failed = judge(reading(xids=[79]), previous=reading())
    stored = {**reading(), MEMORY_KEY: failed.memory}
    clean = judge(reading(), previous=stored, health=FAILED, cause="xid-79")
    assert (clean.health, clean.cause) == (FAILED, "xid-79")


def test_health_set_by_hand_stays_until_the_rules_find_worse():
    assert judge(reading(), previous=reading(), health=DEGRADED, cause="").health == DEGRADED
    assert judge(reading(), previous=reading(), health=FAILED, cause="").health == FAILED
    worse = judge(reading(xids=[79]), previous=reading(), health=DEGRADED, cause="")
    assert (worse.health, worse.cause) == (FAILED, "xid-79")
    # A hand-set failed GPU is not cleared by a lower count: there was no rule's failure to reset.
    assert judge(reading(ecc_uncorrected=0), previous=reading(ecc_uncorrected=3), health=FAILED).health == FAILED

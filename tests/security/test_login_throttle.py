"""Password spraying (many usernames, one guess each, from one address) is stopped by a per-address limit,
and the audit log counts every failed login exactly in a few counted events instead of one row each."""

from __future__ import annotations

from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.test import Client

from audit.models import AuditEvent
from console.accounts.models import LoginFailureWindow
from console.accounts.services.login_failures import login_failures_flush
from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db
SPRAYER = "10.66.0.7"
FAILED = ("auth.login_failed", "auth.login_failed_repeated")


def login(username: str, password: str, ip: str = SPRAYER):
    return Client().post("/login/", {"username": username, "password": password}, REMOTE_ADDR=ip)


def counted_failures(ip: str = SPRAYER) -> tuple[int, int]:
    """(audit rows about failed logins from ip, failed logins those rows account for)."""
    rows = list(AuditEvent.objects.filter(client_ip=ip, action__in=FAILED))
    return len(rows), sum(1 if e.action == "auth.login_failed" else e.details["count"] for e in rows)


def let_the_window_pass(settings) -> None:
    """Move every stored failure and window back by the cool-off, as if that much time went by."""
    gone = timedelta(hours=settings.AXES_COOLOFF_TIME, seconds=1)
    for attempt in AccessAttempt.objects.all():
        AccessAttempt.objects.filter(pk=attempt.pk).update(attempt_time=attempt.attempt_time - gone)
    for window in LoginFailureWindow.objects.all():
        LoginFailureWindow.objects.filter(pk=window.pk).update(opened_at=window.opened_at - gone)


def test_spraying_thirty_usernames_from_one_address_is_stopped_and_counted_exactly(settings, engineer):
    assert settings.AXES_ADDRESS_FAILURE_LIMIT == 20 < 30
    answers = [login(f"victim{n}", "Summer2024!").status_code for n in range(30)]
    # One guess per username never reaches the per-username limit; the address limit stops the rest.
    assert answers[:19] == [200] * 19
    assert answers[19:] == [429] * 11
    refused = login(engineer.username, PASSWORD)  # the right password, from the sprayer's address
    assert refused.status_code == 429 and 'data-scope="address"' in refused.content.decode()
    assert login(engineer.username, PASSWORD, ip="10.66.0.8").status_code == 302  # other addresses are fine

    rows, failures = counted_failures()
    assert rows == 1 and failures == 1  # the rest is being counted, not written one row each
    locks = AuditEvent.objects.filter(client_ip=SPRAYER, action="auth.locked_out")
    assert [e.details["scope"] for e in locks] == ["address"]  # one event when the lock began

    let_the_window_pass(settings)
    assert login(engineer.username, "wrong").status_code == 200  # the lock is over; this failure opens a window
    rows, failures = counted_failures()
    assert rows == 3 and failures == 30 + 1 + 1  # 30 sprayed, the refused right password, the last one
    repeated = AuditEvent.objects.get(client_ip=SPRAYER, action="auth.login_failed_repeated")
    assert repeated.details["count"] == 30 and repeated.details["refused"] == 11
    assert repeated.actor_name == "(several usernames)"
    assert repeated.details["usernames"][:2] == ["victim1", "victim2"]  # the first 20 distinct names tried
    assert "Summer2024!" not in repeated.detail + repeated.diff


def test_counted_events_are_written_in_batches_and_at_a_success(settings, engineer):
    settings.LOGIN_FAILURE_AUDIT_BATCH = 5
    settings.AXES_ADDRESS_FAILURE_LIMIT = 100
    for n in range(12):
        login(f"someone{n}", "guess")
    rows, failures = counted_failures()
    assert (rows, failures) == (3, 11)  # the first, then two events of 5; one failure still counted
    assert login(engineer.username, PASSWORD).status_code == 302  # a success writes what is left
    assert counted_failures() == (4, 12)
    assert login_failures_flush(closed_only=False) == 0  # nothing held back, nothing written twice


def test_a_quiet_address_is_flushed_by_the_next_failure_from_anywhere(settings):
    for _ in range(3):
        login("admin", "guess")
    let_the_window_pass(settings)
    login("admin", "guess", ip="10.66.0.9")
    assert counted_failures() == (2, 3)
    assert not LoginFailureWindow.objects.filter(client_ip=SPRAYER).exists()


def test_the_per_username_lock_still_comes_first_and_is_audited_once(settings, engineer):
    for _ in range(settings.AXES_FAILURE_LIMIT + 2):
        login(engineer.username, "wrong")
    assert login(engineer.username, PASSWORD).status_code == 429
    locks = AuditEvent.objects.filter(client_ip=SPRAYER, action="auth.locked_out")
    assert [e.details["scope"] for e in locks] == ["username"]
    assert login("someone-else", "guess").status_code == 200  # below the address limit


def test_beat_writes_the_count_of_an_address_that_went_quiet(settings):
    """Nobody fails or succeeds again: beat's task writes the waiting count once the window has closed."""
    from workers.tasks import login_failures_audit

    for _ in range(4):
        login("admin", "guess")
    assert login_failures_audit() == 0  # the window is still open
    let_the_window_pass(settings)
    assert login_failures_audit() == 1
    assert counted_failures() == (2, 4)  # the first failure's own event, then one counting the other three
    assert settings.CELERY_BEAT_SCHEDULE["login-failures-audit"]["task"] == "workers.login_failures_flush"

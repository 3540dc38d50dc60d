"""Failed logins in the audit log, collapsed per client address without losing one.

The first failure from an address in a window is an `auth.login_failed` event (one failure). The following
ones are counted in that address's `LoginFailureWindow` and written as `auth.login_failed_repeated` events whose
`count` is exact: when a later failure finds the window closed, every LOGIN_FAILURE_AUDIT_BATCH failures, at a
successful login from the address, or by `login_failures_flush`. The audit log is append-only, so the running
count lives in the tally, and each flush moves it to an event in the same transaction: the failures of an
address are the number of `auth.login_failed` events plus the sum of the `count`s, once every window is flushed.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

import audit
from audit import context
from console.accounts.models import LoginFailureWindow

USERNAMES_KEPT = 20  # distinct usernames named in one counted event: enough to see spraying, bounded in size
SWEEP = 20  # closed windows of other addresses flushed by one failure


def window_length() -> timedelta:
    """The window is the login cool-off (AXES_COOLOFF_MINUTES): failures closer than that add up."""
    return timedelta(hours=settings.AXES_COOLOFF_TIME)


def _name(username: str) -> str:
    return str(username or "")[:150] or "(no username)"


def _flush(window: LoginFailureWindow) -> None:
    """Write the window's unrecorded failures as one counted event (under the address they came from)."""
    if not window.unrecorded:
        return
    names = window.usernames
    with context.bound(client_ip=window.client_ip or None):
        audit.record(
            action="auth.login_failed_repeated",
            actor=None,
            actor_name=names[0] if len(names) == 1 else "(several usernames)",
            outcome="failure",
            detail={
                "count": window.unrecorded,
                "refused": window.refused,
                "window_opened_at": window.opened_at.isoformat(),
                "last_at": window.last_at.isoformat(),
                "usernames": names,
            },
        )
    window.unrecorded = window.refused = 0
    window.usernames = []


def _sweep(now: datetime, skip: str) -> None:
    """Flush closed windows of other addresses, a few at a time (rows another request holds are skipped)."""
    closed = (
        LoginFailureWindow.objects.select_for_update(skip_locked=True)
        .filter(opened_at__lt=now - window_length())
        .exclude(client_ip=skip)
        .order_by("opened_at")[:SWEEP]
    )
    for window in closed:
        _flush(window)
        window.delete()


@transaction.atomic
def login_failure_record(*, username: str, client_ip: str, refused: bool = False, lock: str = "") -> None:
    """Count one failed login from client_ip in the audit log. refused: a lock turned the attempt away; lock:
    "username" or "address" when this failure started a lock (an `auth.locked_out` event, not a failure)."""
    now = timezone.now()
    _sweep(now, skip=client_ip)
    window, created = LoginFailureWindow.objects.select_for_update().get_or_create(
        client_ip=client_ip, defaults={"opened_at": now, "last_at": now}
    )
    if not created and now - window.opened_at >= window_length():
        _flush(window)
        window.opened_at, window.failures = now, 0
    window.failures += 1
    window.last_at = now
    if window.failures == 1:
        audit.record(action="auth.login_failed", actor=None, actor_name=_name(username), outcome="failure")
    else:
        window.unrecorded += 1
        window.refused += int(refused)
        name = _name(username)
        if name not in window.usernames and len(window.usernames) < USERNAMES_KEPT:
            window.usernames = [*window.usernames, name]
        if window.unrecorded >= settings.LOGIN_FAILURE_AUDIT_BATCH:
            _flush(window)
    window.save()
    if lock:
        audit.record(
            action="auth.locked_out",
            actor=None,
            actor_name=_name(username),
            outcome="denied",
            detail={"reason": "too many failed logins", "scope": lock},
        )


@transaction.atomic
def login_failures_flush(*, client_ip: str | None = None, closed_only: bool = True) -> int:
    """Write the counted failures still held in the tally (one address, or all); returns the events written.
    A successful login flushes its address; a beat task may call this for windows nobody revisits."""
    now = timezone.now()
    windows = LoginFailureWindow.objects.select_for_update(skip_locked=True).filter(unrecorded__gt=0)
    if client_ip is not None:
        windows = windows.filter(client_ip=client_ip)
    if closed_only:
        windows = windows.filter(opened_at__lt=now - window_length())
    written = 0
    for window in windows:
        _flush(window)
        window.save()
        written += 1
    return written

"""Login throttling: django-axes' database handler with a limit per client address added to its limit per
username and address, and failed logins written to the audit log through the collapsing tally.

Per username and address (axes): AXES_FAILURE_LIMIT failures lock that pair. Per address (here): after
AXES_ADDRESS_FAILURE_LIMIT failures from one address, whatever the usernames, every login from it is refused.
Both count axes' AccessAttempt rows newer than the cool-off (AXES_COOLOFF_MINUTES) and both locks end when no
failure came for that long; `axes_reset_ip` lifts an address lock as it lifts the others.
"""

from __future__ import annotations

from axes.attempts import get_cool_off_threshold
from axes.handlers.database import AxesDatabaseHandler
from axes.helpers import get_client_username
from axes.models import AccessAttempt
from django.conf import settings
from django.db.models import Sum

from audit import context
from console.accounts.services.login_failures import login_failure_record, login_failures_flush


def address_failures(request) -> int:
    """Failed logins from the request's address within the cool-off, whatever the usernames tried."""
    ip = getattr(request, "axes_ip_address", None)
    if not ip:
        return 0
    attempts = AccessAttempt.objects.filter(ip_address=ip, attempt_time__gte=get_cool_off_threshold(request))
    return attempts.aggregate(total=Sum("failures_since_start"))["total"] or 0


def address_locked(request) -> bool:
    return address_failures(request) >= settings.AXES_ADDRESS_FAILURE_LIMIT


class ConsoleAxesHandler(AxesDatabaseHandler):
    """AxesDatabaseHandler + the per-address limit + the audit events of failed logins and locks."""

    def is_locked(self, request, credentials: dict | None = None) -> bool:
        if super().is_locked(request, credentials):
            return True
        if address_locked(request):
            request.axes_lock_scope = "address"  # the lockout page says which lock holds
            return True
        return False

    def user_login_failed(self, sender, credentials: dict, request=None, **kwargs) -> None:
        username = str((credentials or {}).get("username") or "")
        if request is None:  # a login outside a request: axes cannot count it, the audit log still does
            login_failure_record(username=username, client_ip=context.current().client_ip or "")
            return
        refused = self.is_locked(request, credentials)
        super().user_login_failed(sender, credentials, request, **kwargs)
        if not request.axes_locked_out and address_locked(request):
            request.axes_locked_out = True
            request.axes_credentials = credentials
            request.axes_lock_scope = "address"
        lock = ""
        if request.axes_locked_out and not refused:
            lock = getattr(request, "axes_lock_scope", "username")
        login_failure_record(
            username=get_client_username(request, credentials) or username,
            client_ip=request.axes_ip_address or "",
            refused=refused,
            lock=lock,
        )

    def user_logged_in(self, sender, request, user, **kwargs) -> None:
        super().user_logged_in(sender, request, user, **kwargs)
        if request is not None and getattr(request, "axes_ip_address", None):
            login_failures_flush(client_ip=request.axes_ip_address, closed_only=False)

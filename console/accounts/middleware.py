"""Until a person replaces an admin's temporary password, the console is only the page that changes it."""

from __future__ import annotations

from urllib.parse import urlencode

from django.http import JsonResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.deprecation import MiddlewareMixin
from django.utils.translation import gettext as _

from console.accounts.selectors import password_change_required

# What such a person may still reach: the change itself (page and API), logging out, the language switch.
EXEMPT_VIEWS = frozenset({"password-change", "logout", "set_language", "healthz", "api:me-password"})


class PasswordChangeRequiredMiddleware(MiddlewareMixin):
    """Pages redirect to the change page; API calls made with the session get a 403 naming the reason. A call
    with an API token is left to the token: tokens made before the reset keep working (an admin who suspects
    a leak revokes them with the reset), and no new one can be made before the change."""

    def process_view(self, request, view_func, view_args, view_kwargs):
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated or request.resolver_match.view_name in EXEMPT_VIEWS:
            return None
        if request.path.startswith("/api/") and "HTTP_AUTHORIZATION" in request.META:
            return None
        if not password_change_required(user):
            return None
        if request.path.startswith("/api/"):
            detail = _("You must change your password before using the console: POST /api/v1/me/password/.")
            return JsonResponse({"detail": detail, "code": "password_change_required"}, status=403)
        target = reverse("password-change")
        if request.method == "GET":
            target += "?" + urlencode({"next": request.get_full_path()})
        return redirect(target)

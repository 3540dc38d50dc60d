"""The console's own pages: the health check and the dashboard."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db import connection
from django.http import JsonResponse
from django.views.generic import TemplateView

from console import permissions, roles
from console.mixins import ConsoleViewMixin
from console.permissions import allowed_actions
from console.redis_health import redis_available

User = get_user_model()


def healthz(request):
    """Liveness for the reverse proxy and compose: the process answers and the database does. Without Redis the
    console still answers (200), "degraded": live streams and new background work wait for it."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    if not redis_available():
        return JsonResponse({"status": "degraded", "redis": "unavailable"})
    return JsonResponse({"status": "ok"})


class DashboardView(ConsoleViewMixin, TemplateView):
    template_name = "console/dashboard.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        user = self.request.user
        context["my_roles"] = [roles.ROLE_LABELS[r] for r in permissions.user_roles(user)]
        context["my_actions"] = [(a, roles.ACTIONS[a]) for a in allowed_actions(user)]
        # Admins land on the fleet: the fleet page's sections, above their own cards (monitoring_tags).
        context["show_fleet"] = permissions.can(user, roles.MANAGE_INVENTORY)
        return context

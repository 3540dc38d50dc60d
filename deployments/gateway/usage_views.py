"""The Usage page and its CSV export: what was called through the gateway, per day and grouped by key, team,
deployment or adapter. Everyone with `view` opens it and sees the usage console.permissions.restrict_usage
allows (admins and auditors all of it; others their own keys and their teams' service accounts)."""

from __future__ import annotations

from django.contrib import messages
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views import View

from audit.export import is_asgi
from console import roles
from console.forms import filter_query
from console.mixins import ConsoleViewMixin
from deployments.gateway.usage import usage_report, usage_rows
from deployments.gateway.usage_export import usage_csv_response
from deployments.gateway.usage_forms import FIELDS, GROUP_LABELS, UsageFilterForm

NARROWING = ("deployment", "team", "key", "adapter")


class UsageView(ConsoleViewMixin, View):
    permission_action = roles.VIEW
    template_name = "gateway/usage.html"

    def get(self, request):
        form = UsageFilterForm(request.GET, user=request.user)
        valid = form.is_valid()
        filters = form.active_filters() if valid else {}
        report = None
        if valid:
            rows = usage_rows(user=request.user, filters=filters)
            report = usage_report(rows, group_by=filters["group_by"], since=filters["since"], until=filters["until"])
        context = {
            "form": form,
            "report": report,
            "group_label": GROUP_LABELS.get(filters.get("group_by", ""), ""),
            "narrowed": any(filters.get(name) not in (None, "") for name in NARROWING),
            "filter_query": filter_query(request.GET, FIELDS),
            "chart_labels": {
                "requests": _("requests"),
                "errors": _("errors"),
                "prompt_tokens": _("prompt tokens"),
                "completion_tokens": _("completion tokens"),
                "p50_ms": _("p50 (ms)"),
                "p99_ms": _("p99 (ms)"),
                "day": _("day"),
            },
        }
        return render(request, self.template_name, context, status=200 if valid else 400)


class UsageExportView(ConsoleViewMixin, View):
    """GET /gateway/usage/export.csv?<filters>: the filtered daily rows as a streamed CSV."""

    permission_action = roles.VIEW

    def get(self, request):
        form = UsageFilterForm(request.GET, user=request.user)
        if not form.is_valid():
            messages.error(request, _("Fix the filters before exporting."))
            query = filter_query(request.GET, FIELDS)
            return redirect(reverse("usage") + (f"?{query}" if query else ""))
        rows = usage_rows(user=request.user, filters=form.active_filters())
        return usage_csv_response(rows, asynchronous=is_asgi(request))

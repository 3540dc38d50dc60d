"""The audit log's pages: the filtered, paginated, live list and its export."""

from __future__ import annotations

import json

from django.contrib import messages
from django.core.paginator import Paginator
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views import View

import audit
from audit.export import FORMATS, events_export, is_asgi
from audit.filters import FIELDS, AuditFilterForm, filters_as_strings
from audit.models import AuditEvent
from audit.selectors import event_head_id, event_list, verification_status
from console import roles
from console.forms import filter_query
from console.mixins import ConsoleViewMixin

PAGE_SIZE = 50
OUTCOME_BADGES = {"success": "text-bg-success", "denied": "text-bg-warning", "failure": "text-bg-danger"}


def _shown(value) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)


def event_row(event: AuditEvent) -> dict:
    """What one row of the list shows (the live script fills the same markup from stream items)."""
    changes = []
    for field, change in event.changes.items():
        before, after = change if isinstance(change, list) and len(change) == 2 else (None, change)
        changes.append({"field": field, "before": _shown(before), "after": _shown(after)})
    details = event.details
    return {
        "event": event,
        "time": event.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        "iso_time": event.created_at.isoformat(),
        "roles": ", ".join(event.roles),
        "changes": changes,
        "detail": json.dumps(details, ensure_ascii=False, indent=2, sort_keys=True) if details else "",
        "badge": OUTCOME_BADGES.get(event.outcome, "text-bg-secondary"),
    }


class AuditEventListView(ConsoleViewMixin, View):
    """The audit log, newest first. Viewing its first page is itself audited (`audit.viewed`)."""

    permission_action = roles.VIEW_DATA
    template_name = "audit/events.html"

    def get(self, request):
        form = AuditFilterForm(request.GET)
        valid = form.is_valid()
        filters = form.active_filters() if valid else {}
        page_number = request.GET.get("page") or "1"
        if valid and page_number == "1":
            audit.record(action="audit.viewed", actor=request.user, detail={"filters": filters_as_strings(filters)})
        head = event_head_id(user=request.user)
        events = event_list(user=request.user, filters=filters) if valid else AuditEvent.objects.none()
        page = Paginator(events, PAGE_SIZE).get_page(page_number)
        rows = [event_row(event) for event in page.object_list]
        live = valid and not filters and page.number == 1
        context = {
            "form": form,
            "page_obj": page,
            "rows": rows,
            "filtered": bool(filters),
            "filter_query": filter_query(request.GET, FIELDS),
            "live": live,
            # Newer than this is news: live rows on the unfiltered first page, a banner elsewhere.
            "after": max([head, *(row["event"].id for row in rows)]),
            "page_size": PAGE_SIZE,
            "verification": verification_status(user=request.user),
            "stream_labels": {
                "source": dict(AuditEvent.Source.choices),
                "outcome": dict(AuditEvent.Outcome.choices),
                "badges": OUTCOME_BADGES,
                "new_events": _("new events — reload to see them"),
            },
        }
        return render(request, self.template_name, context, status=200 if valid else 400)


class AuditExportView(ConsoleViewMixin, View):
    """GET /audit/export/?format=csv|jsonl&<filters>: the filtered log as a download."""

    permission_action = roles.VIEW_DATA

    def get(self, request):
        form = AuditFilterForm(request.GET)
        fmt = request.GET.get("format") or "csv"
        query = filter_query(request.GET, FIELDS)
        back = reverse("audit-events") + (f"?{query}" if query else "")
        if fmt not in FORMATS:
            messages.error(request, _("Unknown export format %(format)s.") % {"format": fmt})
            return redirect(back)
        if not form.is_valid():
            messages.error(request, _("Fix the filters before exporting."))
            return redirect(back)
        return events_export(user=request.user, filters=form.active_filters(), fmt=fmt, asynchronous=is_asgi(request))

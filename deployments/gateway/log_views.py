"""The Inference log page: every call through the gateway, newest first, filtered and paginated. Who may open it and
which records they see is console.permissions' (require_inference_log, restrict_inference_log); prompts and
completions show to view_data holders only, and their reading a page of them is audited."""

from __future__ import annotations

import json

from django.core.paginator import Paginator
from django.shortcuts import render
from django.views import View

import audit
from audit.filters import filters_as_strings
from console.forms import filter_query
from console.mixins import ConsoleViewMixin
from console.permissions import require_inference_log
from deployments.gateway.log_forms import FIELDS, InferenceLogFilterForm
from deployments.gateway.models import InferenceRecord
from deployments.gateway.selectors import blank_text, inference_record_list, record_text_visible

PAGE_SIZE = 50
VIEWED = "inference_log.viewed"


def record_row(record: InferenceRecord, *, visible: bool) -> dict:
    """What one row of the list shows."""
    record = blank_text(record, visible=visible)
    status = record.status
    badge = "text-bg-success" if status < 400 else "text-bg-warning" if status < 500 else "text-bg-danger"
    prompt = record.prompt
    if prompt and not isinstance(prompt, str):
        prompt = json.dumps(prompt, ensure_ascii=False, indent=2)
    return {
        "record": record,
        "time": record.started_at.strftime("%Y-%m-%d %H:%M:%S"),
        "iso_time": record.started_at.isoformat(),
        "badge": badge,
        "prompt": prompt or "",
    }


class InferenceLogView(ConsoleViewMixin, View):
    template_name = "gateway/inference_log.html"

    def authorize(self, request, kwargs) -> None:
        require_inference_log(request.user)

    def get(self, request):
        form = InferenceLogFilterForm(request.GET)
        valid = form.is_valid()
        filters = form.active_filters() if valid else {}
        visible = record_text_visible(request.user)
        records = inference_record_list(user=request.user, filters=filters) if valid else InferenceRecord.objects.none()
        page = Paginator(records, PAGE_SIZE).get_page(request.GET.get("page"))
        if valid and visible and page.number == 1:
            # Reading what callers sent is reading data: recorded like the audit log's own first page.
            audit.record(action=VIEWED, actor=request.user, detail={"filters": filters_as_strings(filters)})
        context = {
            "form": form,
            "page_obj": page,
            "rows": [record_row(record, visible=visible) for record in page.object_list],
            "filtered": bool(filters),
            "filter_query": filter_query(request.GET, FIELDS),
            "text_visible": visible,
        }
        return render(request, self.template_name, context, status=200 if valid else 400)

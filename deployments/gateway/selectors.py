"""Reads of the inference log. Each starts from the permission filter (console.permissions.restrict_inference_log):
view_data holders read every record with its prompt and completion (where kept); those who may deploy a
deployment read its records without them."""

from __future__ import annotations

from django.db.models import QuerySet

from console.permissions import inference_text_visible, restrict_inference_log
from deployments.gateway.log_forms import STATUS_CLASSES
from deployments.gateway.models import InferenceRecord

TEXT_FIELDS = ("prompt", "completion")


def record_text_visible(user) -> bool:
    """Whether the user sees the prompts and completions the log kept (view_data)."""
    return inference_text_visible(user)


def inference_record_list(*, user, filters: dict | None = None) -> QuerySet[InferenceRecord]:
    """The records the user may read, newest first, narrowed by InferenceLogFilterForm's cleaned filters. Without
    view_data the text fields are not even read from the database (blanked by blank_text)."""
    records = restrict_inference_log(InferenceRecord.objects.all(), user)
    if not record_text_visible(user):
        records = records.defer(*TEXT_FIELDS)
    filters = filters or {}
    if filters.get("deployment"):
        records = records.filter(deployment_name=filters["deployment"])
    if filters.get("key_prefix"):
        records = records.filter(key_prefix__startswith=filters["key_prefix"])
    if filters.get("request_id"):
        records = records.filter(request_id=filters["request_id"])
    status = filters.get("status")
    if status in STATUS_CLASSES:
        low, high = STATUS_CLASSES[status]
        records = records.filter(status__gte=low, status__lte=high)
    elif status:
        records = records.filter(status=int(status))
    if filters.get("since"):
        records = records.filter(started_at__gte=filters["since"])
    if filters.get("until"):
        records = records.filter(started_at__lte=filters["until"])
    return records.order_by("-id")


def blank_text(record: InferenceRecord, *, visible: bool) -> InferenceRecord:
    """The record as the viewer may see it: prompt and completion left out unless `visible` (never read deferred
    fields: that would load them)."""
    if not visible:
        record.prompt, record.completion = None, ""
    return record

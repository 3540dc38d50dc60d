"""Dataset pages: the list (and adding one), a dataset's versions with schema, counts and problems by line, the
chunked upload of a new version (dataset_upload.js over the API), deleting, and the row preview for view_data
holders (audited). No page but the preview shows a row."""

from __future__ import annotations

import json

from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views import View

from console import roles
from console.errors import ApplicationError
from console.forms import apply_error
from console.mixins import ConsoleViewMixin
from console.permissions import (
    ObjectHidden,
    dataset_allows,
    dataset_manager_teams,
    require_dataset,
    require_dataset_manager,
)
from deployments.datasets import selectors, services
from deployments.datasets.forms import DatasetForm
from deployments.datasets.models import Dataset
from deployments.datasets.validation import describe


def visible_dataset(user, pk, action: str = roles.VIEW) -> Dataset:
    """The dataset if the user may see it and hold `action` on it (403 otherwise); hidden: an audited 404."""
    found = Dataset.objects.select_related("team", "created_by").filter(pk=pk).first()
    if found is None:
        raise Http404
    if not dataset_allows(user, roles.VIEW, found):
        raise ObjectHidden(user, action, found)
    require_dataset(user, action, found)
    return found


class DatasetListView(ConsoleViewMixin, View):
    """The datasets the user can see; a form to add one for those who may."""

    template_name = "datasets/list.html"

    def render_page(self, request, form, status=200):
        teams = dataset_manager_teams(request.user)
        context = {
            "datasets": selectors.dataset_list(user=request.user),
            "form": form if teams is None or teams else None,
        }
        return render(request, self.template_name, context, status=status)

    def get(self, request):
        return self.render_page(request, DatasetForm(user=request.user))

    def post(self, request):
        require_dataset_manager(request.user)
        form = DatasetForm(request.POST, user=request.user)
        if form.is_valid():
            data = form.cleaned_data
            try:
                dataset = services.dataset_create(
                    actor=request.user, name=data["name"], team=data["team"], description=data["description"]
                )
            except ApplicationError as error:
                apply_error(form, error)
            else:
                messages.success(request, _("Dataset added. Upload its first version."))
                return redirect("dataset-detail", pk=dataset.pk)
        return self.render_page(request, form, status=400)


class DatasetDetailView(ConsoleViewMixin, View):
    """Versions with sha256, size, format, shape, rows, columns and problems by line; upload; delete."""

    def get(self, request, pk):
        dataset = visible_dataset(request.user, pk)
        versions = list(selectors.version_list(dataset=dataset))
        for version in versions:
            version.problems = [describe(problem) for problem in version.validation_errors]
        context = {
            "dataset": dataset,
            "versions": versions,
            "can_manage": dataset_allows(request.user, roles.MANAGE_DATASETS, dataset),
            "can_view_data": dataset_allows(request.user, roles.VIEW_DATA, dataset),
            "can_use": dataset_allows(request.user, roles.FINETUNE, dataset),
            "upload_api": reverse("api:dataset-upload-list"),
        }
        return render(request, "datasets/detail.html", context)


class DatasetDeleteView(ConsoleViewMixin, View):
    def post(self, request, pk):
        dataset = visible_dataset(request.user, pk, roles.MANAGE_DATASETS)
        try:
            services.dataset_delete(actor=request.user, dataset=dataset)
        except ApplicationError as error:
            messages.error(request, error.message)
            return redirect("dataset-detail", pk=dataset.pk)
        messages.success(request, _("Dataset deleted."))
        return redirect("datasets")


class DatasetPreviewView(ConsoleViewMixin, View):
    """The first rows of a version, for view_data holders; each preview is an audit event."""

    def get(self, request, pk, version):
        dataset = visible_dataset(request.user, pk, roles.VIEW_DATA)
        found = selectors.version_get(dataset=dataset, number=version)
        if found is None:
            raise Http404
        rows = services.version_preview(actor=request.user, version=found, limit=20)
        columns = list(dict.fromkeys(key for row in rows for key in row))
        table = [[_cell(row.get(column, "")) for column in columns] for row in rows]
        context = {"dataset": dataset, "version": found, "columns": columns, "table": table}
        return render(request, "datasets/preview.html", context)


def _cell(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, indent=1)

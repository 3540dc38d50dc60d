"""Dataset pages: the list (and adding one), a dataset's versions with schema, counts, problems by line and
statistics (computed by a job with a chosen model's tokenizer), the chunked upload of a new version
(dataset_upload.js over the API), deleting, and the row preview for view_data holders (audited). No page but the
preview shows a row."""

from __future__ import annotations

import json

from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.dateparse import parse_datetime
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
from deployments.datasets import selectors, services, stats
from deployments.datasets.forms import DatasetForm, HubImportForm
from deployments.datasets.hub_import import hub_import_cancel, hub_import_start, hub_imports_active
from deployments.datasets.models import Dataset
from deployments.datasets.validation import describe
from deployments.models import Job
from deployments.registry.models import ModelArtifact


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

    import_form = None  # a refused Hub import's form, with its errors (DatasetHubImportView)

    def get(self, request, pk):
        dataset = visible_dataset(request.user, pk)
        versions = list(selectors.version_list(dataset=dataset))
        for version in versions:
            version.problems = [describe(problem) for problem in version.validation_errors]
            version.stats_shown = stats.stats_view(version)
            version.histogram = histogram_bars(version.stats_shown.get("token_lengths"))
            version.stats_time = parse_datetime(version.stats_shown.get("computed_at") or "")
        can_manage = dataset_allows(request.user, roles.MANAGE_DATASETS, dataset)
        can_use = dataset_allows(request.user, roles.FINETUNE, dataset)
        context = {
            "dataset": dataset,
            "versions": versions,
            "can_manage": can_manage,
            "can_view_data": dataset_allows(request.user, roles.VIEW_DATA, dataset),
            "can_use": can_use,
            "tokenizers": stats.tokenizer_models(user=request.user) if can_use or can_manage else None,
            "upload_api": reverse("api:dataset-upload-list"),
        }
        context.update(hub_import_context(request.user, dataset, form=self.import_form))
        return render(request, "datasets/detail.html", context)


def histogram_bars(lengths: dict | None) -> list[dict]:
    """The token-length histogram as bars: each bin's range of lengths, its rows and its height (the tallest 100)."""
    if not lengths:
        return []
    edges, counts = lengths.get("bins") or [], lengths.get("counts") or []
    tallest = max(counts, default=0) or 1
    return [
        {"low": low, "high": high - 1, "rows": rows, "height": round(100 * rows / tallest, 1)}
        for low, high, rows in zip(edges, edges[1:], counts, strict=False)
    ]


def _chosen_model(choice: str) -> ModelArtifact:
    known = choice.isdigit() and len(choice) <= 18  # past that it is no id (and overflows the column)
    found = ModelArtifact.objects.select_related("repo", "host").filter(pk=choice).first() if known else None
    if found is None:
        raise ApplicationError(_("No such model."), field="tokenizer")
    return found


class DatasetStatsView(ConsoleViewMixin, View):
    """Compute (or recompute) a version's statistics with a chosen model's tokenizer: a job on that model's host."""

    def post(self, request, pk, version):
        dataset = visible_dataset(request.user, pk)
        stats.require_stats_use(request.user, dataset)
        found = selectors.version_get(dataset=dataset, number=version)
        if found is None:
            raise Http404
        choice = request.POST.get("tokenizer", "").strip()
        try:
            tokenizer = _chosen_model(choice) if choice else None
            job = stats.stats_start(actor=request.user, version=found, tokenizer=tokenizer)
        except ApplicationError as error:
            messages.error(request, error.message)
        else:
            messages.success(
                request,
                _("Computing the statistics of version %(n)s: job %(job)s.") % {"n": found.version, "job": job.pk},
            )
        return redirect(reverse("dataset-detail", args=[dataset.pk]) + f"#version-{found.version}")


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


# -- importing from the Hub (deployments.datasets.hub_import) ------------------------------------------------------


def hub_import_context(user, dataset: Dataset, *, form: HubImportForm | None = None) -> dict:
    """The Hub import form and the imports in progress, for those who may manage the dataset."""
    if not dataset_allows(user, roles.MANAGE_DATASETS, dataset):
        return {}
    return {
        "import_form": form or HubImportForm(user=user),
        "hub_imports": list(hub_imports_active(dataset=dataset)),
    }


class DatasetHubImportView(ConsoleViewMixin, View):
    """Start an import of one file of a Hub dataset repo (a refusal shows the dataset page again, the error on its
    field: 400), or, with `cancel=<job>`, stop one of this dataset's imports (nothing is registered)."""

    def post(self, request, pk):
        dataset = visible_dataset(request.user, pk, roles.MANAGE_DATASETS)
        if "cancel" in request.POST:
            return self.cancel(request, dataset, request.POST["cancel"])
        form = HubImportForm(request.POST, user=request.user)
        if form.is_valid():
            data = form.cleaned_data
            try:
                job = hub_import_start(
                    actor=request.user,
                    dataset=dataset,
                    source=data["source"],
                    repo_id=data["repo_id"],
                    revision=data["revision"],
                    path=data["path"],
                    credential=data["credential"],
                )
            except ApplicationError as error:
                apply_error(form, error)
            else:
                messages.success(
                    request,
                    _("Importing %(path)s from %(repo)s: job %(job)s.")
                    % {"path": data["path"], "repo": data["repo_id"], "job": job.pk},
                )
                return redirect("dataset-detail", pk=dataset.pk)
        page = DatasetDetailView(import_form=form)
        page.setup(request, pk=pk)
        response = page.get(request, pk)
        response.status_code = 400
        return response

    @staticmethod
    def cancel(request, dataset: Dataset, choice: str):
        known = choice.isdigit() and len(choice) <= 18  # past that it is no id (and overflows the column)
        job = Job.objects.filter(pk=int(choice)).first() if known else None
        try:
            if job is None:
                raise ApplicationError(_("No such import."), field="job")
            hub_import_cancel(actor=request.user, dataset=dataset, job=job)
        except ApplicationError as error:
            messages.error(request, error.message)
        else:
            messages.success(request, _("The import stops within seconds; nothing is registered."))
        return redirect("dataset-detail", pk=dataset.pk)

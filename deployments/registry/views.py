"""Model registry pages: the copies of models on hosts, adding and importing them, each one's download
(live progress and log through the job stream), deletion and garbage collection, sources and the
endpoint allow-list. Reading needs `view`; changes need `add_model` (sources: `manage_inventory`)."""

from __future__ import annotations

import json
from urllib.parse import urlencode

from django.contrib import messages
from django.db.models import Count, Q, Sum
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views import View
from django.views.generic import ListView

from console import roles
from console.errors import ApplicationError
from console.forms import apply_error
from console.mixins import ConsoleViewMixin
from console.permissions import can, require
from deployments.models import AllowedEndpoint, Job, ModelArtifact, ModelSource
from deployments.registry import services as registry
from deployments.registry.forms import (
    EndpointForm,
    ModelAddForm,
    ModelCancelForm,
    ModelFilterForm,
    ModelImportForm,
    SourceForm,
    add_error,
)

ARTIFACTS = ModelArtifact.objects.select_related("repo__source", "host")


def percent(done: int | None, total: int | None) -> int | None:
    return min(100, int(100 * (done or 0) / total)) if total else None


def duration(seconds) -> str:
    """Seconds as "1 h 05 min", "4 min 10 s" or "12 s" (job.js formats the same way)."""
    if seconds in (None, ""):
        return ""
    seconds = max(0, int(float(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"


class ModelListView(ConsoleViewMixin, ListView):
    """One row per copy of a model on a host; search by repo id, filter by host and status."""

    permission_action = roles.VIEW
    queryset = ARTIFACTS
    template_name = "registry/list.html"
    paginate_by = 25

    def get_queryset(self):
        artifacts = super().get_queryset().order_by("-created_at", "-pk")
        self.filters = ModelFilterForm(self.request.GET or None)
        data = self.filters.cleaned_data if self.filters.is_valid() else {}
        if data.get("q"):
            artifacts = artifacts.filter(repo__repo_id__icontains=data["q"].strip())
        if data.get("host"):
            artifacts = artifacts.filter(host=data["host"])
        if data.get("status"):
            artifacts = artifacts.filter(status=data["status"])
        else:
            artifacts = artifacts.exclude(status=ModelArtifact.Status.DELETED)
        return artifacts

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        for artifact in context["object_list"]:
            artifact.percent = percent(artifact.bytes_done, artifact.bytes_total)
        query = {k: v for k, v in self.request.GET.items() if k in ModelFilterForm.base_fields and v}
        context.update(
            filters=self.filters,
            filter_query=urlencode(query),
            filtered=bool(query),
            can_add=can(self.request.user, roles.ADD_MODEL),
        )
        return context


class _FormView(ConsoleViewMixin, View):
    permission_action = roles.ADD_MODEL
    template_name = "registry/form.html"
    title = ""
    form_id = ""

    def render_form(self, request, form, status=200, **extra):
        return render(
            request,
            self.template_name,
            {"form": form, "title": self.title, "form_id": self.form_id, **extra},
            status=status,
        )


class ModelAddView(_FormView):
    """Add a model to a host: the revision is pinned to a commit, a copy the host has is reused."""

    title = gettext_lazy("Add a model")
    form_id = "model-add-form"

    def get(self, request):
        return self.render_form(request, ModelAddForm(user=request.user, initial=request.GET.dict() or None))

    def post(self, request):
        form = ModelAddForm(request.POST, user=request.user)
        if form.is_valid():
            data = form.cleaned_data
            try:
                artifact = registry.model_add(
                    actor=request.user,
                    source=data["source"],
                    repo_id=data["repo_id"],
                    revision=data["revision"],
                    host=data["host"],
                    credential=data["credential"],
                    include=data["include"],
                )
            except ApplicationError as error:
                apply_error(form, add_error(error))
            else:
                if artifact.status == ModelArtifact.Status.READY:
                    messages.info(
                        request,
                        _("%(host)s already has this model at that commit; nothing to download.")
                        % {"host": artifact.host.name},
                    )
                else:
                    messages.success(
                        request,
                        _("Download of %(repo)s queued on %(host)s.")
                        % {"repo": artifact.repo.repo_id, "host": artifact.host.name},
                    )
                return redirect("model-detail", pk=artifact.pk)
        return self.render_form(request, form, status=400)


class ModelImportView(_FormView):
    """Register a directory already on a host; its agent checks and hashes the files."""

    title = gettext_lazy("Import a directory")
    form_id = "model-import-form"

    def get(self, request):
        return self.render_form(request, ModelImportForm(roots=registry.import_roots()))

    def post(self, request):
        form = ModelImportForm(request.POST, roots=registry.import_roots())
        existing = None
        if form.is_valid():
            data = form.cleaned_data
            try:
                artifact = registry.model_import(
                    actor=request.user, host=data["host"], directory=data["directory"], repo_id=data["name"]
                )
            except registry.AlreadyImported as error:
                apply_error(form, error)
                existing = error.artifact
            except ApplicationError as error:
                apply_error(form, error)
            else:
                messages.success(
                    request,
                    _("Import of %(directory)s queued on %(host)s.")
                    % {"directory": artifact.path, "host": artifact.host.name},
                )
                return redirect("model-detail", pk=artifact.pk)
        return self.render_form(request, form, status=400, existing=existing)


def artifact_files(artifact: ModelArtifact) -> list[dict]:
    """What the copy holds: its manifest once ready (the hashes it was verified against), else what the
    repo lists at that commit."""
    listed = artifact.manifest.get("files") if isinstance(artifact.manifest, dict) else None
    files = listed if artifact.status == ModelArtifact.Status.READY and listed else artifact.repo.files or []
    hashes = artifact.files_sha256 or {}
    return [
        {"path": f.get("path", ""), "size": f.get("size"), "sha256": f.get("sha256") or hashes.get(f.get("path"))}
        for f in files
        if isinstance(f, dict)
    ]


class ModelDetailView(ConsoleViewMixin, View):
    """One copy: what it is, its files and manifest, who uses it, and its latest job, live."""

    permission_action = roles.VIEW
    queryset = ARTIFACTS
    template_name = "registry/detail.html"

    def get(self, request, pk):
        artifact = self.visible_object(pk)
        jobs = list(registry.artifact_jobs(artifact)[:10])
        job = jobs[0] if jobs else None
        progress = job.progress if job and isinstance(job.progress, dict) else {}
        repo = artifact.repo
        sizing = reverse("sizing") + "?" + urlencode({"source": repo.repo_id, "revision": repo.commit or "main"})
        return render(
            request,
            self.template_name,
            {
                "artifact": artifact,
                "repo": repo,
                "jobs": jobs,
                "job": job,
                "job_active": bool(job and job.is_active),
                "download_active": bool(job and job.is_active and job.kind == Job.Kind.DOWNLOAD),
                "failed": job if job and job.status == Job.Status.FAILED else None,
                "progress": progress,
                "progress_percent": percent(progress.get("done"), progress.get("total")),
                "progress_eta": duration(progress.get("eta_s")) if job and job.is_active else "",
                "files": artifact_files(artifact),
                "manifest": json.dumps(artifact.manifest, indent=2, sort_keys=True) if artifact.manifest else "",
                "uses": list(artifact.uses.order_by("holder")),
                "sizing_url": sizing,
                "can_add": can(request.user, roles.ADD_MODEL),
                "can_copy": can(request.user, roles.MANAGE_INVENTORY),  # "Copy to host…" (registry/copy_views.py)
                "cancel_form": ModelCancelForm(),
            },
        )


class ModelCancelView(ConsoleViewMixin, View):
    """Stop the download; the partial files stay for a resume unless the user asks to delete them."""

    permission_action = roles.ADD_MODEL
    queryset = ARTIFACTS

    def post(self, request, pk):
        artifact = self.visible_object(pk)
        form = ModelCancelForm(request.POST)
        delete_partial = form.cleaned_data["delete_partial"] if form.is_valid() else False
        try:
            registry.model_cancel(actor=request.user, artifact=artifact, delete_partial=delete_partial)
        except ApplicationError as error:
            messages.error(request, error.message)
        else:
            messages.success(request, _("Cancel requested; the download stops within seconds."))
        return redirect("model-detail", pk=artifact.pk)


class ModelDeleteView(ConsoleViewMixin, View):
    """Delete the host's copy (a job on that host removes the files); refused while something uses it."""

    permission_action = roles.ADD_MODEL
    queryset = ARTIFACTS

    def post(self, request, pk):
        artifact = self.visible_object(pk)
        try:
            registry.artifact_delete(actor=request.user, artifact=artifact)
        except ApplicationError as error:
            messages.error(request, error.message)
        else:
            messages.success(request, _("Deletion queued on %(host)s.") % {"host": artifact.host.name})
        return redirect("model-detail", pk=artifact.pk)


class ModelGcView(ConsoleViewMixin, View):
    """The ready copies nothing uses, and (add_model) deleting them all at once."""

    permission_action = roles.VIEW
    template_name = "registry/gc.html"

    def get(self, request):
        candidates = (
            registry.gc_candidates(actor=request.user)
            .select_related("repo__source", "host")
            .order_by("host__name", "pk")
        )
        total = candidates.aggregate(total=Sum("bytes_total"))["total"] or 0
        return render(
            request,
            self.template_name,
            {"candidates": candidates, "total": total, "can_add": can(request.user, roles.ADD_MODEL)},
        )

    def post(self, request):
        require(request.user, roles.ADD_MODEL)
        try:
            jobs = registry.artifacts_gc(actor=request.user)
        except ApplicationError as error:
            messages.error(request, error.message)
        else:
            messages.success(request, _("%(count)s deletion(s) queued.") % {"count": len(jobs)})
        return redirect("models-gc")


class SourcesView(ConsoleViewMixin, View):
    """Where models come from (the Hub, mirrors) and the hosts and networks sources may reach."""

    permission_action = roles.VIEW
    template_name = "registry/sources.html"

    def page(self, request, *, source_form=None, endpoint_form=None, status=200):
        manage = can(request.user, roles.MANAGE_INVENTORY)
        return render(
            request,
            self.template_name,
            {
                "sources": ModelSource.objects.annotate(
                    copies=Count("repos__artifacts", filter=~Q(repos__artifacts__status=ModelArtifact.Status.DELETED))
                ).order_by("name"),
                "endpoints": AllowedEndpoint.objects.order_by("pattern"),
                "can_manage": manage,
                "source_form": source_form or (SourceForm() if manage else None),
                "endpoint_form": endpoint_form or (EndpointForm() if manage else None),
            },
            status=status,
        )

    def get(self, request):
        return self.page(request)

    def post(self, request):
        require(request.user, roles.MANAGE_INVENTORY)
        form = SourceForm(request.POST)
        if form.is_valid():
            try:
                source = registry.source_create(
                    actor=request.user,
                    kind=form.cleaned_data["kind"] or ModelSource.Kind.MIRROR,
                    name=form.cleaned_data["name"],
                    endpoint=form.cleaned_data["endpoint"],
                    token=form.cleaned_data["token"] or None,
                )
            except ApplicationError as error:
                apply_error(form, error)
            else:
                messages.success(request, _("Source %(name)s added.") % {"name": source.name})
                return redirect("model-sources")
        return self.page(request, source_form=form, status=400)


class EndpointAllowView(SourcesView):
    """Add a host name or network to the allow-list (admins)."""

    def get(self, request):
        return redirect("model-sources")

    def post(self, request):
        require(request.user, roles.MANAGE_INVENTORY)
        form = EndpointForm(request.POST)
        if form.is_valid():
            try:
                endpoint = registry.endpoint_allow(
                    actor=request.user, pattern=form.cleaned_data["pattern"], note=form.cleaned_data["note"]
                )
            except ApplicationError as error:
                apply_error(form, error)
            else:
                messages.success(request, _("%(pattern)s is allowed.") % {"pattern": endpoint.pattern})
                return redirect("model-sources")
        return self.page(request, endpoint_form=form, status=400)


class EndpointRemoveView(ConsoleViewMixin, View):
    """Take a host name or network off the allow-list (admins)."""

    permission_action = roles.MANAGE_INVENTORY
    queryset = AllowedEndpoint.objects.all()

    def post(self, request, pk):
        endpoint = self.visible_object(pk)
        registry.endpoint_remove(actor=request.user, endpoint=endpoint)
        messages.success(request, _("%(pattern)s removed from the allow-list.") % {"pattern": endpoint.pattern})
        return redirect("model-sources")

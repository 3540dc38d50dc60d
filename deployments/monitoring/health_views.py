"""The health check's pages: the runs with their history, one run's report (live while it runs), its Markdown and
PDF exports, and the admin actions (run now, resume the sweep, restore a corrupt copy)."""

from __future__ import annotations

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.views import View

from console import roles
from console.errors import ApplicationError
from console.mixins import ConsoleViewMixin
from console.permissions import can
from deployments.models import Job, ModelArtifact
from deployments.monitoring import health_export, health_services
from deployments.monitoring.healthcheck import SECTION_TITLES
from deployments.monitoring.models import HealthCheckRun

PAGE_SIZE = 20


class HealthListView(ConsoleViewMixin, View):
    permission_action = roles.VIEW

    def get(self, request):
        page = Paginator(health_services.latest_runs(), PAGE_SIZE).get_page(request.GET.get("page"))
        context = {
            "page_obj": page,
            "runs": page.object_list,
            "can_run": can(request.user, roles.MANAGE_INVENTORY),
            "corrupt": ModelArtifact.objects.filter(status=ModelArtifact.Status.CORRUPT).count(),
        }
        return render(request, "monitoring/health_list.html", context)


class HealthRunNowView(ConsoleViewMixin, View):
    permission_action = roles.MANAGE_INVENTORY

    def post(self, request):
        run = health_services.health_check_start(actor=request.user)
        messages.success(request, _("The health check is running."))
        return redirect("health-check-detail", pk=run.pk)


def _sweep_state(run: HealthCheckRun) -> dict:
    """What the sweep has done so far (for the live view)."""
    progress = run.progress or {}
    sweep = progress.get("sweep") or {}
    jobs = list(Job.objects.filter(pk__in=progress.get("jobs", [])).order_by("pk"))
    return {
        "jobs": jobs,
        "artifacts_done": sum(1 for state in sweep.values() if state.get("finished")),
        "artifacts_seen": len(sweep),
        "files_done": sum(len(state.get("files", {})) for state in sweep.values()),
        "bytes_done": sum(item.get("size", 0) for state in sweep.values() for item in state.get("files", {}).values()),
        "resumable": run.state != HealthCheckRun.State.QUEUED
        and bool(progress.get("jobs"))
        and not any(job.is_active for job in jobs)
        and any(not state.get("finished") for state in sweep.values()),
    }


class HealthDetailView(ConsoleViewMixin, View):
    permission_action = roles.VIEW

    def get(self, request, pk):
        run = get_object_or_404(health_services.latest_runs(), pk=pk)
        sections = (run.report or {}).get("sections", {})
        corrupt = ModelArtifact.objects.filter(status=ModelArtifact.Status.CORRUPT).select_related("repo", "host")
        context = {
            "run": run,
            "live": run.state in health_services.ACTIVE,
            "sections": [(name, title, sections[name]) for name, title in SECTION_TITLES.items() if name in sections],
            "sweep": _sweep_state(run),
            "corrupt": [(artifact, health_services.can_redownload(artifact)) for artifact in corrupt],
            "can_run": can(request.user, roles.MANAGE_INVENTORY),
            "can_restore": can(request.user, roles.ADD_MODEL),
        }
        return render(request, "monitoring/health_detail.html", context)


class HealthResumeView(ConsoleViewMixin, View):
    permission_action = roles.MANAGE_INVENTORY

    def post(self, request, pk):
        run = get_object_or_404(HealthCheckRun, pk=pk)
        try:
            health_services.health_check_resume(actor=request.user, run=run)
            messages.success(request, _("The sweep goes on where it stopped."))
        except ApplicationError as error:
            messages.error(request, error.message)
        return redirect("health-check-detail", pk=run.pk)


class ArtifactRestoreView(ConsoleViewMixin, View):
    permission_action = roles.ADD_MODEL

    def post(self, request, pk):
        artifact = get_object_or_404(ModelArtifact.objects.select_related("repo__source", "host"), pk=pk)
        try:
            job = health_services.artifact_restore(actor=request.user, artifact=artifact)
        except ApplicationError as error:
            messages.error(request, error.message)
            back = request.POST.get("next", "")
            # Only a path of this console (an absolute URL elsewhere would make this an open redirect).
            safe = url_has_allowed_host_and_scheme(back, {request.get_host()}, request.is_secure())
            return redirect(back if safe else "health-checks")
        messages.success(
            request, _("Restoring %(model)s on %(host)s.") % {"model": artifact.repo, "host": artifact.host}
        )
        return redirect("job-detail", pk=job.pk)


class HealthReportMarkdownView(ConsoleViewMixin, View):
    permission_action = roles.VIEW

    def get(self, request, pk):
        run = get_object_or_404(health_services.latest_runs(), pk=pk)
        response = HttpResponse(health_export.report_markdown(run), content_type="text/markdown; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="health-check-{run.pk}.md"'
        return response


class HealthReportPdfView(ConsoleViewMixin, View):
    permission_action = roles.VIEW

    def get(self, request, pk):
        run = get_object_or_404(health_services.latest_runs(), pk=pk)
        response = HttpResponse(health_export.report_pdf(run), content_type="application/pdf")
        response["Content-Disposition"] = f'attachment; filename="health-check-{run.pk}.pdf"'
        return response

"""Jobs pages: every job the user may see (the API's rule: console.permissions.restrict on `view`, through
ConsoleViewMixin) with filters and search, and one job's facts and live log. The log follows the rule on the
job's target (deployments.jobs.selectors.can_read_job_log, as the API and the websocket) and streams through
the existing job viewer (static console/job.js on /ws/jobs/<id>/; a fine-tune's curves in console/job_curves.js)."""

from __future__ import annotations

from urllib.parse import urlencode

from django.db.models import CharField, Q, QuerySet
from django.db.models.functions import Cast
from django.shortcuts import render
from django.template.defaultfilters import filesizeformat
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views import View
from django.views.generic import ListView

from console import roles
from console.mixins import ConsoleViewMixin
from console.permissions import restrict
from deployments.jobs.forms import TARGET_TYPES, JobFilterForm
from deployments.jobs.selectors import can_read_job_log, log_view
from deployments.models import Deployment, Job, ModelArtifact
from deployments.registry.views import duration, percent

JOBS = Job.objects.select_related("actor")
DEPLOYMENT, ARTIFACT = "deployments.deployment", "deployments.modelartifact"
MAX_ID_DIGITS = 18  # a longer number is no job id (and would overflow the column)


def job_duration(job: Job) -> str:
    """How long it ran (so far, while it runs); empty before it starts."""
    if not job.started_at:
        return ""
    end = job.finished_at or (timezone.now() if job.is_active else None)
    return duration((end - job.started_at).total_seconds()) if end else ""


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def job_progress(job: Job) -> dict:
    """The last progress a job reported, as a percentage and a line of text: "done / total" sizes for downloads
    and imports, "step X of Y" for training (with `steps` set and the time left while the job runs)."""
    data = job.progress if isinstance(job.progress, dict) else {}
    total = data.get("total")
    if not _number(total) or total <= 0:
        return {}
    if _number(data.get("step")):
        step = max(0, int(data["step"]))
        eta = data.get("eta_seconds")
        return {
            "percent": percent(step, total),
            "text": _("step %(step)s of %(total)s") % {"step": step, "total": int(total)},
            "steps": True,
            "eta": duration(eta) if job.is_active and _number(eta) else "",
        }
    done = data.get("done") if _number(data.get("done")) else 0
    return {"percent": percent(done, total), "text": f"{filesizeformat(done)} / {filesizeformat(total)}"}


def targets(jobs: list[Job], user) -> dict[tuple[str, str], dict]:
    """The label and page of each job's target the user may view, in one query per kind of target."""
    ids: dict[str, set[str]] = {}
    for job in jobs:
        if job.target_type:
            ids.setdefault(job.target_type, set()).add(job.target_id)
    found: dict[tuple[str, str], dict] = {}
    numeric = {kind: [int(pk) for pk in pks if pk.isdigit()] for kind, pks in ids.items()}
    if numeric.get(DEPLOYMENT):
        for deployment in restrict(Deployment.objects.filter(pk__in=numeric[DEPLOYMENT]), user, roles.VIEW):
            found[(DEPLOYMENT, str(deployment.pk))] = {
                "label": deployment.name,
                "url": reverse("deployment-detail", args=[deployment.pk]),
            }
    if numeric.get(ARTIFACT):
        artifacts = ModelArtifact.objects.filter(pk__in=numeric[ARTIFACT]).select_related("repo", "host")
        for artifact in restrict(artifacts, user, roles.VIEW):
            found[(ARTIFACT, str(artifact.pk))] = {
                "label": _("%(repo)s on %(host)s") % {"repo": artifact.repo.repo_id, "host": artifact.host.name},
                "url": reverse("model-detail", args=[artifact.pk]),
            }
    return found


def describe(job: Job, found: dict[tuple[str, str], dict]) -> Job:
    """Attach what the pages show of a job: its target, progress and duration."""
    kind = TARGET_TYPES.get(job.target_type, job.target_type)
    job.target = found.get((job.target_type, job.target_id)) or (
        {"label": f"{kind} #{job.target_id}", "url": ""} if job.target_type else None
    )
    job.target_kind = kind
    job.progress_shown = job_progress(job)
    job.duration = job_duration(job)
    return job


def search(jobs: QuerySet, query: str, user) -> QuerySet:
    """A job id, who started it, its failure cause, its queue, or its target's name (deployment or model)."""
    match = Q(actor__username__icontains=query) | Q(failure_cause__icontains=query) | Q(queue__icontains=query)
    number = query.lstrip("#")
    if number.isdigit() and len(number) <= MAX_ID_DIGITS:
        match |= Q(pk=int(number))
    deployments = restrict(Deployment.objects.filter(name__icontains=query), user, roles.VIEW)
    artifacts = restrict(ModelArtifact.objects.filter(repo__repo_id__icontains=query), user, roles.VIEW)
    for label, objects in ((DEPLOYMENT, deployments), (ARTIFACT, artifacts)):
        match |= Q(target_type=label, target_id__in=objects.annotate(key=Cast("pk", CharField())).values("key"))
    return jobs.filter(match)


class JobListView(ConsoleViewMixin, ListView):
    """Every job the user may see, newest first; filter by kind, state, target and who started it; search."""

    permission_action = roles.VIEW
    queryset = JOBS
    template_name = "jobs/list.html"
    paginate_by = 25

    def get_queryset(self):
        jobs = super().get_queryset().order_by("-pk")
        self.filters = JobFilterForm(self.request.GET or None)
        data = self.filters.cleaned_data if self.filters.is_valid() else {}
        if data.get("q", "").strip():
            jobs = search(jobs, data["q"].strip(), self.request.user)
        for name in ("kind", "status", "target_type"):
            if data.get(name):
                jobs = jobs.filter(**{name: data[name]})
        if data.get("actor"):
            jobs = jobs.filter(actor=data["actor"])
        return jobs

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        jobs = list(context["object_list"])
        found = targets(jobs, self.request.user)
        query = {k: v for k, v in self.request.GET.items() if k in JobFilterForm.base_fields and v}
        context.update(
            jobs=[describe(job, found) for job in jobs],
            filters=self.filters,
            filter_query=urlencode(query),
            filtered=bool(query),
        )
        return context


class JobDetailView(ConsoleViewMixin, View):
    """One job: what it works on, who started it, when, how far it got, how it ended, and its log, live."""

    permission_action = roles.VIEW
    queryset = JOBS
    template_name = "jobs/detail.html"

    def get(self, request, pk):
        job = self.visible_object(pk)
        job = describe(job, targets([job], request.user))
        can_read_log = can_read_job_log(request.user, job)
        # The failure's evidence lines follow the log's rule (as the API's serializer): the sentence alone
        # for a reader who may not read the log, request content masked without view_data.
        detail = job.failure_detail
        if "\n" in detail:
            detail = log_view(job, user=request.user).text(detail) if can_read_log else detail.split("\n", 1)[0]
        progress = job.progress if isinstance(job.progress, dict) else {}
        shown = job.progress_shown
        eta = shown["eta"] if shown.get("steps") else duration(progress.get("eta_s")) if job.is_active else ""
        return render(
            request,
            self.template_name,
            {
                "job": job,
                "job_active": job.is_active,
                "can_read_log": can_read_log,
                "failure_detail": detail,
                "progress": progress if job.progress_shown else {},
                "progress_eta": eta,
                "api_url": reverse("api:job-detail", args=[job.pk]),
            },
        )

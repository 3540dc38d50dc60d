"""Fine-tune pages: the runs, the form with its memory estimate (the planner's verdict against the base model's
host), cancel and resume, and an adapter's merge and deploy actions. A run's own page is the job page (curves,
checkpoints, log, result and lineage)."""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views import View

from console import roles
from console.errors import ApplicationError
from console.forms import apply_error
from console.mixins import ConsoleViewMixin
from console.permissions import ObjectHidden, can, dataset_allows, may_deploy_anywhere, require
from deployments.finetune import adapters, selectors, services
from deployments.finetune.forms import FinetuneForm
from deployments.models import Dataset, Deployment, Job, ModelArtifact


def finetune_job(user, pk) -> Job:
    """A fine-tune the user may see (its dataset visible to them); hidden: an audited 404."""
    job = Job.objects.filter(pk=pk, kind=Job.Kind.FINETUNE).first()
    if job is None:
        raise Http404
    dataset = Dataset.objects.filter(pk=job.target_id).first()
    if dataset is None or not dataset_allows(user, roles.VIEW, dataset):
        raise ObjectHidden(user, roles.FINETUNE, job)
    return job


class FinetuneListView(ConsoleViewMixin, View):
    """The runs, for those who start them (engineers, admins); auditors read runs as jobs and through the API."""

    permission_action = roles.FINETUNE

    def get(self, request):
        context = {
            "jobs": selectors.finetune_list(user=request.user)[:200],
            "can_start": can(request.user, roles.FINETUNE),
        }
        return render(request, "finetune/list.html", context)


class FinetuneCreateView(ConsoleViewMixin, View):
    """GET: the form. POST with `estimate`: the form again with the memory estimate. POST: start the run."""

    permission_action = roles.FINETUNE

    def render_form(self, request, form, *, verdict=None, status=200):
        context = {"form": form, "verdict": verdict.as_dict(_) if verdict is not None else None}
        context["no_estimate"] = verdict is None and form.is_bound and form.is_valid()
        return render(request, "finetune/form.html", context, status=status)

    def get(self, request):
        initial = {}
        if request.GET.get("dataset_version", "").isdigit():
            initial["dataset_version"] = int(request.GET["dataset_version"])
        return self.render_form(request, FinetuneForm(user=request.user, initial=initial))

    def post(self, request):
        form = FinetuneForm(request.POST, user=request.user)
        if not form.is_valid():
            return self.render_form(request, form, status=400)
        data = form.cleaned_data
        try:
            options = services.check_options(form.options())
            if "estimate" in request.POST:
                verdict = services.finetune_estimate(base=data["base"], options=options, gpu_count=data["gpu_count"])
                return self.render_form(request, form, verdict=verdict)
            job = services.finetune_start(
                actor=request.user,
                base=data["base"],
                version=data["dataset_version"],
                options=form.options(),
                gpu_count=data["gpu_count"],
            )
        except ApplicationError as error:
            apply_error(form, error)
            return self.render_form(request, form, status=400)
        messages.success(request, _("Fine-tune started."))
        return redirect("job-detail", pk=job.pk)


class FinetuneActionView(ConsoleViewMixin, View):
    """Stop or resume a run from its page; the service decides whether the run's state allows it."""

    permission_action = roles.FINETUNE
    service = staticmethod(services.finetune_cancel)
    done = ""

    def post(self, request, pk):
        job = finetune_job(request.user, pk)
        try:
            self.service(actor=request.user, job=job)
        except ApplicationError as error:
            messages.error(request, error.message)
        else:
            messages.success(request, self.done)
        return redirect("job-detail", pk=job.pk)


class FinetuneCancelView(FinetuneActionView):
    service = staticmethod(services.finetune_cancel)
    done = gettext_lazy("Stopping: the run saves a checkpoint at its next step, then stops.")


class FinetuneResumeView(FinetuneActionView):
    service = staticmethod(services.finetune_resume)
    done = gettext_lazy("Resuming from the newest checkpoint.")


def _adapter(user, pk) -> ModelArtifact:
    artifact = get_object_or_404(ModelArtifact.objects.select_related("repo", "host", "base"), pk=pk)
    require(user, roles.VIEW, artifact)
    return artifact


class AdapterMergeView(ConsoleViewMixin, View):
    permission_action = roles.FINETUNE

    def post(self, request, pk):
        adapter = _adapter(request.user, pk)
        try:
            job = services.merge_start(
                actor=request.user, adapter=adapter, precision=request.POST.get("precision") or "auto"
            )
        except ApplicationError as error:
            messages.error(request, error.message)
            return redirect("model-detail", pk=adapter.pk)
        messages.success(request, _("Merging the adapter into its base model."))
        return redirect("job-detail", pk=job.pk)


class AdapterDeployView(ConsoleViewMixin, View):
    """Deploy on the base model (a new deployment) or add to a deployment of the same base."""

    def post(self, request, pk):
        adapter = _adapter(request.user, pk)
        if not may_deploy_anywhere(request.user):
            require(request.user, roles.DEPLOY)
        target = request.POST.get("deployment") or ""
        try:
            deployment = None
            if target.isdigit():
                deployment = Deployment.objects.filter(pk=int(target)).first()
                if deployment is None:
                    raise ApplicationError(_("Choose a deployment."), field="deployment")
            result = adapters.adapter_deploy(
                actor=request.user,
                adapter=adapter,
                deployment=deployment,
                name=request.POST.get("name", "").strip(),
                team=adapters.team_named(request.POST.get("team")),
            )
        except ApplicationError as error:
            messages.error(request, error.message)
            return redirect("model-detail", pk=adapter.pk)
        messages.success(request, _("The adapter is deployed on %(name)s.") % {"name": result.name})
        return redirect("deployment-detail", pk=result.pk)

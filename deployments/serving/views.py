"""Deployment pages: the list, deploying a model (live planner verdict, then a review step), a deployment's
state, actions, versions and live logs, editing (a new spec version), the playground and the image allow-list.
Reading needs `view`; changes need `deploy` (on the deployment where there is one); the playground needs
`use_deployment` on the deployment. The rules live in deployments.services."""

from __future__ import annotations

import json
import shlex
from urllib.parse import urlencode

from django.contrib import messages
from django.core.exceptions import FieldDoesNotExist, PermissionDenied
from django.db.models import Q
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views import View
from django.views.generic import ListView

from audit.recorder import diff
from console import roles
from console.accounts.models import Credential
from console.errors import INVALID_JSON, ApplicationError
from console.forms import apply_error
from console.mixins import ConsoleViewMixin
from console.permissions import can, require_create_deployment
from deployments.jobs.selectors import can_read_job_log
from deployments.models import AllowedImage, ApprovalRequest, Deployment, DeploymentSpec, Job, ModelArtifact
from deployments.serving import approvals, playground
from deployments.serving import images as image_service
from deployments.serving import services as lifecycle
from deployments.serving.actions import ACTION_NAMES, allowed_actions
from deployments.serving.environment import deployment_configure
from deployments.serving.form_backends import reads
from deployments.serving.forms import (
    DeploymentCreateForm,
    DeploymentEditForm,
    DeploymentFilterForm,
    ImageForm,
    RollbackForm,
    SpecForm,
)
from deployments.serving.planning import Verdict, verdict
from deployments.serving.specs import clean_spec, command_preview, spec_values

State = Deployment.State
DEPLOYMENTS = Deployment.objects.select_related("spec__artifact__repo", "spec__artifact__host", "host", "team", "job")
# Badge colour per state (the page's poller uses the same table).
STATE_CSS = {
    State.PENDING: "text-bg-secondary",
    State.PLACING: "text-bg-info",
    State.DOWNLOADING: "text-bg-primary",
    State.STARTING: "text-bg-info",
    State.RUNNING: "text-bg-success",
    State.STOPPING: "text-bg-warning",
    State.STOPPED: "text-bg-light border",
    State.FAILED: "text-bg-danger",
}


# The job badge's look, as templates/registry/_job_status.html draws it (the page's script updates it live).
JOB_STATUS_CSS = {
    Job.Status.SUCCEEDED: "text-bg-success",
    Job.Status.RUNNING: "text-bg-primary",
    Job.Status.FAILED: "text-bg-danger",
    Job.Status.CANCELLED: "text-bg-warning",
}


def job_state_table() -> dict[str, dict[str, str]]:
    return {
        value: {"label": str(label), "css": JOB_STATUS_CSS.get(value, "text-bg-secondary")}
        for value, label in Job.Status.choices
    }


def state_table() -> dict[str, dict[str, str]]:
    return {value: {"label": str(label), "css": STATE_CSS[value]} for value, label in State.choices}


def badge(deployment: Deployment) -> Deployment:
    deployment.state_css = STATE_CSS.get(deployment.state, "text-bg-secondary")
    return deployment


def plan_for(spec: DeploymentSpec, deployment: Deployment) -> tuple[Verdict | None, list[str], str]:
    """The planner's verdict and the command a launch of this spec runs, or the reason they cannot be made."""
    try:
        values = clean_spec(spec_values(spec))
        plan = verdict(values, holder=deployment.holder)
        return plan, command_preview(values, plan, name=deployment.name), ""
    except ApplicationError as error:
        return None, [], error.message


# -- list ----------------------------------------------------------------------------------------------------------
class DeploymentListView(ConsoleViewMixin, ListView):
    """One row per deployment the user may see; search by name or model, filter by state."""

    permission_action = roles.VIEW
    queryset = DEPLOYMENTS
    template_name = "serving/list.html"
    paginate_by = 25

    def get_queryset(self):
        deployments = super().get_queryset().order_by("name")
        self.filters = DeploymentFilterForm(self.request.GET or None)
        data = self.filters.cleaned_data if self.filters.is_valid() else {}
        if data.get("q"):
            query = data["q"].strip()
            deployments = deployments.filter(
                Q(name__icontains=query) | Q(spec__artifact__repo__repo_id__icontains=query)
            )
        if data.get("state"):
            deployments = deployments.filter(state=data["state"])
        return deployments

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        for deployment in context["object_list"]:
            badge(deployment)
        query = {k: v for k, v in self.request.GET.items() if k in DeploymentFilterForm.base_fields and v}
        context.update(
            filters=self.filters,
            filter_query=urlencode(query),
            filtered=bool(query),
            can_deploy=can(self.request.user, roles.DEPLOY),
        )
        return context


# -- deploy form, review, edit -------------------------------------------------------------------------------------
class _SpecFormView(ConsoleViewMixin, View):
    permission_action = roles.DEPLOY
    template_name = "serving/form.html"

    def render_form(self, request, form: SpecForm, *, status=200, **extra):
        return render(
            request,
            self.template_name,
            {
                "form": form,
                "gpu_rows": form.gpu_rows(),
                "artifact_hosts": form.artifact_hosts(),
                "plan_url": reverse("api:deployment-plan"),
                "invalid_json": INVALID_JSON,  # the planner's own JSON check says it as the server does
                **extra,
            },
            status=status,
        )


class DeploymentCreateView(_SpecFormView):
    """Deploy a model: the form (with the planner's live verdict), then a review of the verdict and the exact
    command, then `Deploy` creates version 1 and launches it."""

    def authorize(self, request, kwargs) -> None:
        require_create_deployment(request.user)  # the deploy role, or a team's host grant

    def get(self, request):
        initial = {"artifact": request.GET.get("artifact")} if request.GET.get("artifact") else None
        return self.render_form(request, DeploymentCreateForm(user=request.user, initial=initial))

    def post(self, request):
        form = DeploymentCreateForm(request.POST, user=request.user)
        if not form.is_valid():
            return self.render_form(request, form, status=400)
        data, spec = form.cleaned_data, form.to_spec()
        if "confirm" in request.POST:
            try:
                deployment = lifecycle.deployment_create(
                    actor=request.user,
                    name=data["name"],
                    spec=spec,
                    team=data["team"],
                    restart_policy=data["restart_policy"],
                    launch=True,
                    environment=data["environment"] or Deployment.Environment.DEVELOPMENT,
                    prompt_retention=data["prompt_retention"] or Deployment.PromptRetention.NONE,
                )
            except ApplicationError as error:
                apply_error(form, error)
                return self.render_form(request, form, status=400)
            except PermissionDenied:  # placed on a host the team's grants do not cover (nothing was saved)
                form.add_error(None, _("Your team may not deploy on the host this spec was placed on."))
                return self.render_form(request, form, status=403)
            waiting = deployment.approval_requests.filter(state=ApprovalRequest.State.PENDING).first()
            if waiting is not None:  # production: its launch waits for another admin
                messages.info(request, approvals.requested_message(waiting))
                return redirect("deployment-detail", pk=deployment.pk)
            messages.success(
                request,
                _("%(name)s is launching on %(host)s.") % {"name": deployment.name, "host": deployment.host or "—"},
            )
            return redirect("deployment-detail", pk=deployment.pk)
        try:  # the review: what deployment_create will check, without saving anything
            values = clean_spec(spec)
            plan = verdict(values)
            if plan.fits is False:
                raise ApplicationError(plan.reason, field="artifact")
            command = command_preview(values, plan, name=data["name"])
        except ApplicationError as error:
            apply_error(form, error)
            return self.render_form(request, form, status=400)
        return self.render_form(request, form, review={"verdict": plan, "command": shlex.join(command)})


class DeploymentEditView(_SpecFormView):
    """Edit: the same form, prefilled; saving makes the next spec version (a running server needs a restart)."""

    queryset = DEPLOYMENTS

    def get(self, request, pk):
        deployment = self.visible_object(pk)
        initial = {
            **SpecForm.initial_from(deployment.spec),
            "environment": deployment.environment,
            "prompt_retention": deployment.prompt_retention,
        }
        form = DeploymentEditForm(user=request.user, initial=initial)
        return self.render_form(request, form, deployment=deployment)

    def post(self, request, pk):
        deployment = self.visible_object(pk)
        form = DeploymentEditForm(request.POST, user=request.user)
        if form.is_valid():
            try:
                self.save(request, deployment, form)
            except ApplicationError as error:
                apply_error(form, error)
            else:
                return redirect("deployment-detail", pk=deployment.pk)
        return self.render_form(request, form, status=400, deployment=deployment)

    def save(self, request, deployment: Deployment, form: DeploymentEditForm) -> None:
        """The spec (a new version, or a request for one on production), then the environment and retention."""
        data, spec = form.cleaned_data, form.to_spec()
        environment = data["environment"] or deployment.environment  # left out: unchanged
        retention = data["prompt_retention"] or deployment.prompt_retention
        settings_changed = (environment, retention) != (deployment.environment, deployment.prompt_retention)
        if not settings_changed or _spec_changes(deployment, spec):  # nothing at all: spec_update says so
            result = lifecycle.spec_update(actor=request.user, deployment=deployment, spec=spec, note=data["note"])
            if isinstance(result, ApprovalRequest):
                messages.info(request, approvals.requested_message(result))
            else:
                messages.success(request, _("Version %(version)s saved.") % {"version": result.version})
                if deployment.state in Deployment.State.holding():
                    messages.info(
                        request,
                        _("The server still runs the previous version: restart it to apply version %(version)s.")
                        % {"version": result.version},
                    )
        if settings_changed:
            result = deployment_configure(
                actor=request.user, deployment=deployment, environment=environment, prompt_retention=retention
            )
            if isinstance(result, ApprovalRequest):
                messages.info(request, approvals.requested_message(result))
            else:
                messages.success(request, _("Environment and prompt retention saved."))


def _spec_changes(deployment: Deployment, spec: dict) -> dict:
    """What an edit with these values would change in the current spec (the diff spec_update would record)."""
    current = spec_values(deployment.spec)
    return diff(current, approvals.plain_spec(clean_spec({**current, **spec})))


# -- detail --------------------------------------------------------------------------------------------------------
def _shown(name: str, value) -> str:
    """A spec value as people read it (ids of models and tokens as their names)."""
    if value in (None, "", [], {}):
        return "—"
    if name == "artifact":
        artifact = ModelArtifact.objects.select_related("repo", "host").filter(pk=value).first()
        return (
            f"{artifact.repo.repo_id}@{(artifact.repo.commit or '')[:10]} ({artifact.host.name})"
            if artifact
            else f"#{value}"
        )
    if name == "credential":
        return Credential.objects.filter(pk=value).values_list("name", flat=True).first() or f"#{value}"
    if name == "backend":  # "vLLM (vllm)": the name people know and the value the API takes
        label = dict(DeploymentSpec.Backend.choices).get(value)
        return f"{label} ({value})" if label and str(label) != value else str(value)
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _label(name: str) -> str:
    return str(DeploymentSpec._meta.get_field(name).verbose_name)


def spec_rows(spec: DeploymentSpec) -> list[dict]:
    """The spec's fields as people read them: those its backend reads (another backend's are only defaults)."""
    return [
        {"field": name, "label": _label(name), "value": _shown(name, value)}
        for name, value in spec_values(spec).items()
        if reads(spec.backend, name)
    ]


def _read_by(backend: str, name: str, value) -> str:
    """A value in a diff, as "—" where that side's backend does not read the field (a switch of backend)."""
    return _shown(name, value) if reads(backend, name) else "—"


def change_rows(diff: dict, *, backend: str) -> list[dict]:
    """A spec diff as people read it: each changed field, before and after. `backend` is the spec's on both sides
    unless the diff switches it; a field the backend of one side does not read shows "—" on that side (TGI's
    CUDA memory fraction, 0.9 before and its default after a switch to vLLM, reads 0.9 → —)."""
    switched = diff.get("backend")
    before, after = switched if isinstance(switched, list | tuple) and len(switched) == 2 else (backend, backend)
    rows = []
    for name, pair in diff.items():
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            continue
        try:
            label = _label(name)
        except FieldDoesNotExist:  # not a spec field (an approval's environment)
            label = name
        row = {
            "field": name,
            "label": label,
            "before": _read_by(before or after, name, pair[0]),
            "after": _read_by(after, name, pair[1]),
        }
        # Empty to empty (None to "" in version 1's diff against nothing) is no change to a reader.
        if row["before"] != row["after"]:
            rows.append(row)
    return rows


def version_rows(deployment: Deployment) -> list[dict]:
    rows = []
    for spec in deployment.specs.select_related("created_by").order_by("-version"):
        switched = (spec.diff or {}).get("backend")  # [None, "tgi"] in version 1: a first choice, not a switch
        switched = list(switched) if isinstance(switched, list | tuple) and len(switched) == 2 else []
        rows.append(
            {
                "spec": spec,
                "changes": change_rows(spec.diff or {}, backend=spec.backend),
                "current": spec.pk == deployment.spec_id,
                "switch": switched if switched and all(switched) else None,
            }
        )
    return rows


class DeploymentDetailView(ConsoleViewMixin, View):
    """A deployment: its state (polled), placement, failure, actions, current spec, versions with their diffs,
    the exact command line, and the launch and server logs of its current job, live."""

    permission_action = roles.VIEW
    queryset = DEPLOYMENTS
    template_name = "serving/detail.html"

    def get(self, request, pk, *, status: int = 200, **extra):
        """`extra`: a card's form posted back with its errors (the Benchmarks card's schedule form), with a 400."""
        deployment = badge(self.visible_object(pk))
        spec, job = deployment.spec, deployment.job
        plan, preview, plan_error = plan_for(spec, deployment) if spec else (None, [], "")
        running_command = deployment.command if deployment.command and deployment.state in State.holding() else []
        running_spec = (job.params or {}).get("spec") if job else None
        can_deploy = can(request.user, roles.DEPLOY, deployment)
        allowed = allowed_actions(deployment)  # the page follows `actions` from the API as the state changes
        actions = [{"key": key, "shown": key in allowed} for key in ACTION_NAMES] if can_deploy else []
        return render(
            request,
            self.template_name,
            {
                "deployment": deployment,
                "spec": spec,
                "job": job,
                "spec_rows": spec_rows(spec) if spec else [],
                "versions": version_rows(deployment),
                "plan": plan,
                "plan_error": plan_error,
                "command": shlex.join(running_command or preview),
                "command_is_running": bool(running_command),
                "restart_to_apply": bool(
                    running_spec and spec and running_spec != spec.pk and deployment.state in State.holding()
                ),
                "can_deploy": can_deploy,
                "can_use": can(request.user, roles.USE_DEPLOYMENT, deployment),
                "can_read_log": bool(job) and can_read_job_log(request.user, job),
                "actions": {a["key"]: a for a in actions},
                "job_states": job_state_table(),
                "states": state_table(),
                "api_url": reverse("api:deployment-detail", args=[deployment.pk]),
                "pending_approvals": deployment.approval_requests.filter(
                    state=ApprovalRequest.State.PENDING, expires_at__gt=timezone.now()
                ).select_related("requested_by"),
                **extra,
            },
            status=status,
        )


# -- actions -------------------------------------------------------------------------------------------------------
class _ActionView(ConsoleViewMixin, View):
    """POST only: one lifecycle service on one deployment; its refusal becomes a message on the detail page."""

    permission_action = roles.DEPLOY
    queryset = DEPLOYMENTS
    gone = False  # the deployment no longer exists afterwards: back to the list

    def act(self, request, deployment: Deployment) -> str | ApprovalRequest:
        """What was done, in words; or the approval request the service filed instead."""
        raise NotImplementedError

    def post(self, request, pk):
        deployment = self.visible_object(pk)
        try:
            message = self.act(request, deployment)
        except ApplicationError as error:
            messages.error(request, error.message)
        else:
            if isinstance(message, ApprovalRequest):  # production: the change waits for another admin
                messages.info(request, approvals.requested_message(message))
                return redirect("deployment-detail", pk=deployment.pk)
            messages.success(request, message)
            if self.gone:
                return redirect("deployments")
        return redirect("deployment-detail", pk=deployment.pk)


class DeploymentLaunchView(_ActionView):
    def act(self, request, deployment):
        if isinstance(job := lifecycle.deployment_launch(actor=request.user, deployment=deployment), ApprovalRequest):
            return job
        deployment.refresh_from_db()
        return _("%(name)s is launching on %(host)s.") % {"name": deployment.name, "host": deployment.host}


class DeploymentStopView(_ActionView):
    def act(self, request, deployment):
        if isinstance(done := lifecycle.deployment_stop(actor=request.user, deployment=deployment), ApprovalRequest):
            return done
        return _("%(name)s is stopping; its GPUs are freed when the server has exited.") % {"name": deployment.name}


class DeploymentRestartView(_ActionView):
    def act(self, request, deployment):
        lifecycle.deployment_restart(actor=request.user, deployment=deployment)
        return _("%(name)s restarts with version %(version)s.") % {
            "name": deployment.name,
            "version": deployment.spec.version,
        }


class DeploymentDeleteView(_ActionView):
    gone = True

    def act(self, request, deployment):
        if waiting := lifecycle.deployment_delete(actor=request.user, deployment=deployment):
            return waiting
        return _("Deployment %(name)s deleted.") % {"name": deployment.name}


class DeploymentRollbackView(_ActionView):
    def act(self, request, deployment):
        form = RollbackForm(request.POST)
        if not form.is_valid():
            raise ApplicationError(_("Choose a version."), field="version")
        version = form.cleaned_data["version"]
        spec = lifecycle.deployment_rollback(actor=request.user, deployment=deployment, version=version)
        if isinstance(spec, ApprovalRequest):
            return spec
        message = _("Version %(new)s restores version %(old)s.") % {"new": spec.version, "old": version}
        if deployment.state in State.holding():
            message += " " + _("Restart to apply it.")
        return message


# -- playground ----------------------------------------------------------------------------------------------------
class PlaygroundView(ConsoleViewMixin, View):
    """Prompts to a running deployment, tokens streamed back over /ws/deployments/<id>/playground/."""

    permission_action = roles.USE_DEPLOYMENT
    queryset = DEPLOYMENTS
    template_name = "serving/playground.html"

    def get(self, request, pk):
        deployment = badge(self.visible_object(pk))
        spec = deployment.spec
        return render(
            request,
            self.template_name,
            {
                "deployment": deployment,
                "running": deployment.state == State.RUNNING and bool(deployment.endpoint),
                "max_new_tokens_limit": playground.MAX_NEW_TOKENS,
                "max_total_tokens": spec.max_total_tokens if spec else None,
            },
        )


# -- images --------------------------------------------------------------------------------------------------------
class ImageListView(ConsoleViewMixin, View):
    """The server images deployments may run: the list, adding one, removing one (deploy)."""

    permission_action = roles.DEPLOY
    template_name = "serving/images.html"

    def page(self, request, form=None, status=200):
        images = AllowedImage.objects.order_by("reference")
        used = set(Deployment.objects.exclude(spec__image="").values_list("spec__image", flat=True))
        return render(
            request,
            self.template_name,
            {
                "images": [{"image": image, "used": image.reference in used} for image in images],
                "form": form or ImageForm(),
            },
            status=status,
        )

    def get(self, request):
        return self.page(request)

    def post(self, request):
        form = ImageForm(request.POST)
        if form.is_valid():
            try:
                image = image_service.image_allow(actor=request.user, **form.cleaned_data)
            except ApplicationError as error:
                apply_error(form, error)
            else:
                messages.success(request, _("%(image)s is allowed.") % {"image": image.reference})
                return redirect("deployment-images")
        return self.page(request, form, status=400)


class ImageRemoveView(ConsoleViewMixin, View):
    """Take an image off the allow-list (deploy); specs naming it cannot launch until it is back."""

    permission_action = roles.DEPLOY

    def post(self, request, pk):
        image = AllowedImage.objects.filter(pk=pk).first()
        if image is None:
            messages.error(request, _("That image is no longer on the list."))
        else:
            image_service.image_remove(actor=request.user, image=image)
            messages.success(request, _("%(image)s removed from the allowed images.") % {"image": image.reference})
        return redirect("deployment-images")

"""The tuning loop, console side (issue 17, point 5): a finished run's suggestions (the pure engine in
suggestions.py fed with the run's steps, its spec, the planner and the host), applying one (a new spec version, or
an approval request on a production deployment) with a re-run of the same workload that waits for the deployment
to run the new version, and the beat task that starts or gives up those re-runs.

Rules, in words: a user can apply a suggestion when they hold deploy on the deployment (the spec changes) and
use_deployment on it (the re-run calls it with their own key, as any benchmark does), the benchmark is finished
and the deployment still runs the spec it measured (else the suggestion is stale: benchmark again)."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone, translation
from django.utils.translation import gettext as _

import audit
from console import roles
from console.errors import ApplicationError
from console.permissions import can, require
from deployments.benchmarks import services, texts
from deployments.benchmarks.models import BenchmarkRun, BenchmarkStep
from deployments.benchmarks.suggestions import Advice, HostView, PlannerView, Suggestion, advise, sizing_planner
from deployments.models import ApprovalRequest, Deployment, DeploymentSpec, Gpu, GpuReservation, ModelArtifact
from deployments.serving import services as lifecycle
from deployments.serving.actions import RESTART, allowed_actions
from deployments.serving.specs import _checkpoint as checkpoint_facts
from deployments.serving.specs import spec_values
from deployments.sizing import SizingError, load_model_metadata

log = logging.getLogger(__name__)

# The step columns the engine reads under other names (suggestions.StepFigures).
STEP_COLUMNS = {
    "queue_size": "queue_size_mean",
    "queue_size_max": "queue_size_max",
    "batch_size": "batch_size_mean",
    "batch_size_max": "batch_size_max",
    "batch_tokens": None,  # the mean; the engine reads the peak below
    "kv_cache_usage_max": "kv_cache_usage_max",
    "server_queue_ms_mean": "queue_time_ms_mean",
    "server_prefill_ms_mean": "prefill_time_ms_mean",
}
CLIENT_COLUMNS = (
    "concurrency", "rate", "requests", "requests_failed", "errors", "ttft_ms_p50", "ttft_ms_p90", "ttft_ms_p99",
    "itl_ms_p50", "itl_ms_p99", "e2e_ms_p50", "e2e_ms_p99", "output_tokens_per_s", "total_tokens_per_s",
    "requests_per_s", "prompt_tokens_mean",
)  # fmt: skip
# A deployment stopped or failed this long (and not about to restart) is not coming back for the re-run: a
# restart passes through stopping and starting within a minute or two; five is a margin, not a wait.
DOWN_GRACE = timedelta(minutes=5)
ENDED_APPROVAL = {
    ApprovalRequest.State.REJECTED: "approval_rejected",
    ApprovalRequest.State.EXPIRED: "approval_expired",
    ApprovalRequest.State.FAILED: "approval_failed",
}


# --- advice ----------------------------------------------------------------------------------------------------


def step_figures(step: BenchmarkStep, workload: dict[str, Any]) -> dict[str, Any]:
    """A stored step as the engine's StepFigures values (the workload gives the longest prompt and output)."""
    values: dict[str, Any] = {name: getattr(step, name) for name in CLIENT_COLUMNS}
    values.update({target: getattr(step, column) for column, target in STEP_COLUMNS.items() if target})
    # The server's batch-tokens peak is not a column of its own: the mean's peak is the best reading there is,
    # and it is what "the batch reached the KV cache's size" compares (TGI's batch tokens gauge).
    values["batch_tokens_max"] = (step.extra or {}).get("batch_tokens_max", step.batch_tokens)
    utilization = (step.extra or {}).get("gpu_utilization_max")
    values["gpu_utilization_max"] = utilization if isinstance(utilization, int | float) else None
    values["prompt_tokens_max"] = length_max(workload.get("prompt_tokens"))
    values["output_tokens_max"] = length_max(workload.get("output_tokens"))
    return values


def length_max(value: Any) -> int | None:
    """The longest length a workload's prompt_tokens or output_tokens gives: a number, a distribution's max."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, dict):
        return None
    if isinstance(value.get("percentiles"), dict):
        points = value["percentiles"]
        numbers = [v for v in points.values() if isinstance(v, int | float) and not isinstance(v, bool)]
        return int(max(numbers)) if numbers else None
    histogram = value.get("histogram", value)
    bins = histogram.get("bins") if isinstance(histogram, dict) else None
    if isinstance(bins, list) and bins and all(isinstance(b, int | float) for b in bins):
        return int(max(bins)) - 1
    return None


def run_advice(run: BenchmarkRun) -> Advice:
    """The suggestions for a run, from its steps, the spec it ran at, the planner and the host; the notes say why
    none shows, which change was refused, or what could not be planned (and a stale or unfinished run)."""
    if run.spec is None:
        return Advice(notes=[_("The spec this benchmark ran at is no longer known: benchmark again.")])
    workload = run.workload if isinstance(run.workload, dict) else {}
    steps = [step_figures(step, workload) for step in run.steps.order_by("index")]
    values = spec_values(run.spec)
    notes: list[str] = []
    planner = _planner(run.deployment, run.spec, values, notes)
    artifact = run.spec.artifact
    advice = advise(steps, values, planner, checkpoint=checkpoint_facts(artifact), host=_host_view(run, artifact))
    if run.state in (BenchmarkRun.State.FAILED, BenchmarkRun.State.CANCELLED):
        notes.append(
            _("This benchmark is %(state)s: the figures are those of the steps it finished.")
            % {"state": run.get_state_display()}
        )
    stale = _stale(run)
    if stale:
        notes.append(stale)
    advice.notes = notes + advice.notes
    return advice


def _planner(deployment: Deployment, spec: DeploymentSpec, values: dict[str, Any], notes: list[str]):
    """The sizing planner for the server's GPUs (free: their memory less what other servers reserve). On the CPU
    nothing is planned (every change fits); a model whose size is unknown fits nothing (no memory change is
    proposed unchecked)."""
    if spec.device == DeploymentSpec.Device.CPU:
        notes.append(_("The deployment runs on the CPU: no GPU memory is planned for the changes."))
        return lambda _values: PlannerView(fits=True)
    try:
        if spec.artifact.status != ModelArtifact.Status.READY:
            raise SizingError("the model's files are not here", "artifact")
        metadata = load_model_metadata(spec.artifact.path)
    except SizingError as error:
        return _refusing(notes, _("the model could not be sized (%(reason)s)") % {"reason": error.text(_)})
    gpus = _server_gpus(deployment)
    if not gpus:
        return _refusing(notes, _("the inventory knows none of the GPUs the deployment runs on"))
    others = GpuReservation.objects.filter(gpu__in=gpus).exclude(holder=deployment.holder)
    taken = max((sum(r.memory_bytes for r in others if r.gpu_id == gpu.pk) for gpu in gpus), default=0)
    total = min(gpu.memory_total for gpu in gpus)
    return sizing_planner(metadata, gpu_memory_bytes=total, gpu_free_bytes=max(0, total - taken))


def _refusing(notes: list[str], reason: str):
    notes.append(_("No change can be checked against the GPU memory: %(reason)s.") % {"reason": reason})
    return lambda _values: PlannerView(fits=False, reason=reason)


def _server_gpus(deployment: Deployment) -> list[Gpu]:
    if deployment.host_id is None or not deployment.gpu_indexes:
        return []
    return list(Gpu.objects.filter(host_id=deployment.host_id, index__in=deployment.gpu_indexes))


def _host_view(run: BenchmarkRun, artifact: ModelArtifact) -> HostView:
    """Free GPUs beside the server's (NVLink peers of its GPUs where the inventory records groups) and the
    model's attention heads, which a shard count must divide."""
    deployment = run.deployment
    config = checkpoint_facts(artifact).get("config") or {}
    heads, kv_heads = config.get("num_attention_heads"), config.get("num_key_value_heads")
    mine = _server_gpus(deployment)
    if not mine:
        return HostView(num_heads=heads, num_kv_heads=kv_heads)
    groups = {gpu.nvlink_group for gpu in mine if gpu.nvlink_group}
    free = (
        Gpu.objects.filter(host_id=deployment.host_id, health__in=[Gpu.Health.OK, Gpu.Health.UNKNOWN])
        .exclude(index__in=deployment.gpu_indexes)
        .filter(reservations__isnull=True)
    )
    if groups:
        free = free.filter(nvlink_group__in=groups)
    return HostView(
        free_peer_gpus=free.count(),
        num_heads=heads if isinstance(heads, int) else None,
        num_kv_heads=kv_heads if isinstance(kv_heads, int) else None,
    )


def _stale(run: BenchmarkRun) -> str:
    """Why the run's suggestions can no longer be applied, in words ("" when they can)."""
    deployment = run.deployment
    if run.is_active:
        return _("The benchmark has not finished: apply a suggestion once it has.")
    if run.spec_id is None or deployment.spec_id != run.spec_id:
        return _(
            "The deployment has changed since this benchmark (version %(then)s, now %(now)s): benchmark it again "
            "before applying a suggestion."
        ) % {
            "then": run.spec.version if run.spec_id else "?",
            "now": deployment.spec.version if deployment.spec_id else "?",
        }
    return ""


def can_apply(user, run: BenchmarkRun) -> bool:
    """Whether the page offers Apply (the service decides again): deploy and use on the deployment, a finished
    run of the deployment's current spec."""
    deployment = run.deployment
    return can(user, roles.DEPLOY, deployment) and can(user, roles.USE_DEPLOYMENT, deployment) and not _stale(run)


# --- applying one ----------------------------------------------------------------------------------------------


@transaction.atomic
def suggestion_apply(*, actor, run: BenchmarkRun, rule: str) -> BenchmarkRun:
    """Apply the suggestion `rule` of a finished run: a new spec version (the running server restarts with it) or,
    on a production deployment, an approval request; and a re-run of the same workload that starts when the
    deployment runs the new version. Audited as benchmark.suggestion_applied; returns the re-run."""
    require(actor, roles.DEPLOY, run.deployment)
    require(actor, roles.USE_DEPLOYMENT, run.deployment)
    # The deployment's row first: two applies at once, the second finds the version moved on (stale) or the
    # approval already asked for.
    Deployment.objects.select_for_update().get(pk=run.deployment_id)
    run = BenchmarkRun.objects.select_related("deployment", "spec").get(pk=run.pk)
    stale = _stale(run)
    if stale:
        raise ApplicationError(stale, field="rule")
    with translation.override("en"):  # stored and audited in English; texts.py shows them in the reader's language
        suggestion = suggestion_of(run, rule)
    if suggestion is None:
        raise ApplicationError(
            _("%(rule)s is not among this benchmark's suggestions (any more).") % {"rule": str(rule)[:60]},
            field="rule",
        )
    deployment = run.deployment
    note = f"benchmark #{run.pk}: {suggestion.title}"[:255]
    outcome = lifecycle.spec_update(actor=actor, deployment=deployment, spec=suggestion.change, note=note)
    rerun = BenchmarkRun(
        deployment=deployment,
        baseline=run,
        suggestion=suggestion.as_dict(),
        workload=run.workload,
        created_by=actor,
        note=texts.RERUN_AFTER % {"title": suggestion.title},
    )
    rerun.note = rerun.note[: services.NOTE_MAX]
    detail: dict[str, Any] = {"run": run.pk, "rule": rule, "change": suggestion.change}
    if isinstance(outcome, ApprovalRequest):
        rerun.approval = outcome
        detail["approval"] = outcome.pk
    else:
        rerun.after_version = outcome.version
        detail["version"] = outcome.version
        detail["restart"] = _restart(actor, deployment)
    rerun.save()
    detail["rerun"] = rerun.pk
    audit.record(action="benchmark.suggestion_applied", actor=actor, target=run, detail=detail)
    return rerun


def _restart(actor, deployment: Deployment) -> bool:
    """A running server takes the new version at once (as an approved edit does); a stopped one at its launch."""
    deployment.refresh_from_db()
    if RESTART not in allowed_actions(deployment):
        return False
    lifecycle.deployment_restart(actor=actor, deployment=deployment)
    return True


def suggestion_of(run: BenchmarkRun, rule: str) -> Suggestion | None:
    """The run's suggestion `rule`, as the engine computes it now."""
    return next((s for s in run_advice(run).suggestions if s.rule == rule), None)


# --- the re-runs ----------------------------------------------------------------------------------------------


def waiting_reruns():
    return BenchmarkRun.objects.filter(state=BenchmarkRun.State.PENDING, job__isnull=True, baseline__isnull=False)


def reruns_due() -> int:
    """Beat (and after a deployment comes up): start each waiting re-run whose deployment runs the new version,
    and give up those that cannot happen any more (approval rejected or lapsed, the deployment down, waited past
    BENCHMARK_RERUN_WAIT_SECONDS). Returns how many started."""
    started = 0
    for pk in waiting_reruns().values_list("pk", flat=True):
        try:
            with translation.override("en"):  # a given-up re-run's reason is stored in English (texts.py)
                started += _rerun_step(pk)
        except Exception:  # one run's trouble must not stop the others; the next beat tries again
            log.exception("benchmark re-run %s", pk)
    return started


@transaction.atomic
def _rerun_step(pk: int) -> int:
    run = (
        waiting_reruns()
        .select_for_update(of=("self",), skip_locked=True)
        .select_related("approval", "created_by")
        .filter(pk=pk)
        .first()
    )
    if run is None:
        return 0
    deployment = (
        Deployment.objects.select_for_update(of=("self",)).select_related("host", "spec").get(pk=run.deployment_id)
    )
    if run.after_version is None and run.approval_id is not None:
        why = _awaiting_approval(run)
        if why:
            return _give_up(run, *why)
        if run.after_version is None:
            return 0  # still pending
    if run.after_version is None:  # neither a version nor an approval to wait for: nothing will come
        return _give_up(run, "nothing_awaited", texts.NOTHING_AWAITED)
    since = run.approval.decided_at if run.approval_id and run.approval.decided_at else run.created_at
    version = deployment.spec.version if deployment.spec_id else 0
    if deployment.state == Deployment.State.RUNNING and deployment.host_id and version >= run.after_version:
        return _start_rerun(run, deployment)
    now = timezone.now()
    down = deployment.state in (Deployment.State.STOPPED, Deployment.State.FAILED) and not deployment.next_restart_at
    # Down since before the re-run began waiting: the grace counts from the wait's start (someone applying a
    # suggestion to a stopped deployment has a few minutes to launch it).
    if down and now - max(deployment.state_changed_at, since) > DOWN_GRACE:
        detail = texts.DEPLOYMENT_DOWN % {
            "name": deployment.name,
            "state": deployment.get_state_display(),
        }
        return _give_up(run, "deployment_down", detail)
    if now - since > timedelta(seconds=settings.BENCHMARK_RERUN_WAIT_SECONDS):
        detail = texts.RERUN_TIMEOUT % {
            "name": deployment.name,
            "version": run.after_version,
            "minutes": round(settings.BENCHMARK_RERUN_WAIT_SECONDS / 60),
        }
        return _give_up(run, "rerun_timeout", detail)
    return 0


def _awaiting_approval(run: BenchmarkRun) -> tuple[str, str] | None:
    """For a re-run behind an approval: learn the version once the edit is applied (sets after_version), or the
    cause and words to cancel it with when the request ended otherwise. None: keep waiting."""
    approval = run.approval
    if approval.state == ApprovalRequest.State.PENDING and approval.expires_at <= timezone.now():
        return ENDED_APPROVAL[ApprovalRequest.State.EXPIRED], texts.APPROVAL_LAPSED % {"id": approval.pk}
    if approval.state in ENDED_APPROVAL:
        words = {
            ApprovalRequest.State.REJECTED: texts.APPROVAL_REJECTED,
            ApprovalRequest.State.EXPIRED: texts.APPROVAL_UNANSWERED,
            ApprovalRequest.State.FAILED: texts.APPROVAL_FAILED,
        }[approval.state]
        comment = approval.comment if approval.state == ApprovalRequest.State.REJECTED else approval.result
        if approval.state == ApprovalRequest.State.EXPIRED:
            comment = ""
        return ENDED_APPROVAL[approval.state], words % {"id": approval.pk, "comment": comment}
    if approval.state == ApprovalRequest.State.APPLIED:
        marker = f"(approval #{approval.pk})"
        spec = DeploymentSpec.objects.filter(deployment_id=run.deployment_id, note__endswith=marker).first()
        version = spec.version if spec else (approval.base_version or 0) + 1
        run.after_version = version
        run.save(update_fields=["after_version"])
    return None


def _start_rerun(run: BenchmarkRun, deployment: Deployment) -> int:
    actor = run.created_by
    if actor is None or not actor.is_active or not can(actor, roles.USE_DEPLOYMENT, deployment):
        return _give_up(run, "not_allowed", texts.APPLIER_NOT_ALLOWED % {"name": deployment})
    try:
        services.start_job(
            run,
            actor=actor,
            deployment=deployment,
            detail={"rerun_of": run.baseline_id, "rule": run.suggestion.get("rule")},
        )
    except ApplicationError as error:
        return _give_up(run, "start_refused", error.message)
    return 1


def _give_up(run: BenchmarkRun, cause: str, detail: str) -> int:
    run.state, run.failure_cause, run.failure_detail = BenchmarkRun.State.CANCELLED, cause, detail
    run.finished_at = timezone.now()
    run.save(update_fields=["state", "failure_cause", "failure_detail", "finished_at"])
    audit.record(
        action="benchmark.rerun_cancelled",
        actor=None,
        actor_name="system",
        target=run,
        detail={"cause": cause, "detail": detail, "baseline": run.baseline_id, "approval": run.approval_id},
    )
    return 0

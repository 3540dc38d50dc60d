"""Benchmarks, console side: start one against a running deployment (the starter needs use_deployment on it; the
job calls through the gateway with an inference key of the starter's made for this run alone), record its steps
as the load generator reports them, cancel it, and close it (the key revoked, its value forgotten)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

import audit
from console import roles
from console.errors import ApplicationError
from console.fields import Secret
from console.permissions import require
from deployments.benchmarks.alerts import check_drop
from deployments.benchmarks.models import FLOAT_FIGURES, INT_FIGURES, SERVER_FIGURES, BenchmarkRun, BenchmarkStep
from deployments.benchmarks.workload import check_workload, estimated_seconds
from deployments.gateway import cache as gateway_cache
from deployments.gateway.keys import key_create
from deployments.jobs.services import job_cancel, job_create
from deployments.models import Deployment, Job

KEY_MARGIN_SECONDS = 3600  # queueing and warm-up beyond the sweep's own time
KEY_MAX_SECONDS = 86_400
NOTE_MAX = 500
STATE_OF_JOB = {
    Job.Status.SUCCEEDED: BenchmarkRun.State.SUCCEEDED,
    Job.Status.FAILED: BenchmarkRun.State.FAILED,
    Job.Status.CANCELLED: BenchmarkRun.State.CANCELLED,
}


def gateway_url() -> str:
    """Where the agent calls the gateway: GATEWAY_PUBLIC_URL, else the console's internal host on GATEWAY_PORT."""
    if settings.GATEWAY_PUBLIC_URL:
        return settings.GATEWAY_PUBLIC_URL.rstrip("/")
    parts = urlsplit(settings.CONSOLE_INTERNAL_URL)
    hostname = parts.hostname or "127.0.0.1"
    if ":" in hostname:
        hostname = f"[{hostname}]"
    return f"{parts.scheme or 'http'}://{hostname}:{settings.GATEWAY_PORT}"


def base_url(deployment: Deployment, dialect: str) -> str:
    """The load generator's root: the gateway for the OpenAI routes, /llm/<name> for TGI's native stream."""
    root = gateway_url()
    return f"{root}/llm/{deployment.name}" if dialect == "tgi-generate-stream" else root


def _key_lifetime(workload: dict[str, Any]) -> timedelta:
    seconds = estimated_seconds(workload)
    return timedelta(seconds=KEY_MAX_SECONDS if seconds is None else min(KEY_MAX_SECONDS, seconds + KEY_MARGIN_SECONDS))


@transaction.atomic
def benchmark_start(*, actor, deployment: Deployment, workload: Any, note: str = "") -> BenchmarkRun:
    """Check and start a benchmark of a running deployment; audited as benchmark.started."""
    require(actor, roles.USE_DEPLOYMENT, deployment)
    deployment = Deployment.objects.select_for_update(of=("self",)).select_related("host", "spec").get(pk=deployment.pk)
    if deployment.state != Deployment.State.RUNNING or deployment.host is None:
        raise ApplicationError(_("Only a running deployment can be benchmarked."), field="deployment")
    checked = check_workload(workload)
    note = (note or "").strip()
    if len(note) > NOTE_MAX:
        raise ApplicationError(_("The note is at most %(n)d characters.") % {"n": NOTE_MAX}, field="note")
    run = BenchmarkRun.objects.create(
        deployment=deployment, spec=deployment.spec, created_by=actor, workload=checked, note=note
    )
    start_job(run, actor=actor, deployment=deployment)
    return run


def start_job(run: BenchmarkRun, *, actor, deployment: Deployment, detail: dict[str, Any] | None = None) -> Job:
    """Give a run its key and its job (the caller holds the deployment's row lock and has checked that it runs and
    that `actor` may use it): a run started from the form and a tuning loop's re-run start alike. Audited as
    benchmark.started."""
    # The starter's own key (the path callers use), for this run only: short-lived, revoked when the job ends.
    key, raw = key_create(actor=actor, name=f"benchmark-{run.pk}", days=1, deployments=[deployment])
    key.expires_at = timezone.now() + _key_lifetime(run.workload)
    key.save(update_fields=["expires_at"])
    job = job_create(
        kind=Job.Kind.BENCHMARK,
        actor=actor,
        target=deployment,
        queue=deployment.host.queue,
        params={
            "benchmark_run_id": run.pk,
            "base_url": base_url(deployment, run.workload["dialect"]),
            "model": deployment.name,
        },
    )
    run.inference_key, run.api_key, run.job, run.spec = key, Secret(raw), job, deployment.spec
    run.save(update_fields=["inference_key", "api_key", "job", "spec"])
    audit.record(
        action="benchmark.started",
        actor=actor,
        target=run,
        detail={
            "deployment": deployment.name,
            "spec_version": deployment.spec.version if deployment.spec else None,
            "job": job.pk,
            "key_prefix": key.prefix,
            "workload": run.workload,
            **(detail or {}),
        },
    )
    return job


@transaction.atomic
def benchmark_cancel(*, actor, run: BenchmarkRun) -> BenchmarkRun:
    """Stop a benchmark: the generator abandons its requests in flight; the steps already finished stay."""
    require(actor, roles.USE_DEPLOYMENT, run.deployment)
    run = BenchmarkRun.objects.select_for_update().get(pk=run.pk)
    if not run.is_active or run.job is None:
        raise ApplicationError(
            _("This benchmark is %(state)s; nothing to cancel.") % {"state": run.get_state_display()}
        )
    job_cancel(actor=actor, job=run.job, action=roles.USE_DEPLOYMENT, target=run.deployment)
    audit.record(action="benchmark.cancelled", actor=actor, target=run, detail={"job": run.job_id})
    return run


def benchmark_running(run: BenchmarkRun) -> None:
    BenchmarkRun.objects.filter(pk=run.pk, state=BenchmarkRun.State.PENDING).update(
        state=BenchmarkRun.State.RUNNING, started_at=timezone.now()
    )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if value == value and abs(value) != float("inf") else None


def _count(value: Any) -> int:
    number = _number(value)
    return max(0, min(int(number), 2**31 - 1)) if number is not None else 0


def step_values(event: dict[str, Any]) -> dict[str, Any]:
    """A step event's figures as BenchmarkStep columns; the generator's other figures go to `extra`."""
    values: dict[str, Any] = {name: _number(event.get(name)) for name in FLOAT_FIGURES + SERVER_FIGURES}
    values.update({name: _count(event.get(name)) for name in INT_FIGURES})
    errors = event.get("errors") if isinstance(event.get("errors"), dict) else {}
    values["errors"] = {str(kind).replace("\x00", "")[:100]: _count(count) for kind, count in errors.items()}
    values["has_errors"] = (
        bool(event.get("has_errors")) or bool(values["requests_failed"]) or any(values["errors"].values())
    )
    concurrency, rate = _number(event.get("concurrency")), _number(event.get("rate"))
    values["concurrency"] = _count(concurrency) if concurrency is not None else None
    values["rate"] = rate
    values["label"] = str(event.get("label") or "").replace("\x00", "")[:100]
    known = {*values, "type", "time", "step"}
    values["extra"] = {
        key: value for key, value in event.items() if key not in known and _storable(key) and _storable(value)
    }
    return values


def _storable(value: Any) -> bool:
    """JSON that PostgreSQL stores: finite numbers, no NUL (the program's output is not trusted blindly)."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return "\\u0000" not in text and len(text) <= 10_000


def step_recorded(run: BenchmarkRun, event: dict[str, Any]) -> BenchmarkStep | None:
    """Store one finished step of the sweep (a `metric` event of the generator); recording it again (a retried
    worker re-reading output) replaces it. None for an event that is no step."""
    index = event.get("step")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 10_000:
        return None
    step, _created = BenchmarkStep.objects.update_or_create(run=run, index=index, defaults=step_values(event))
    return step


@transaction.atomic
def benchmark_finished(run: BenchmarkRun, *, status: str, cause: str = "", detail: str = "") -> BenchmarkRun:
    """Close a run after its job ended: its state, its key revoked and its value forgotten; audited."""
    run = (
        BenchmarkRun.objects.select_for_update(of=("self",))
        .select_related("inference_key", "deployment")
        .get(pk=run.pk)
    )
    run.state = STATE_OF_JOB.get(status, BenchmarkRun.State.FAILED)
    run.finished_at = timezone.now()
    run.failure_cause, run.failure_detail = (cause or "")[:60], detail or ""
    run.api_key = None
    run.save(update_fields=["state", "finished_at", "failure_cause", "failure_detail", "api_key"])
    agent = f"agent:{run.deployment.host.name}" if run.deployment.host_id else "system"
    key = run.inference_key
    if key is not None and key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
        audit.record(
            action="inference_key.revoked",
            actor=None,
            actor_name=agent,
            target=key,
            detail={"owner": key.owner_name, "prefix": key.prefix, "benchmark": run.pk},
        )
        transaction.on_commit(gateway_cache.invalidate_keys, robust=True)
    audit.record(
        action="benchmark.finished",
        actor=None,
        actor_name=agent,
        target=run,
        detail={"state": run.state, "cause": run.failure_cause, "steps": run.steps.count()},
    )
    check_drop(run)  # a scheduled run: its figures against the schedule's earlier runs
    return run

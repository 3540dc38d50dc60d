"""Celery tasks. Each is thin: load the record, call a service or runtime, record the outcome."""

from __future__ import annotations

import socket

from celery import shared_task
from django.utils import timezone

from console.accounts.services.credentials import secrets_rotate
from console.accounts.services.login_failures import login_failures_flush
from deployments.benchmarks.schedules import schedules_due as start_due_benchmarks
from deployments.benchmarks.tuning import reruns_due as start_due_reruns
from deployments.gateway.records import flush_pending
from deployments.jobs.reaper import jobs_reap as reap
from deployments.monitoring.health_services import health_check_scheduled as start_health_check
from deployments.monitoring.samples import downsample_samples
from deployments.monitoring.serving_samples import take_samples as take_deployment_samples
from deployments.serving.approvals import approvals_expire as lapse_approvals
from workers.reconcile import reconcile_console
from workers.reconcile import reconcile_host as reconcile
from workers.runner import run


@shared_task(name="workers.ping", acks_late=False)
def ping() -> dict:
    """Answer with who served the task and when: proves the broker and result backend round trip."""
    return {"pong": True, "worker": socket.gethostname(), "at": timezone.now().isoformat()}


@shared_task(name="workers.rotate_secrets")
def rotate_secrets() -> dict:
    """Re-encrypt every stored secret under the newest key (requested from the console)."""
    return secrets_rotate(actor_name=f"worker:{socket.gethostname()}")


@shared_task(name="workers.run_job", acks_late=False, time_limit=None, soft_time_limit=None)
def run_job(job_id: int) -> str:
    """Run a job under a database lease. Acknowledged at once: if this worker dies, the reaper (not the
    broker) hands the job on, so long work never runs twice."""
    return run(job_id)


@shared_task(name="workers.jobs_reap")
def jobs_reap() -> dict:
    """Beat: retry or fail jobs whose worker vanished; re-dispatch pending jobs Redis may have lost."""
    return reap()


@shared_task(name="workers.deployments_reconcile")
def deployments_reconcile() -> dict:
    """Beat: restarts and deadlines here, then each online host compares its servers with the database."""
    result = reconcile_console()
    for host in result["hosts"]:
        reconcile_host.apply_async(args=[host], queue=f"host.{host}", expires=60)
    return result


@shared_task(name="workers.reconcile_host")
def reconcile_host(host_name: str) -> dict:
    """On a host's agent: adopt, fail or remove servers so runtime and database agree."""
    return reconcile(host_name)


@shared_task(name="workers.login_failures_flush")
def login_failures_audit() -> int:
    """Beat: write the counted failed logins of addresses that went quiet (their window has closed)."""
    return login_failures_flush()


@shared_task(name="workers.approvals_expire")
def approvals_expire() -> int:
    """Beat: production approval requests left unanswered past APPROVAL_TTL_SECONDS lapse (audited)."""
    return lapse_approvals()


@shared_task(name="workers.benchmark_schedules_due")
def benchmark_schedules_due() -> int:
    """Beat, every minute: start the scheduled benchmarks whose time came (each at most once, however long beat
    was down); returns the runs started."""
    return start_due_benchmarks()


@shared_task(name="workers.benchmark_reruns_due")
def benchmark_reruns_due() -> int:
    """Beat, every 15 s: start the tuning loop's re-runs whose deployment now runs the suggested version, and cancel
    those that can no longer happen; returns the runs started."""
    return start_due_reruns()


@shared_task(name="workers.inference_log_flush")
def inference_log_flush() -> int:
    """Beat, every minute: seal the inference records still queued in Redis. The gateway flushes every
    GATEWAY_FLUSH_SECONDS itself; this is the backstop for when no gateway runs (records it queued before it
    stopped). Returns the records stored."""
    return flush_pending(budget_seconds=45)


@shared_task(name="workers.health_check_scheduled")
def health_check_scheduled() -> int:
    """Beat, at HEALTH_CHECK_CRON (monthly by default): start the health check; returns its run's id."""
    return start_health_check().pk


@shared_task(name="workers.deployment_samples")
def deployment_samples() -> int:
    """Beat, every DEPLOYMENT_SAMPLE_SECONDS: each deployment's serving figures of the interval that ended (the
    inference log, the servers' queue) as a DeploymentSample; returns the samples written."""
    return take_deployment_samples()


@shared_task(name="workers.telemetry_downsample")
def telemetry_downsample() -> dict:
    """Beat, every TELEMETRY_DOWNSAMPLE_SECONDS: minute samples past TELEMETRY_MINUTE_DAYS become 15-minute ones,
    15-minute ones past TELEMETRY_QUARTER_DAYS go; returns the counts."""
    return downsample_samples()

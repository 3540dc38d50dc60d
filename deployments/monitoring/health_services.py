"""Running the health check: start one (scheduled by beat, or asked for by an admin), the console's own checks, the
integrity sweep on every host (an `integrity_sweep` job on each host's queue), what the sweep finds (corrupt copies
marked, their deployments flagged), the report when the last host is done, resuming a sweep that stopped, and the
re-download or re-check of a corrupt copy. Everything that changes a run or an artifact is audited.

HealthCheckRun.progress holds the sweep as it goes:
{"jobs": [job ids], "jobs_done": [...], "stores": {host: disk usage}, "unswept_hosts": [names],
 "sweep": {artifact pk: {"host", "files": {path: {"status", "size", "detail"}}, "finished", "problems", "note"}}}
Each file is recorded as soon as it is hashed, so a sweep stopped mid-way re-hashes only the files not done.
"""

from __future__ import annotations

from datetime import timedelta

from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

import audit
from console import roles
from console.errors import ApplicationError
from console.permissions import require
from deployments.jobs.services import job_create
from deployments.models import Host, Job, ModelArtifact, ModelSource
from deployments.monitoring import healthcheck
from deployments.monitoring.flags import clear_flag, deployments_using_artifact, raise_flag
from deployments.monitoring.models import HealthCheckRun

CORRUPT_CAUSE = "model-files-corrupt"
# Copies the sweep re-hashes: ready ones, and corrupt ones (a copy repaired by hand is found good again).
SWEPT = (ModelArtifact.Status.READY, ModelArtifact.Status.CORRUPT)
ACTIVE = (HealthCheckRun.State.QUEUED, HealthCheckRun.State.RUNNING)
STALE_HOURS = 48


def _actor_name(actor) -> str:
    return "" if getattr(actor, "is_authenticated", False) else "health-check"


@transaction.atomic
def health_check_start(*, actor, trigger: str = HealthCheckRun.Trigger.MANUAL) -> HealthCheckRun:
    """Queue a health check (admins, or beat with actor None). One at a time: while one is queued or running, that
    one is returned."""
    if trigger == HealthCheckRun.Trigger.MANUAL:
        require(actor, roles.MANAGE_INVENTORY)
    current = HealthCheckRun.objects.select_for_update().filter(state__in=ACTIVE).first()
    if current is not None and not _settled_as_stale(current):
        return current
    user = actor if getattr(actor, "is_authenticated", False) else None
    run = HealthCheckRun.objects.create(trigger=trigger, requested_by=user)
    run.job = job_create(kind=Job.Kind.HEALTH_CHECK, actor=user, target=run, params={"run": run.pk})
    run.save(update_fields=["job"])
    audit.record(
        action="health_check.started",
        actor=user,
        actor_name=_actor_name(actor),
        target=run,
        detail={"trigger": trigger},
    )
    return run


def _settled_as_stale(run: HealthCheckRun) -> bool:
    """Close a run that can no longer finish by itself, so it does not hold off every later one: its sweep jobs all
    ended without the last one writing the report (one was failed by the reaper, which runs no handler), or it is
    older than STALE_HOURS (a host went away with its sweep job queued). True when it was closed."""
    jobs = Job.objects.filter(pk__in=(run.progress or {}).get("jobs", []))
    ended = (
        run.state == HealthCheckRun.State.RUNNING
        and run.job_id
        and not Job.objects.filter(pk=run.job_id, status__in=Job.Status.active()).exists()
        and not jobs.filter(status__in=Job.Status.active()).exists()
    )
    stale = timezone.now() - run.created_at > timedelta(hours=STALE_HOURS)
    if not (ended or stale):
        return False
    if run.state == HealthCheckRun.State.RUNNING and run.report.get("sections"):
        _finalize(run)  # what was swept is reported; the rest shows as not finished
    else:
        health_check_failed(run.pk, "The health check did not finish (no worker took it).")
    return True


def health_check_scheduled() -> HealthCheckRun:
    """Beat's entry (HEALTH_CHECK_CRON)."""
    return health_check_start(actor=None, trigger=HealthCheckRun.Trigger.SCHEDULED)


def run_console_checks(run: HealthCheckRun) -> None:
    """The health_check job: the checks the console answers itself, then one sweep job per online host with copies
    to check (or the report at once when there is none)."""
    now = timezone.now()
    sections, findings = {}, []
    for name, (section, found) in (
        ("gpus", healthcheck.gpus_section()),
        ("audit", healthcheck.audit_section(now)),
        ("certificates", healthcheck.certificates_section(now)),
        ("backups", healthcheck.backups_section(now)),
    ):
        sections[name] = section
        findings.extend(found)
    with transaction.atomic():
        locked = HealthCheckRun.objects.select_for_update().get(pk=run.pk)
        locked.state = HealthCheckRun.State.RUNNING
        locked.started_at = locked.started_at or now
        locked.report = {**(locked.report or {}), "sections": sections, "console_findings": findings}
        locked.save(update_fields=["state", "started_at", "report"])
    sweep_dispatch(locked)


def _artifacts_by_host(run: HealthCheckRun) -> dict[Host, list[int]]:
    """The copies still to check, per host: all of them the first time (and every online host, for its disk
    space, even with none), the unfinished ones on a resume."""
    finished = {pk for pk, state in (run.progress.get("sweep") or {}).items() if state.get("finished")}
    grouped: dict[Host, list[int]] = {}
    if "jobs" not in (run.progress or {}):
        grouped.update((host, []) for host in Host.objects.filter(status=Host.Status.ONLINE).order_by("name"))
    for artifact in ModelArtifact.objects.filter(status__in=SWEPT).select_related("host").order_by("pk"):
        if str(artifact.pk) not in finished:
            grouped.setdefault(artifact.host, []).append(artifact.pk)
    return grouped


@transaction.atomic
def sweep_dispatch(run: HealthCheckRun) -> list[Job]:
    """One integrity_sweep job per online host (offline hosts with copies are reported, not waited for)."""
    locked = HealthCheckRun.objects.select_for_update().get(pk=run.pk)
    progress = dict(locked.progress or {})
    jobs, unswept = [], []
    for host, artifacts in _artifacts_by_host(locked).items():
        if host.status != Host.Status.ONLINE:
            unswept.append(host.name)
            continue
        for pk in artifacts:  # listed from the start: a copy the sweep never reached is reported unfinished
            progress.setdefault("sweep", {}).setdefault(str(pk), {"host": host.name, "files": {}})
        jobs.append(
            job_create(
                kind=Job.Kind.INTEGRITY_SWEEP,
                actor=locked.requested_by,
                target=locked,
                queue=host.queue,
                params={"run": locked.pk, "host": host.name, "artifacts": artifacts},
            )
        )
    progress["jobs"] = [*progress.get("jobs", []), *[job.pk for job in jobs]]
    progress["unswept_hosts"] = sorted(unswept)
    locked.progress = progress
    locked.save(update_fields=["progress"])
    if not jobs:
        _finalize(locked)
    return jobs


def sweep_files_checked(run_id: int, artifact: ModelArtifact, checks: list[dict]) -> None:
    """Record hashed files ({"path", "status", "size", "detail"} each) in one write: a restart skips them."""
    if not checks:
        return
    with transaction.atomic():
        run = HealthCheckRun.objects.select_for_update().get(pk=run_id)
        progress = dict(run.progress or {})
        sweep = progress.setdefault("sweep", {})
        state = sweep.setdefault(str(artifact.pk), {"host": artifact.host.name, "files": {}})
        for check in checks:
            state["files"][check["path"]] = {key: check[key] for key in ("status", "size", "detail")}
        run.progress = progress
        run.save(update_fields=["progress"])


def sweep_files_done(run_id: int, artifact_id: int) -> set[str]:
    """The files of this copy the run has hashed already."""
    run = HealthCheckRun.objects.get(pk=run_id)
    return set(((run.progress.get("sweep") or {}).get(str(artifact_id)) or {}).get("files", {}))


def sweep_artifact_checked(run_id: int, artifact: ModelArtifact, *, note: str = "") -> list[str]:
    """Every file of the copy is hashed: mark it corrupt (naming the files) or checked. Returns the problems."""
    with transaction.atomic():
        run = HealthCheckRun.objects.select_for_update().get(pk=run_id)
        progress = dict(run.progress or {})
        state = progress.setdefault("sweep", {}).setdefault(str(artifact.pk), {"host": artifact.host.name, "files": {}})
        problems = [item["detail"] for _path, item in sorted(state["files"].items()) if item["status"] != "ok"]
        state.update(finished=True, problems=problems, note=note)
        run.progress = progress
        run.save(update_fields=["progress"])
    if note:
        return []
    if problems:
        artifact_mark_corrupt(artifact, problems, run=run)
    else:
        artifact_mark_verified(artifact)
    return problems


def sweep_store_measured(run_id: int, host_name: str, usage: dict) -> None:
    with transaction.atomic():
        run = HealthCheckRun.objects.select_for_update().get(pk=run_id)
        run.progress = {**run.progress, "stores": {**run.progress.get("stores", {}), host_name: usage}}
        run.save(update_fields=["progress"])


def sweep_job_finished(run_id: int, job_id: int) -> None:
    """A sweep job ended (whatever its outcome): the report is written when the run's last one has."""
    with transaction.atomic():
        run = HealthCheckRun.objects.select_for_update().get(pk=run_id)
        progress = dict(run.progress or {})
        progress["jobs_done"] = sorted({*progress.get("jobs_done", []), job_id})
        run.progress = progress
        run.save(update_fields=["progress"])
        if run.state == HealthCheckRun.State.RUNNING and set(progress.get("jobs", [])) <= set(progress["jobs_done"]):
            _finalize(run)


def _finalize(run: HealthCheckRun) -> None:
    """Write the report: the console's sections, the sweep's, every finding; the run is done."""
    progress = run.progress or {}
    sections = dict((run.report or {}).get("sections", {}))
    findings = list((run.report or {}).get("console_findings", []))
    integrity, found = healthcheck.integrity_section(progress.get("sweep") or {})
    sections["integrity"] = integrity
    findings.extend(found)
    deployments, found = healthcheck.deployments_section()  # after the sweep: the flags it raised are listed
    sections["deployments"] = deployments
    findings.extend(found)
    disk, found = healthcheck.disk_section(progress.get("stores") or {}, progress.get("unswept_hosts") or [])
    sections["disk"] = disk
    findings.extend(found)
    findings = healthcheck.ordered(findings)
    run.report = {"sections": sections, "counts": healthcheck.counts(findings)}
    run.findings = findings
    run.findings_count = len(findings)
    run.state = HealthCheckRun.State.DONE
    run.finished_at = timezone.now()
    run.save(update_fields=["report", "findings", "findings_count", "state", "finished_at"])
    audit.record(
        action="health_check.finished",
        actor=None,
        actor_name="health-check",
        target=run,
        detail={"findings": run.findings_count, **healthcheck.counts(findings)},
    )


def health_check_failed(run_id: int, detail: str) -> None:
    """The health_check job itself failed: the run says so (its sweep jobs, if any were sent, are not waited for)."""
    with transaction.atomic():
        run = HealthCheckRun.objects.select_for_update().get(pk=run_id)
        if run.state not in ACTIVE:
            return
        run.state, run.finished_at = HealthCheckRun.State.FAILED, timezone.now()
        run.report = {**(run.report or {}), "error": detail}
        run.save(update_fields=["state", "finished_at", "report"])
        audit.record(
            action="health_check.finished",
            actor=None,
            actor_name="health-check",
            target=run,
            outcome="failure",
            detail={"error": detail[:500]},
        )


@transaction.atomic
def health_check_resume(*, actor, run: HealthCheckRun) -> list[Job]:
    """Send the sweep again for the copies it did not finish (its jobs were stopped or failed); files already
    hashed are not read again."""
    require(actor, roles.MANAGE_INVENTORY)
    run = HealthCheckRun.objects.select_for_update().get(pk=run.pk)
    progress = run.progress or {}
    active = Job.objects.filter(pk__in=progress.get("jobs", []), status__in=Job.Status.active())
    if active.exists():
        raise ApplicationError(_("The sweep is still running."))
    if run.state == HealthCheckRun.State.QUEUED or (run.state == HealthCheckRun.State.FAILED and not progress):
        raise ApplicationError(_("This health check never started its sweep: run a new one."))
    run.state, run.finished_at = HealthCheckRun.State.RUNNING, None
    run.save(update_fields=["state", "finished_at"])
    audit.record(action="health_check.resumed", actor=actor, target=run, detail={})
    return sweep_dispatch(run)


def artifact_mark_corrupt(artifact: ModelArtifact, problems: list[str], *, run: HealthCheckRun | None = None) -> None:
    """Mark the copy corrupt (integrity_note names the files), audit it, flag every deployment that uses it."""
    note = "; ".join(problems)
    was = ModelArtifact.objects.filter(pk=artifact.pk).values_list("status", flat=True).first()
    ModelArtifact.objects.filter(pk=artifact.pk).update(
        status=ModelArtifact.Status.CORRUPT, integrity_note=note[:5000], integrity_checked_at=timezone.now()
    )
    artifact.status, artifact.integrity_note = ModelArtifact.Status.CORRUPT, note
    if was != ModelArtifact.Status.CORRUPT:
        audit.record(
            action="model.corrupt",
            actor=None,
            actor_name=f"agent:{artifact.host.name}",
            target=artifact,
            outcome="failure",
            detail={"problems": problems[:50], "run": run.pk if run else None},
        )
    for deployment in deployments_using_artifact(artifact):
        raise_flag(
            deployment,
            cause=CORRUPT_CAUSE,
            subject=f"model:{artifact.pk}",
            detail=_("Model files of %(model)s are corrupt: %(files)s")
            % {"model": artifact.repo.repo_id, "files": note},
            next_step=restore_next_step(artifact),
        )


def restore_next_step(artifact: ModelArtifact) -> str:
    if can_redownload(artifact):
        return _("Re-download the model (Health checks, Corrupt models), then restart this deployment.")
    return _(
        "Copy the model's files to %(path)s again, check them (Health checks, Corrupt models), then restart this "
        "deployment."
    ) % {"path": artifact.path}


def artifact_mark_verified(artifact: ModelArtifact) -> bool:
    """A clean re-hash: the check time is kept; a corrupt copy is ready again (audited) and its flags are cleared.
    True when it was corrupt."""
    was = ModelArtifact.objects.filter(pk=artifact.pk).values_list("status", flat=True).first()
    update = {"integrity_checked_at": timezone.now(), "integrity_note": ""}
    if was == ModelArtifact.Status.CORRUPT:
        update["status"] = ModelArtifact.Status.READY
    ModelArtifact.objects.filter(pk=artifact.pk).update(**update)
    if was != ModelArtifact.Status.CORRUPT:
        return False
    artifact.status = ModelArtifact.Status.READY
    audit.record(action="model.restored", actor=None, actor_name=f"agent:{artifact.host.name}", target=artifact)
    for deployment in deployments_using_artifact(artifact):
        clear_flag(deployment, cause=CORRUPT_CAUSE, subject=f"model:{artifact.pk}")
    return True


def can_redownload(artifact: ModelArtifact) -> bool:
    """Hub and mirror copies are fetched again; a directory import is re-copied by a person, then checked."""
    return not artifact.imported and artifact.repo.source.kind != ModelSource.Kind.LOCAL


@transaction.atomic
def artifact_restore(*, actor, artifact: ModelArtifact) -> Job:
    """Repair a corrupt copy on its host: re-download its bad files from the source (Hub or mirror), or check a
    re-copied directory import again. One job per copy at a time."""
    require(actor, roles.ADD_MODEL)
    artifact = ModelArtifact.objects.select_for_update().select_related("repo__source", "host").get(pk=artifact.pk)
    if artifact.status != ModelArtifact.Status.CORRUPT:
        raise ApplicationError(_("Only a copy the integrity sweep found corrupt can be restored."))
    running = Job.objects.filter(
        kind=Job.Kind.INTEGRITY_SWEEP,
        target_type=artifact._meta.label_lower,
        target_id=str(artifact.pk),
        status__in=Job.Status.active(),
    ).first()
    if running is not None:
        return running
    mode = "redownload" if can_redownload(artifact) else "recheck"
    audit.record(action="model.restore_requested", actor=actor, target=artifact, detail={"mode": mode})
    return job_create(
        kind=Job.Kind.INTEGRITY_SWEEP,
        actor=actor,
        target=artifact,
        queue=artifact.host.queue,
        params={"restore": mode, "artifact": artifact.pk},
    )


def latest_runs():
    return HealthCheckRun.objects.select_related("requested_by", "job")

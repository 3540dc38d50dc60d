"""The health check's report: one function per section, each returning (section, findings).

A section is a JSON-able dict the report page and the exports show; a finding is
{"severity": critical|warning|info, "check", "subject", "message", "next_step"}. Findings are what the alerts count
(llmdeploy_healthcheck_findings{severity}); the sections are the evidence beside them.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from audit.models import AuditCheckpoint
from audit.verify import remember, verify_chain, verify_checkpoints
from deployments.models import Deployment, Gpu, Host, ModelArtifact

CRITICAL, WARNING, INFO = "critical", "warning", "info"
SEVERITIES = (CRITICAL, WARNING, INFO)
CERTIFICATE_WARN_DAYS = 30
BACKUP_WARN_DAYS = 7
BACKUP_CRITICAL_DAYS = 31
STORE_FREE_WARN = 0.10
STORE_FREE_CRITICAL = 0.05
RESTARTS_WARN = 3
# The sections in the order the report shows them, with their titles.
SECTION_TITLES = {
    "gpus": gettext_lazy("GPU health and driver/CUDA versions"),
    "integrity": gettext_lazy("Model-store integrity"),
    "disk": gettext_lazy("Disk space per model store"),
    "audit": gettext_lazy("Audit chain and checkpoint export"),
    "deployments": gettext_lazy("Deployments"),
    "certificates": gettext_lazy("Certificates"),
    "backups": gettext_lazy("Backups"),
}


def finding(severity: str, check: str, subject: str, message: str, next_step: str = "") -> dict:
    return {
        "severity": severity,
        "check": check,
        "subject": subject,
        "message": str(message),
        "next_step": str(next_step),
    }


def ordered(findings: list[dict]) -> list[dict]:
    """Critical first, then warnings, then information; stable within a severity."""
    return sorted(findings, key=lambda item: SEVERITIES.index(item["severity"]))


def counts(findings: list[dict]) -> dict[str, int]:
    return {severity: sum(1 for item in findings if item["severity"] == severity) for severity in SEVERITIES}


def _age_days(then: datetime, now: datetime) -> float:
    return round((now - then).total_seconds() / 86400, 1)


def gpus_section() -> tuple[dict, list[dict]]:
    """Every GPU's health, and each host's driver and CUDA versions: hosts that differ are a finding (a deployment
    moved between them may not start, and their results are not comparable)."""
    findings: list[dict] = []
    hosts = []
    for host in Host.objects.order_by("name").prefetch_related("gpus"):
        gpus = [
            {
                "index": gpu.index,
                "name": gpu.name,
                "health": gpu.health,
                "cause": gpu.health_cause,
                "detail": gpu.health_detail,
            }
            for gpu in host.gpus.all()
        ]
        hosts.append(
            {
                "host": host.name,
                "status": host.status,
                "driver": host.driver_version,
                "cuda": host.cuda_version,
                "gpus": gpus,
            }
        )
        for gpu in host.gpus.all():
            subject = f"{host.name} GPU {gpu.index}"
            if gpu.health in (Gpu.Health.FAILED, Gpu.Health.MISSING):
                findings.append(
                    finding(
                        CRITICAL,
                        "gpu",
                        subject,
                        _("GPU is %(health)s: %(detail)s")
                        % {"health": gpu.get_health_display(), "detail": gpu.health_detail or gpu.health_cause or "-"},
                        _("Drain the host, check the GPU (nvidia-smi -q, the kernel log for XID errors), replace it."),
                    )
                )
            elif gpu.health == Gpu.Health.DEGRADED:
                findings.append(
                    finding(
                        WARNING,
                        "gpu",
                        subject,
                        _("GPU is degraded: %(detail)s") % {"detail": gpu.health_detail or gpu.health_cause or "-"},
                        _("Watch its temperature, ECC and throttle readings on the host page; plan a check."),
                    )
                )
    with_gpus = [host for host in hosts if host["gpus"]]
    for field, label in (("driver", _("driver")), ("cuda", _("CUDA"))):
        versions = sorted({host[field] for host in with_gpus if host[field]})
        if len(versions) > 1:
            by_version = {
                version: [host["host"] for host in with_gpus if host[field] == version] for version in versions
            }
            findings.append(
                finding(
                    WARNING,
                    "gpu-versions",
                    _("fleet"),
                    _("Hosts run different %(what)s versions: %(versions)s")
                    % {
                        "what": label,
                        "versions": "; ".join(f"{v} ({', '.join(names)})" for v, names in by_version.items()),
                    },
                    _("Upgrade the hosts to one %(what)s version so deployments behave alike everywhere.")
                    % {"what": label},
                )
            )
    return {"hosts": hosts}, findings


def audit_section(now: datetime) -> tuple[dict, list[dict]]:
    """The whole audit chain verified (monthly, so every event, not only those after the newest checkpoint: an edit
    behind a checkpoint leaves the later links intact), every stored checkpoint checked, and how old the newest
    exported checkpoint is."""
    findings: list[dict] = []
    result = remember(verify_chain())  # /metrics reports it too
    checkpoints_problem = verify_checkpoints()
    section = {
        "chain_ok": result.ok,
        "chain": result.summary(),
        "checkpoints_problem": checkpoints_problem or "",
        "checkpoints": AuditCheckpoint.objects.count(),
        "export_dir": settings.AUDIT_CHECKPOINT_EXPORT_DIR or "",
        "export_age_days": None,
    }
    if not result.ok or checkpoints_problem:
        findings.append(
            finding(
                CRITICAL,
                "audit-chain",
                _("audit log"),
                _("The audit chain does not verify: %(why)s") % {"why": checkpoints_problem or result.summary()},
                _(
                    "Compare with the exported checkpoints (manage.py audit_verify --checkpoints DIR) and find who "
                    "changed the database."
                ),
            )
        )
    directory = settings.AUDIT_CHECKPOINT_EXPORT_DIR
    if not directory:
        findings.append(
            finding(
                INFO,
                "audit-export",
                _("audit checkpoints"),
                _("Checkpoints are not exported (AUDIT_CHECKPOINT_EXPORT_DIR is not set)."),
                _("Set AUDIT_CHECKPOINT_EXPORT_DIR to a directory the web and worker processes cannot rewrite."),
            )
        )
        return section, findings
    exported = sorted(Path(directory).glob("checkpoint-*.json")) if Path(directory).is_dir() else []
    if not exported:
        findings.append(
            finding(
                WARNING,
                "audit-export",
                _("audit checkpoints"),
                _("No checkpoint has been exported to %(dir)s.") % {"dir": directory},
                _("Check that beat runs and can write there."),
            )
        )
        return section, findings
    newest = datetime.fromtimestamp(max(path.stat().st_mtime for path in exported), tz=UTC)
    age = now - newest
    section["export_age_days"] = _age_days(newest, now)
    if age > timedelta(seconds=max(2 * settings.AUDIT_CHECKPOINT_SECONDS, 3600)):
        findings.append(
            finding(
                WARNING,
                "audit-export",
                _("audit checkpoints"),
                _("The newest exported checkpoint is %(days)s days old.") % {"days": section["export_age_days"]},
                _("Check that beat runs and that %(dir)s is writable.") % {"dir": directory},
            )
        )
    return section, findings


def deployments_section() -> tuple[dict, list[dict]]:
    """Every deployment's state, restarts and open flags."""
    findings: list[dict] = []
    rows = []
    for deployment in Deployment.objects.select_related("host").order_by("name"):
        rows.append(
            {
                "name": deployment.name,
                "state": deployment.state,
                "host": deployment.host.name if deployment.host_id else "",
                "restarts": deployment.restart_count,
                "flags": [flag.get("cause", "") for flag in deployment.flags or []],
            }
        )
        if deployment.state == Deployment.State.FAILED:
            findings.append(
                finding(
                    WARNING,
                    "deployment",
                    deployment.name,
                    _("The deployment failed: %(why)s")
                    % {"why": deployment.failure_detail or deployment.failure_cause},
                    deployment.next_step or _("Open the deployment and read its log."),
                )
            )
        elif deployment.restart_count >= RESTARTS_WARN:
            findings.append(
                finding(
                    WARNING,
                    "deployment",
                    deployment.name,
                    _("The server was restarted %(n)s times.") % {"n": deployment.restart_count},
                    _("Read the deployment's log for why its server stops."),
                )
            )
    return {"deployments": rows}, findings


def certificates_section(now: datetime) -> tuple[dict, list[dict]]:
    """The PEM files of HEALTH_CHECK_CERTIFICATES: expired is critical, expiring within 30 days a warning."""
    from cryptography import x509

    findings: list[dict] = []
    rows = []
    for name in settings.HEALTH_CHECK_CERTIFICATES:
        try:
            certificate = x509.load_pem_x509_certificate(Path(name).read_bytes())
        except (OSError, ValueError) as error:
            rows.append({"path": name, "error": str(error)})
            findings.append(
                finding(
                    WARNING,
                    "certificate",
                    name,
                    _("The certificate cannot be read: %(error)s") % {"error": error},
                    _("Fix the path in HEALTH_CHECK_CERTIFICATES."),
                )
            )
            continue
        expires = certificate.not_valid_after_utc
        days = _age_days(now, expires)
        rows.append(
            {
                "path": name,
                "subject": certificate.subject.rfc4514_string(),
                "expires": expires.isoformat(),
                "days_left": days,
            }
        )
        if expires <= now:
            findings.append(
                finding(
                    CRITICAL,
                    "certificate",
                    name,
                    _("The certificate expired on %(date)s.") % {"date": f"{expires:%Y-%m-%d}"},
                    _("Renew it and reload the service that serves it."),
                )
            )
        elif expires - now <= timedelta(days=CERTIFICATE_WARN_DAYS):
            findings.append(
                finding(
                    WARNING,
                    "certificate",
                    name,
                    _("The certificate expires on %(date)s (in %(days)s days).")
                    % {"date": f"{expires:%Y-%m-%d}", "days": int(days)},
                    _("Renew it before then."),
                )
            )
    return {"certificates": rows}, findings


def backups_section(now: datetime) -> tuple[dict, list[dict]]:
    """The newest file in BACKUP_DIR and its age."""
    directory = settings.BACKUP_DIR
    if not directory:
        message = _("Backups are not configured (BACKUP_DIR is not set).")
        return {"configured": False}, [
            finding(INFO, "backup", _("backups"), message, _("Set BACKUP_DIR to where the backups are written."))
        ]
    newest = None
    for root, dirs, files in os.walk(directory):
        # A backup still being written, or cut short, is not one (manage.py backup renames it when complete).
        dirs[:] = [name for name in dirs if not name.endswith(".partial")]
        for name in files:
            mtime = os.stat(os.path.join(root, name)).st_mtime
            if newest is None or mtime > newest[0]:
                newest = (mtime, os.path.join(root, name))
    if newest is None:
        return {"configured": True, "dir": directory, "newest": ""}, [
            finding(
                CRITICAL,
                "backup",
                directory,
                _("No backup found in %(dir)s.") % {"dir": directory},
                _("Run a backup now and check the backup schedule."),
            )
        ]
    at = datetime.fromtimestamp(newest[0], tz=UTC)
    days = _age_days(at, now)
    section = {"configured": True, "dir": directory, "newest": newest[1], "at": at.isoformat(), "age_days": days}
    findings = []
    if days > BACKUP_WARN_DAYS:
        findings.append(
            finding(
                CRITICAL if days > BACKUP_CRITICAL_DAYS else WARNING,
                "backup",
                directory,
                _("The newest backup is %(days)s days old (%(file)s).") % {"days": days, "file": newest[1]},
                _("Run a backup now and check the backup schedule."),
            )
        )
    return section, findings


def integrity_section(sweep: dict) -> tuple[dict, list[dict]]:
    """The sweep's outcome per artifact (from HealthCheckRun.progress["sweep"]): a corrupt copy is critical."""
    findings: list[dict] = []
    rows = []
    artifacts = ModelArtifact.objects.select_related("repo", "host").in_bulk([int(pk) for pk in sweep])
    for pk, state in sorted(sweep.items(), key=lambda item: int(item[0])):
        artifact = artifacts.get(int(pk))
        name = f"{artifact.repo.repo_id} on {artifact.host.name}" if artifact else f"#{pk}"
        files = state.get("files", {})
        problems = state.get("problems", [])
        rows.append(
            {
                "artifact": int(pk),
                "name": name,
                "finished": bool(state.get("finished")),
                "files": len(files),
                "bytes": sum(item.get("size", 0) for item in files.values()),
                "problems": problems,
                "status": artifact.status if artifact else "",
            }
        )
        if problems:
            findings.append(
                finding(
                    CRITICAL,
                    "integrity",
                    name,
                    _("Model files are corrupt: %(files)s") % {"files": "; ".join(problems)},
                    _(
                        "Re-download the model, or re-copy and check a directory import (Health checks, Corrupt "
                        "models); the deployments using it are flagged."
                    ),
                )
            )
        elif state.get("note"):
            findings.append(finding(INFO, "integrity", name, state["note"], ""))
        elif not state.get("finished"):
            findings.append(
                finding(
                    WARNING,
                    "integrity",
                    name,
                    _("The sweep did not finish checking this copy."),
                    _("Check that the host's agent runs, then resume the health check."),
                )
            )
    return {"artifacts": rows}, findings


def disk_section(stores: dict, unswept_hosts: list[str]) -> tuple[dict, list[dict]]:
    """Each host's model store as its agent measured it during the sweep."""
    findings: list[dict] = []
    for host, usage in sorted(stores.items()):
        free = usage["free"] / usage["total"] if usage.get("total") else 1.0
        if free < STORE_FREE_WARN:
            findings.append(
                finding(
                    CRITICAL if free < STORE_FREE_CRITICAL else WARNING,
                    "disk",
                    host,
                    _("The model store %(path)s has %(pct)s %% free (%(gb)s GB).")
                    % {"path": usage["path"], "pct": round(free * 100, 1), "gb": round(usage["free"] / 1e9, 1)},
                    _("Delete copies nothing uses (Models, garbage collection) or grow the disk."),
                )
            )
    for host in unswept_hosts:
        findings.append(
            finding(
                WARNING,
                "disk",
                host,
                _("The host is not online: its model store was not checked."),
                _("Bring its agent back, then run the health check again."),
            )
        )
    return {"stores": stores}, findings

"""The health check's other sections and findings (GPUs and driver/CUDA versions, audit chain and checkpoint export,
deployments, certificates, backups, hosts not online), its pages, exports, API, permissions and beat entry."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path

import pytest
from celery.schedules import crontab
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.utils import timezone

import audit
from audit.models import AuditEvent
from deployments.models import Job
from deployments.monitoring import health_services, healthcheck
from deployments.monitoring.models import HealthCheckRun
from tests.audit.tampering import Tamper
from tests.conftest import Api
from tests.factories.inventory import GpuFactory, HostFactory
from tests.factories.serving import DeploymentFactory
from workers import runner


def certificate(path: Path, *, days_left: float) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, path.stem)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=400))
        .not_valid_after(now + dt.timedelta(days=days_left))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture
def quiet(settings, tmp_path):
    """Nothing configured that would add findings of its own."""
    settings.MODEL_STORE = tmp_path / "store"
    settings.BACKUP_DIR = ""
    settings.HEALTH_CHECK_CERTIFICATES = []
    settings.AUDIT_CHECKPOINT_EXPORT_DIR = ""
    settings.INTEGRITY_SWEEP_MB_S = 0
    return settings


def by_check(findings: list[dict], check: str) -> list[tuple[str, str]]:
    return [(item["severity"], item["subject"]) for item in findings if item["check"] == check]


@pytest.mark.django_db
def test_gpu_health_and_differing_driver_or_cuda_versions_are_findings(quiet):
    a = HostFactory(name="node-a", driver_version="550.54", cuda_version="12.4")
    b = HostFactory(name="node-b", driver_version="550.54", cuda_version="12.4")
    GpuFactory(host=a), GpuFactory(host=b)
    section, findings = healthcheck.gpus_section()
    assert findings == [] and [h["driver"] for h in section["hosts"]] == ["550.54", "550.54"]

    c = HostFactory(name="node-c", driver_version="535.161", cuda_version="12.2")
    GpuFactory(host=c, health="failed", health_cause="xid", health_detail="XID 79: fell off the bus")
    GpuFactory(host=b, health="degraded", health_detail="thermal throttling for 10 min")
    HostFactory(name="cpu-only", driver_version="", cuda_version="")  # no GPU: not compared
    _section, findings = healthcheck.gpus_section()
    findings = healthcheck.ordered(findings)
    assert by_check(findings, "gpu") == [("critical", "node-c GPU 0"), ("warning", "node-b GPU 1")]
    assert "XID 79" in findings[0]["message"] and findings[0]["next_step"]
    versions = [item for item in findings if item["check"] == "gpu-versions"]
    assert len(versions) == 2 and all(item["severity"] == "warning" for item in versions)
    assert "535.161 (node-c); 550.54 (node-a, node-b)" in versions[0]["message"]
    assert "12.2 (node-c); 12.4 (node-a, node-b)" in versions[1]["message"]


@pytest.mark.django_db
def test_certificates_backups_and_checkpoint_export_age(quiet, tmp_path):
    now = timezone.now()
    quiet.HEALTH_CHECK_CERTIFICATES = [
        str(certificate(tmp_path / "expired.pem", days_left=-2)),
        str(certificate(tmp_path / "soon.pem", days_left=10)),
        str(certificate(tmp_path / "fine.pem", days_left=200)),
        str(tmp_path / "absent.pem"),
    ]
    section, findings = healthcheck.certificates_section(now)
    assert by_check(findings, "certificate") == [
        ("critical", str(tmp_path / "expired.pem")),
        ("warning", str(tmp_path / "soon.pem")),
        ("warning", str(tmp_path / "absent.pem")),
    ]
    assert "in 9 days" in findings[1]["message"] or "in 10 days" in findings[1]["message"]
    assert section["certificates"][2]["days_left"] > 190

    _section, findings = healthcheck.backups_section(now)
    assert [(f["severity"], f["message"]) for f in findings] == [
        ("info", "Backups are not configured (BACKUP_DIR is not set).")
    ]
    backups = tmp_path / "backups"
    backups.mkdir()
    quiet.BACKUP_DIR = str(backups)
    assert healthcheck.backups_section(now)[1][0]["severity"] == "critical"  # configured, but nothing there
    old = backups / "db-old.dump"
    old.write_bytes(b"x")
    os.utime(old, (time.time() - 10 * 86400,) * 2)
    section, findings = healthcheck.backups_section(now)
    assert section["newest"] == str(old) and by_check(findings, "backup") == [("warning", str(backups))]
    (backups / "nightly").mkdir()
    (backups / "nightly" / "db.dump").write_bytes(b"y")
    section, findings = healthcheck.backups_section(now)
    assert section["newest"].endswith("nightly/db.dump") and section["age_days"] < 1 and findings == []

    exports = tmp_path / "checkpoints"
    quiet.AUDIT_CHECKPOINT_EXPORT_DIR = str(exports)
    _section, findings = healthcheck.audit_section(now)
    assert by_check(findings, "audit-export") == [("warning", "audit checkpoints")]  # nothing exported yet
    exports.mkdir()
    stale = exports / "checkpoint-000000000001.json"
    stale.write_text("{}")
    os.utime(stale, (time.time() - 3 * 86400,) * 2)
    section, findings = healthcheck.audit_section(now)
    assert section["export_age_days"] == 3.0 and "3.0 days old" in findings[0]["message"]


@pytest.mark.django_db
def test_a_tampered_audit_chain_is_critical(quiet):
    for i in range(3):
        audit.record(action="test.event", actor=None, actor_name=f"probe-{i}")
    from audit.tasks import checkpoint

    assert checkpoint() is not None  # event 2 is behind a signed checkpoint now
    audit.record(action="test.event", actor=None, actor_name="probe-3")
    section, findings = healthcheck.audit_section(timezone.now())
    assert section["chain_ok"] and by_check(findings, "audit-chain") == []
    with Tamper() as tamper:  # an edit behind the checkpoint: the links after it still hold
        tamper.sql("UPDATE audit_auditevent SET actor_name = 'mallory' WHERE id = 2")
    section, findings = healthcheck.audit_section(timezone.now())
    assert not section["chain_ok"] and by_check(findings, "audit-chain") == [("critical", "audit log")]
    assert "edited" in findings[0]["message"]


@pytest.mark.django_db
def test_deployments_failed_or_restarting_and_offline_hosts(quiet, admin):
    DeploymentFactory(name="fine", state="running", restart_count=1)
    DeploymentFactory(name="flaky", state="running", restart_count=4)
    DeploymentFactory(name="broken", state="failed", failure_detail="CUDA out of memory", next_step="Use a bigger GPU.")
    offline = HostFactory(name="gone", status="offline")
    from tests.factories.registry import ModelArtifactFactory

    ModelArtifactFactory(host=offline, files_sha256={"config.json": "0" * 64})
    HostFactory(name="empty-node")  # online, no model: its agent still measures its store
    run = health_services.health_check_start(actor=admin)
    assert runner.run(run.job_id) == "succeeded"
    run.refresh_from_db()
    (job,) = run.progress["jobs"]
    assert Job.objects.get(pk=job).queue == "host.empty-node" and run.progress["unswept_hosts"] == ["gone"]
    assert runner.run(job) == "succeeded"
    run.refresh_from_db()
    assert run.state == "done" and run.report["sections"]["disk"]["stores"]["empty-node"]["total"] > 0
    assert by_check(run.findings, "deployment") == [("warning", "broken"), ("warning", "flaky")]
    broken = next(item for item in run.findings if item["subject"] == "broken")
    assert "CUDA out of memory" in broken["message"] and broken["next_step"] == "Use a bigger GPU."
    assert by_check(run.findings, "disk") == [("warning", "gone")]
    rows = {row["name"]: row for row in run.report["sections"]["deployments"]["deployments"]}
    assert rows["flaky"]["restarts"] == 4
    assert [item["severity"] for item in run.findings] == sorted(
        (item["severity"] for item in run.findings), key=healthcheck.SEVERITIES.index
    )


@pytest.mark.django_db
def test_pages_run_now_history_and_exports(quiet, admin, engineer, client):
    client.force_login(engineer)
    page = client.get("/health/").content.decode()
    assert "No health check has run yet." in page and "health-run-now" not in page  # engineers only read
    assert client.post("/health/run/").status_code == 403
    assert not HealthCheckRun.objects.exists()

    client.force_login(admin)
    assert 'id="health-run-now"' in client.get("/health/").content.decode()
    response = client.post("/health/run/")
    run = HealthCheckRun.objects.get()
    assert response.status_code == 302 and response.url == f"/health/{run.pk}/"
    assert run.state == "queued" and run.job.kind == "health_check" and run.job.queue == "celery"
    assert client.post("/health/run/").url == f"/health/{run.pk}/"  # one at a time
    queued = client.get(f"/health/{run.pk}/").content.decode()
    assert 'data-live="1"' in queued and "The check is still running." in queued
    assert runner.run(run.job_id) == "succeeded"
    done = client.get(f"/health/{run.pk}/").content.decode()
    assert 'data-live="0"' in done and 'id="section-gpus"' in done and 'id="section-backups"' in done

    for _ in range(21):
        HealthCheckRun.objects.create(state="done", trigger="scheduled")
    first = client.get("/health/").content.decode()
    assert "Page 1 of 2" in first and f'data-run="{run.pk}"' not in first  # newest first
    assert f'data-run="{run.pk}"' in client.get("/health/?page=2").content.decode()

    markdown = client.get(f"/health/{run.pk}/report.md")
    assert markdown["Content-Type"].startswith("text/markdown") and markdown.content.decode().startswith(
        f"# Health check #{run.pk}"
    )
    pdf = client.get(f"/health/{run.pk}/report.pdf")
    assert pdf["Content-Type"] == "application/pdf" and pdf.content.startswith(b"%PDF")


@pytest.mark.django_db
def test_the_pdf_embeds_a_cjk_font_for_chinese_text(quiet, admin):
    from deployments.monitoring import health_export

    run = HealthCheckRun.objects.create(
        state="done",
        findings=[healthcheck.finding("warning", "deployment", "chat", "显存不足 (out of memory)", "换一块更大的 GPU")],
        findings_count=1,
        finished_at=timezone.now(),
    )
    pdf = health_export.report_pdf(run)
    cjk = Path(health_export.UNICODE_FONTS[0][0])
    if cjk.is_file():
        assert b"WenQuanYi" in pdf or b"WenQuanYiMicroHei" in pdf
    else:  # no CJK font on this system: the fallback still writes a PDF
        assert pdf.startswith(b"%PDF")
    assert "显存不足" in health_export.report_markdown(run)


@pytest.mark.django_db
def test_api_lists_reads_and_starts_runs(quiet, admin, engineer):
    Api(engineer).post("/api/v1/health-checks/", {}, expected=403)
    started = Api(admin).post("/api/v1/health-checks/", {}, expected=201).data
    assert started["state"] == "queued" and started["trigger"] == "manual" and started["requested_by"] == admin.username
    again = Api(admin).post("/api/v1/health-checks/", {}, expected=200).data
    assert again["id"] == started["id"]
    assert runner.run(Job.objects.get(pk=started["job"]).pk) == "succeeded"
    listed = Api(engineer).get("/api/v1/health-checks/").data
    assert [row["id"] for row in listed["results"]] == [started["id"]]
    read = Api(engineer).get(f"/api/v1/health-checks/{started['id']}/").data
    assert read["state"] == "done" and read["findings_count"] == len(read["findings"])
    assert "sections" in read["report"]


@pytest.mark.django_db
def test_beat_runs_it_at_health_check_cron(quiet):
    from django.conf import settings

    from workers.tasks import health_check_scheduled

    entry = settings.CELERY_BEAT_SCHEDULE["health-check"]
    assert entry["task"] == "workers.health_check_scheduled" and isinstance(entry["schedule"], crontab)
    # "0 3 1 * *": 03:00 on the first of the month (cron's field order).
    schedule = entry["schedule"]
    assert schedule.minute == {0} and schedule.hour == {3} and schedule.day_of_month == {1}
    assert len(schedule.day_of_week) == 7 and len(schedule.month_of_year) == 12
    run = HealthCheckRun.objects.get(pk=health_check_scheduled())
    assert run.trigger == "scheduled" and run.requested_by is None and run.job.kind == "health_check"
    event = AuditEvent.objects.get(action="health_check.started")
    detail = json.loads(event.detail) if isinstance(event.detail, str) else event.detail
    assert detail["trigger"] == "scheduled" and event.actor_name == "health-check"


@pytest.mark.django_db
def test_a_run_whose_sweep_job_the_reaper_failed_does_not_hold_off_the_next(quiet, admin):
    from tests.factories.registry import ModelArtifactFactory

    host = HostFactory(name="lost-node")
    ModelArtifactFactory(host=host, files_sha256={"config.json": "0" * 64})
    run = health_services.health_check_start(actor=admin)
    assert runner.run(run.job_id) == "succeeded"
    run.refresh_from_db()
    (sweep_job,) = run.progress["jobs"]
    assert run.state == "running" and health_services.health_check_start(actor=admin) == run  # one at a time
    Job.objects.filter(pk=sweep_job).update(status="failed")  # what the reaper does after the last attempt
    following = health_services.health_check_start(actor=admin)
    run.refresh_from_db()
    assert following != run and following.state == "queued"
    assert run.state == "done" and by_check(run.findings, "integrity")[0][0] == "warning"  # not finished: said so


@pytest.mark.django_db
def test_a_corrupt_copys_page_says_so_and_offers_the_restore(quiet, admin, engineer, client):
    """The model's own page: the bad file named, a Re-download for those who may add models; a refused restore goes
    back to the page it came from, never to another site."""
    from tests.factories.registry import ModelArtifactFactory

    artifact = ModelArtifactFactory(status="corrupt", integrity_note="model.safetensors: sha256 differs")
    client.force_login(admin)
    page = client.get(f"/models/{artifact.pk}/").content.decode()
    assert 'id="corrupt-note"' in page and "model.safetensors: sha256 differs" in page
    assert f'data-restore="{artifact.pk}"' in page and "Re-download" in page
    client.force_login(engineer)  # engineers add models too: they may restore
    assert f'data-restore="{artifact.pk}"' in client.get(f"/models/{artifact.pk}/").content.decode()
    artifact.status = "ready"
    artifact.save()
    assert 'id="corrupt-note"' not in client.get(f"/models/{artifact.pk}/").content.decode()
    # Not corrupt any more: refused, and sent back only to a path of this console.
    answer = client.post(f"/health/models/{artifact.pk}/restore/", {"next": "https://evil.example/"})
    assert answer.status_code == 302 and answer["Location"] == "/health/"
    answer = client.post(f"/health/models/{artifact.pk}/restore/", {"next": f"/models/{artifact.pk}/"})
    assert answer["Location"] == f"/models/{artifact.pk}/"

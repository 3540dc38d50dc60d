"""The health check end to end: a model downloaded through the Hub test server by the real download job, one byte of
its weights flipped on disk, the health check and its integrity sweep run by the job runner; the copy is found
corrupt at the right file, its deployment flagged, a critical finding raised; a re-download restores it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from audit.models import AuditEvent
from deployments.models import AllowedEndpoint, Host, Job, ModelArtifact, ModelSource
from deployments.monitoring import health_services
from deployments.monitoring.models import HealthCheckRun
from deployments.registry.services import model_add
from tests.factories.serving import DeploymentFactory, DeploymentSpecFactory
from tests.support.hub_server import make_safetensors
from workers import integrity, runner

CONFIG = b'{"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1}'


@pytest.fixture
def store(settings, tmp_path) -> Path:
    settings.MODEL_STORE = tmp_path / "store"
    settings.INTEGRITY_SWEEP_MB_S = 0
    settings.BACKUP_DIR = ""
    settings.HEALTH_CHECK_CERTIFICATES = []
    settings.AUDIT_CHECKPOINT_EXPORT_DIR = ""
    return settings.MODEL_STORE


@pytest.fixture
def mirror(hub_server, admin):
    AllowedEndpoint.objects.get_or_create(pattern="127.0.0.1")
    return ModelSource.objects.create(name="test mirror", kind="mirror", endpoint=hub_server.endpoint, created_by=admin)


def downloaded(hub_server, mirror, host, engineer, repo: str, files: dict[str, bytes]) -> ModelArtifact:
    hub_server.add_repo(repo, files)
    artifact = model_add(actor=engineer, source=mirror, repo_id=repo, host=host)
    job = Job.objects.filter(kind="download", target_id=str(artifact.pk)).latest("id")
    assert runner.run(job.pk) == "succeeded"
    artifact.refresh_from_db()
    assert artifact.status == "ready"
    return artifact


def run_health_check(actor) -> HealthCheckRun:
    """Start a run and let the runner do its jobs here (the console's, then each host's sweep)."""
    run = health_services.health_check_start(actor=actor)
    assert runner.run(run.job_id) == "succeeded"
    run.refresh_from_db()
    for job_id in run.progress.get("jobs", []):
        runner.run(job_id)
    run.refresh_from_db()
    return run


@pytest.mark.django_db
def test_a_flipped_byte_is_found_flagged_alerted_and_a_redownload_restores_it(
    hub_server, mirror, engineer, admin, store, client
):
    host = Host.objects.create(name="gpu-a", status="online", model_store=str(store))
    weights = make_safetensors({"w": ("F32", (512, 1024))})  # 2 MiB
    files = {"config.json": CONFIG, "tokenizer.json": b"{}", "model.safetensors": weights}
    artifact = downloaded(hub_server, mirror, host, engineer, "acme/tiny", files)
    other = downloaded(hub_server, mirror, host, engineer, "acme/other", {**files, "tokenizer.json": b'{"x": 1}'})
    deployment = DeploymentFactory(state="running", host=host)
    DeploymentSpecFactory(deployment=deployment, artifact=artifact, current=True)
    bystander = DeploymentFactory(state="running", host=host)
    DeploymentSpecFactory(deployment=bystander, artifact=other, current=True)

    weights_path = Path(artifact.path) / "model.safetensors"
    with open(weights_path, "r+b") as handle:  # one bit of one byte in the middle of the tensor data
        handle.seek(2**20 + 5)
        byte = handle.read(1)
        handle.seek(2**20 + 5)
        handle.write(bytes([byte[0] ^ 0x01]))

    run = run_health_check(admin)

    assert run.state == "done" and run.trigger == "manual" and run.requested_by == admin
    artifact.refresh_from_db()
    assert artifact.status == "corrupt"
    assert "model.safetensors" in artifact.integrity_note and "config.json" not in artifact.integrity_note
    assert ModelArtifact.objects.get(pk=other.pk).status == "ready"  # the intact copy stays as it was
    assert ModelArtifact.objects.get(pk=other.pk).integrity_checked_at is not None
    deployment.refresh_from_db()
    (flag,) = deployment.flags
    assert flag["cause"] == "model-files-corrupt" and "model.safetensors" in flag["detail"]
    assert "Re-download" in flag["next_step"]
    bystander.refresh_from_db()
    assert bystander.flags == []
    critical = [item for item in run.findings if item["severity"] == "critical"]
    assert [(item["check"], item["subject"]) for item in critical] == [("integrity", "acme/tiny on gpu-a")]
    assert "model.safetensors" in critical[0]["message"] and critical[0]["next_step"]
    assert run.findings_count == len(run.findings) and run.report["counts"]["critical"] == 1
    integrity_rows = {row["name"]: row for row in run.report["sections"]["integrity"]["artifacts"]}
    assert (
        integrity_rows["acme/tiny on gpu-a"]["files"] == 3 and integrity_rows["acme/other on gpu-a"]["problems"] == []
    )
    assert run.report["sections"]["disk"]["stores"]["gpu-a"]["free"] > 0
    listed = {row["name"]: row["flags"] for row in run.report["sections"]["deployments"]["deployments"]}
    assert listed[deployment.name] == ["model-files-corrupt"] and listed[bystander.name] == []
    actions = list(AuditEvent.objects.values_list("action", flat=True))
    for action in ("health_check.started", "model.corrupt", "deployment.flagged", "health_check.finished"):
        assert action in actions

    # The alert's inputs on the console's /metrics (what Prometheus scrapes and the shipped rules read).
    metrics = client.get("/metrics").content.decode()
    assert "llmdeploy_integrity_corrupt_artifacts 1" in metrics
    assert 'llmdeploy_healthcheck_findings{severity="critical"} 1' in metrics

    # The report page says it, with the next step and the re-download button.
    client.force_login(admin)
    page = client.get(f"/health/{run.pk}/").content.decode()
    assert "model.safetensors" in page and f'data-restore="{artifact.pk}"' in page and "Re-download" in page
    markdown = client.get(f"/health/{run.pk}/report.md").content.decode()
    assert "**critical** · integrity · acme/tiny on gpu-a" in markdown and "Next step" in markdown

    # Re-download: only the bad file is fetched again, at the pinned commit.
    served_before = hub_server.served("acme/tiny", "model.safetensors")
    config_before = hub_server.served("acme/tiny", "config.json")
    response = client.post(f"/health/models/{artifact.pk}/restore/", {"next": f"/health/{run.pk}/"})
    assert response.status_code == 302
    job = Job.objects.filter(
        kind="integrity_sweep", target_type="deployments.modelartifact", target_id=str(artifact.pk)
    ).latest("id")
    assert job.queue == "host.gpu-a" and job.params["restore"] == "redownload"
    assert runner.run(job.pk) == "succeeded"
    assert hub_server.served("acme/tiny", "model.safetensors") == served_before + len(weights)  # bytes served
    assert hub_server.served("acme/tiny", "config.json") == config_before
    artifact.refresh_from_db()
    assert artifact.status == "ready" and artifact.integrity_note == "" and artifact.integrity_checked_at is not None
    assert hashlib.sha256(weights_path.read_bytes()).hexdigest() == artifact.files_sha256["model.safetensors"]
    assert integrity.check_directory(artifact.path, artifact.files_sha256)[-1].status == "ok"
    deployment.refresh_from_db()
    assert deployment.flags == []
    assert "llmdeploy_integrity_corrupt_artifacts 0" in client.get("/metrics").content.decode()
    assert {"model.restore_requested", "model.restored", "deployment.flag_cleared"} <= set(
        AuditEvent.objects.values_list("action", flat=True)
    )
    # The next run finds nothing wrong with the store.
    again = run_health_check(admin)
    assert not [item for item in again.findings if item["check"] == "integrity"]


@pytest.mark.django_db
def test_a_missing_file_of_a_directory_import_is_named_and_a_recheck_restores_it(store, admin, engineer):
    from deployments.registry.services import model_import

    host = Host.objects.create(name="gpu-b", status="online", model_store=str(store))
    directory = store / "imports" / "local-model"
    directory.mkdir(parents=True)
    (directory / "config.json").write_bytes(CONFIG)
    (directory / "tokenizer.json").write_bytes(b"{}")
    (directory / "model.safetensors").write_bytes(make_safetensors({"w": ("F16", (64, 64))}))
    artifact = model_import(actor=engineer, host=host, directory=str(directory), repo_id="local/model")
    assert runner.run(Job.objects.get(kind="import", target_id=str(artifact.pk)).pk) == "succeeded"
    kept = (directory / "tokenizer.json").read_bytes()
    (directory / "tokenizer.json").unlink()

    run = run_health_check(admin)
    artifact.refresh_from_db()
    assert artifact.status == "corrupt" and artifact.integrity_note == "tokenizer.json is missing"
    assert run.findings[0]["severity"] == "critical" and "tokenizer.json is missing" in run.findings[0]["message"]

    job = health_services.artifact_restore(actor=admin, artifact=artifact)
    assert job.params["restore"] == "recheck"
    assert runner.run(job.pk) == "failed"  # nothing re-copied yet: still corrupt, said so
    assert "tokenizer.json is missing" in Job.objects.get(pk=job.pk).failure_detail
    assert ModelArtifact.objects.get(pk=artifact.pk).status == "corrupt"
    (directory / "tokenizer.json").write_bytes(kept)  # the operator copies the file back
    job = health_services.artifact_restore(actor=admin, artifact=artifact)
    assert runner.run(job.pk) == "succeeded"
    assert ModelArtifact.objects.get(pk=artifact.pk).status == "ready"


@pytest.mark.django_db
def test_a_stopped_sweep_resumes_without_rehashing_the_files_it_did(store, admin, monkeypatch, settings):
    from tests.factories.registry import ModelArtifactFactory

    host = Host.objects.create(name="gpu-c", status="online", model_store=str(store))
    artifacts = []
    for n in range(2):
        artifact = ModelArtifactFactory(host=host)
        root = Path(artifact.path)
        root.mkdir(parents=True)
        hashes = {}
        for i in range(3):
            data = hashlib.sha256(f"{n}-{i}".encode()).digest() * 1024
            (root / f"shard-{i}.bin").write_bytes(data)
            hashes[f"shard-{i}.bin"] = hashlib.sha256(data).hexdigest()
        artifact.files_sha256 = hashes
        artifact.save()
        artifacts.append(artifact)

    hashed: list[str] = []
    real = integrity.sha256_of

    def counting(path, **kw):
        hashed.append(str(path))
        if len(hashed) == 4:  # the runner stops here: the worker went away mid-sweep
            raise integrity.Stopped(str(path))
        return real(path, **kw)

    monkeypatch.setattr(integrity, "sha256_of", counting)
    run = health_services.health_check_start(actor=admin)
    runner.run(run.job_id)
    run.refresh_from_db()
    (first,) = run.progress["jobs"]
    assert runner.run(first) == "cancelled"
    run.refresh_from_db()
    done = {pk: set(state["files"]) for pk, state in run.progress["sweep"].items()}
    assert sum(len(files) for files in done.values()) == 3  # the fourth was stopped before it was recorded
    first_pass = list(hashed)

    # The report says the sweep did not finish; resuming hashes only what is left.
    assert any(item["check"] == "integrity" and item["severity"] == "warning" for item in run.findings)
    hashed.clear()
    monkeypatch.setattr(integrity, "sha256_of", lambda path, **kw: hashed.append(str(path)) or real(path, **kw))
    (second,) = [job.pk for job in health_services.health_check_resume(actor=admin, run=run)]
    assert runner.run(second) == "succeeded"
    run.refresh_from_db()
    assert run.state == "done"
    assert not set(hashed) & set(first_pass[:3])
    assert sorted(first_pass[:3] + hashed) == sorted(
        str(Path(a.path) / f"shard-{i}.bin") for a in artifacts for i in range(3)
    )
    assert all(state["finished"] and not state["problems"] for state in run.progress["sweep"].values())
    assert not [item for item in run.findings if item["check"] == "integrity"]

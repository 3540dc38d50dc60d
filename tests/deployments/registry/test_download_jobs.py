"""Download jobs end to end: the real huggingface_hub client and our engine against the Hub test server,
the job runner, the registry. Includes the kill -9 fault test with a real worker."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path

import pytest

from audit.models import AuditEvent
from deployments.models import AllowedEndpoint, Host, Job, ModelArtifact, ModelSource
from deployments.registry.services import model_add, model_cancel
from tests.deployments.registry.test_downloads import advertise_wrong_sha256
from tests.support.hub_server import make_safetensors
from workers import runner

CONFIG = b'{"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1}'


def weights(megabytes: int, seed: int) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest() * (2**20 // 32)
    return block * megabytes


@pytest.fixture
def mirror(hub_server, admin):
    AllowedEndpoint.objects.get_or_create(pattern="127.0.0.1")
    return ModelSource.objects.create(name="test mirror", kind="mirror", endpoint=hub_server.endpoint, created_by=admin)


@pytest.fixture
def host(db, tmp_path, settings):
    settings.MODEL_STORE = tmp_path / "store"
    return Host.objects.create(name="dl-node", status="online")


def add(engineer, mirror, host, repo="acme/small", **kw) -> ModelArtifact:
    return model_add(actor=engineer, source=mirror, repo_id=repo, host=host, **kw)


def job_of(artifact) -> Job:
    return Job.objects.filter(target_type="deployments.modelartifact", target_id=str(artifact.pk)).latest("id")


@pytest.mark.django_db
def test_download_publishes_a_verified_copy_with_a_manifest(hub_server, mirror, host, engineer, settings):
    files = {
        "config.json": CONFIG,
        "tokenizer.json": b"{}",
        "model.safetensors": make_safetensors({"w": ("BF16", (256, 1024))}),
        "pytorch_model.bin": b"x" * 1000,
    }
    hub_server.add_repo("acme/small", files)
    artifact = add(engineer, mirror, host)
    job = job_of(artifact)
    assert job.queue == "host.dl-node" and job.kind == "download"
    assert runner.run(job.pk) == "succeeded"
    artifact.refresh_from_db()
    path = Path(artifact.path)
    assert artifact.status == "ready" and path.is_dir() and path.parent.parent == settings.MODEL_STORE
    assert not (path / "pytorch_model.bin").exists()  # safetensors present: the .bin duplicate is skipped
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        assert (path / name).read_bytes() == files[name]
        assert artifact.files_sha256[name] == hashlib.sha256(files[name]).hexdigest()
    assert artifact.manifest["commit"] == hub_server.commit_sha("acme/small")
    assert {f["path"] for f in artifact.manifest["files"]} == {"config.json", "tokenizer.json", "model.safetensors"}
    assert not (settings.MODEL_STORE / ".staging" / f"artifact-{artifact.pk}").exists()
    assert job_of(artifact).progress["done"] == job_of(artifact).progress["total"] > 0
    assert AuditEvent.objects.filter(action="model.downloaded").count() == 1
    # The same repo@commit on the same host is stored once and shared.
    assert add(engineer, mirror, host) == artifact
    assert Job.objects.filter(kind="download").count() == 1


@pytest.mark.django_db
def test_a_corrupted_file_fails_the_job_with_the_cause_and_publishes_nothing(
    hub_server, mirror, host, engineer, settings
):
    data = weights(2, 1)
    hub_server.add_repo("acme/corrupt", {"config.json": CONFIG, "model.safetensors": data})
    artifact = add(engineer, mirror, host, repo="acme/corrupt")
    # From now on the bytes served no longer match the sha256 the Hub metadata promises.
    advertise_wrong_sha256(hub_server, "acme/corrupt", "model.safetensors")
    runner.run(job_of(artifact).pk)
    job, artifact = job_of(artifact), ModelArtifact.objects.get(pk=artifact.pk)
    assert (
        job.status == "failed"
        and job.failure_cause == "checksum_mismatch"
        and "model.safetensors" in job.failure_detail
    )
    assert artifact.status == "failed" and not list((settings.MODEL_STORE / "acme--corrupt").glob("*"))


@pytest.mark.django_db
def test_not_enough_disk_fails_before_downloading(hub_server, mirror, host, engineer, monkeypatch):
    from deployments.registry import downloads

    hub_server.add_repo("acme/big", {"config.json": CONFIG, "model.safetensors": weights(3, 3)})
    artifact = add(engineer, mirror, host, repo="acme/big")
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(downloads.selection.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 10**6, 10**6))
    runner.run(job_of(artifact).pk)
    job = job_of(artifact)
    assert job.status == "failed" and job.failure_cause == "no_space" and "GB" in job.failure_detail
    assert hub_server.served("acme/big", "model.safetensors") == 0


@pytest.mark.django_db(transaction=True)
def test_cancel_keeps_or_deletes_the_partial_files(hub_server, mirror, host, engineer, settings):
    hub_server.throttle_bytes_per_second = 2 * 2**20
    settings.JOB_CANCEL_POLL_SECONDS = 0.1
    for delete_partial in (False, True):
        repo = f"acme/slow-{int(delete_partial)}"
        hub_server.add_repo(repo, {"config.json": CONFIG, "model.safetensors": weights(8, 4)})
        artifact = add(engineer, mirror, host, repo=repo)
        job = job_of(artifact)
        import threading

        thread = threading.Thread(target=runner.run, args=(job.pk,))
        thread.start()
        time.sleep(1.0)
        model_cancel(actor=engineer, artifact=artifact, delete_partial=delete_partial)
        asked = time.monotonic()
        thread.join(10)
        assert time.monotonic() - asked < 3  # stopped within seconds
        job.refresh_from_db()
        staging = settings.MODEL_STORE / ".staging" / f"artifact-{artifact.pk}"
        assert job.status == "cancelled" and ModelArtifact.objects.get(pk=artifact.pk).status == "cancelled"
        assert staging.exists() is (not delete_partial)


@pytest.mark.django_db(transaction=True)
def test_kill_9_mid_download_resumes_once_refetching_under_5_percent(
    hub_server, mirror, host, engineer, redis_url, settings, tmp_path
):
    """F1: 64 MB at ~8 MB/s, kill -9 the worker at ~40 %, restart it: done once, every sha256 right."""
    from deployments.jobs.reaper import jobs_reap
    from tests.conftest import _start_worker, _test_database_url

    files = {
        "config.json": CONFIG,
        "model-00001-of-00002.safetensors": weights(32, 5),
        "model-00002-of-00002.safetensors": weights(32, 6),
    }
    total = sum(len(v) for v in files.values())
    hub_server.add_repo("acme/sixty-four", files)
    hub_server.throttle_bytes_per_second = 8 * 2**20
    env = {
        "REDIS_URL": redis_url,
        "DATABASE_URL": _test_database_url(),
        "MODEL_STORE": str(settings.MODEL_STORE),
        "JOB_LEASE_SECONDS": "2",
        "DOWNLOAD_CHUNK_BYTES": str(2**20),
        "AGENT_HOST_NAME": "",
    }
    artifact = add(engineer, mirror, host, repo="acme/sixty-four")
    job = job_of(artifact)
    workers = []

    def start():
        # No ping first: a solo worker busy with the download would only answer it afterwards.
        process, log = _start_worker(env, f"dl-{time.monotonic_ns()}", host.queue)
        workers.append((process, log))
        return process, log

    try:
        first, log = start()
        deadline = time.monotonic() + 60
        staging = settings.MODEL_STORE / ".staging" / f"artifact-{artifact.pk}"
        while time.monotonic() < deadline:
            on_disk = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file()) if staging.exists() else 0
            if on_disk >= 0.4 * total:
                break
            time.sleep(0.1)
        else:
            pytest.fail(Path(log.name).read_text()[-3000:])
        os.kill(first.pid, signal.SIGKILL)  # no goodbye: the lease just stops being renewed
        first.wait()
        time.sleep(2.5)
        assert jobs_reap()["retried"] == [job.pk]
        _second, log2 = start()
        deadline = time.monotonic() + 90
        while (
            time.monotonic() < deadline
            and not Job.objects.filter(pk=job.pk, status__in=["succeeded", "failed"]).exists()
        ):
            time.sleep(0.2)
        job.refresh_from_db()
        assert job.status == "succeeded", (job.failure_detail, Path(log2.name).read_text()[-3000:])
    finally:
        for process, worker_log in workers:
            if process.poll() is None:
                process.kill()
                process.wait()
            worker_log.close()
    served = sum(hub_server.served("acme/sixty-four", name) for name in files)
    assert served <= 1.05 * total, f"re-fetched {(served - total) / total:.1%}"
    artifact.refresh_from_db()
    for name, data in files.items():
        assert artifact.files_sha256[name] == hashlib.sha256(data).hexdigest()
        assert (Path(artifact.path) / name).stat().st_size == len(data)
    assert job.attempts == 2
    assert AuditEvent.objects.filter(action="model.downloaded", target_id=str(artifact.pk)).count() == 1
    assert AuditEvent.objects.filter(action="job.succeeded", target_id=str(job.pk)).count() == 1


@pytest.mark.django_db
def test_import_of_a_local_directory_validates_hashes_and_writes_a_manifest(host, engineer, settings):
    from deployments.registry.services import model_import

    good = settings.MODEL_STORE / "imports" / "llama-local"
    good.mkdir(parents=True)
    files = {"config.json": CONFIG, "tokenizer.json": b"{}", "model.safetensors": weights(1, 7)}
    for name, data in files.items():
        (good / name).write_bytes(data)
    artifact = model_import(actor=engineer, host=host, directory=str(good), repo_id="llama-local")
    assert runner.run(job_of(artifact).pk) == "succeeded"
    artifact.refresh_from_db()
    assert artifact.status == "ready" and artifact.imported
    assert artifact.files_sha256 == {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    assert (good / "manifest.json").exists()

    bad = settings.MODEL_STORE / "imports" / "no-weights"
    bad.mkdir(parents=True)
    (bad / "config.json").write_bytes(CONFIG)
    artifact = model_import(actor=engineer, host=host, directory=str(bad), repo_id="broken")
    runner.run(job_of(artifact).pk)
    job = job_of(artifact)
    assert job.status == "failed" and job.failure_cause == "invalid_layout" and job.next_step
    assert ModelArtifact.objects.get(pk=artifact.pk).status == "failed"

"""ModelScope as a model source: the download engine against the ModelScope test server (pinning to a commit,
sha256 from the file list, resume with Range, private repos), through the real job handler, and the source
kind in the form and the API."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import time
from pathlib import Path

import pytest

from console.errors import ApplicationError
from deployments.models import AllowedEndpoint, Host, Job, ModelArtifact, ModelSource
from deployments.registry import downloads
from deployments.registry.services import model_add, source_create
from tests.support.modelscope_server import TEST_TOKEN, ModelScopeServer
from workers import runner

CONFIG = b'{"model_type": "qwen2", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1}'
MiB = 2**20


def noise(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture
def modelscope():
    with ModelScopeServer() as server:
        yield server


@pytest.fixture
def source(modelscope, admin):
    AllowedEndpoint.objects.get_or_create(pattern="127.0.0.1")
    return source_create(actor=admin, name="modelscope test", kind="modelscope", endpoint=modelscope.endpoint)


@pytest.fixture
def host(db, tmp_path, settings):
    settings.MODEL_STORE = tmp_path / "store"
    return Host.objects.create(name="ms-node", status="online")


def job_of(artifact) -> Job:
    return Job.objects.filter(target_type="deployments.modelartifact", target_id=str(artifact.pk)).latest("id")


@pytest.mark.django_db
def test_download_is_pinned_to_the_commit_verified_and_published(modelscope, source, host, engineer):
    first = {"config.json": CONFIG, "model.safetensors": noise(MiB, 1), "sub/tokenizer.json": b"{}"}
    pinned = modelscope.add_repo("qwen/tiny", first)
    # "main" (the form's default) is ModelScope's master; the commit is fixed when the model is added.
    artifact = model_add(actor=engineer, source=source, repo_id="qwen/tiny", host=host)
    assert artifact.repo.commit == pinned
    # master moves on before the job runs: the job still fetches the pinned commit's bytes.
    modelscope.add_repo("qwen/tiny", {**first, "config.json": b'{"model_type": "changed"}'})
    assert runner.run(job_of(artifact).pk) == "succeeded"
    artifact.refresh_from_db()
    path = Path(artifact.path)
    assert artifact.status == "ready" and artifact.manifest["commit"] == pinned
    assert artifact.manifest["endpoint"] == modelscope.endpoint
    for name, data in first.items():
        assert (path / name).read_bytes() == data
        assert artifact.files_sha256[name] == hashlib.sha256(data).hexdigest()
    assert not (path / ".gitattributes").exists()


def test_without_commit_ids_in_the_revision_list_the_newest_file_commit_pins_it(modelscope):
    modelscope.revision_commit_ids = False
    modelscope.add_repo("qwen/moving", {"config.json": CONFIG, "model.safetensors": b"w1"})
    head = modelscope.add_repo("qwen/moving", {"config.json": b"{}", "model.safetensors": b"w1"})
    snapshot = downloads.resolve("qwen/moving", "main", endpoint=modelscope.endpoint, token=None, kind="modelscope")
    assert snapshot.commit == head and snapshot.revision == "main"
    assert {f.path: f.size for f in snapshot.files} == {"config.json": 2, "model.safetensors": 2}


def test_a_file_list_at_the_servers_cap_is_refused_not_trusted(modelscope, monkeypatch):
    from deployments.registry.downloads import modelscope as client

    monkeypatch.setattr(client, "LISTING_CAP", 3)  # ModelScope's is 3000
    modelscope.add_repo("qwen/many", {"a.json": b"{}", "b.json": b"{}"})  # + .gitattributes: 3 entries
    with pytest.raises(downloads.DownloadError) as refused:
        downloads.resolve("qwen/many", None, endpoint=modelscope.endpoint, token=None, kind="modelscope")
    assert refused.value.cause == "hub_metadata" and "incomplete" in refused.value.message


@pytest.mark.django_db
def test_a_file_whose_sha256_does_not_match_the_list_is_refused(modelscope, source, host, engineer, settings):
    modelscope.add_repo("qwen/bad", {"config.json": CONFIG, "model.safetensors": noise(MiB, 2)})
    artifact = model_add(actor=engineer, source=source, repo_id="qwen/bad", host=host)
    modelscope.advertise_wrong_sha256("qwen/bad", "model.safetensors")
    assert runner.run(job_of(artifact).pk) == "failed"
    job, artifact = job_of(artifact), ModelArtifact.objects.get(pk=artifact.pk)
    assert job.failure_cause == "checksum_mismatch" and "model.safetensors" in job.failure_detail
    assert artifact.status == "failed" and not list((settings.MODEL_STORE / "qwen--bad").glob("*"))


@pytest.mark.django_db
def test_a_cut_connection_resumes_with_a_range_request(modelscope, source, host, engineer):
    weights = noise(3 * MiB, 3)
    modelscope.add_repo("qwen/cut", {"config.json": CONFIG, "model.safetensors": weights})
    artifact = model_add(actor=engineer, source=source, repo_id="qwen/cut", host=host)
    modelscope.fail_after_bytes = MiB  # the weights' first response ends after 1 MiB
    assert runner.run(job_of(artifact).pk) == "succeeded"
    assert f"bytes={MiB}-" in modelscope.ranges
    assert modelscope.served("qwen/cut", "model.safetensors") == len(weights)  # nothing fetched twice
    artifact.refresh_from_db()
    assert artifact.files_sha256["model.safetensors"] == hashlib.sha256(weights).hexdigest()


def test_a_stopped_download_resumes_from_the_part_file(modelscope, tmp_path):
    """A download that gave up (the worker was stopped, the network gone) leaves its .part; the next run asks
    only for the rest."""
    weights = noise(2 * MiB, 4)
    modelscope.add_repo("qwen/stop", {"model.safetensors": weights})
    snapshot = downloads.resolve("qwen/stop", "master", endpoint=modelscope.endpoint, token=None, kind="modelscope")
    modelscope.fail_after_bytes = MiB // 2
    kw = {"endpoint": modelscope.endpoint, "token": None, "on_progress": lambda p: None, "should_cancel": bool}
    with pytest.raises(downloads.DownloadError) as stopped:
        downloads.download(snapshot, snapshot.files, tmp_path, retries=0, **kw)
    assert stopped.value.cause == "network"
    assert (tmp_path / "model.safetensors.part").stat().st_size == MiB // 2
    hashes = downloads.download(snapshot, snapshot.files, tmp_path, **kw)
    assert modelscope.ranges[-1] == f"bytes={MiB // 2}-"
    assert modelscope.served("qwen/stop", "model.safetensors") == len(weights)
    assert hashes["model.safetensors"] == hashlib.sha256(weights).hexdigest()


@pytest.mark.django_db
def test_a_redirect_off_the_allow_list_is_refused(modelscope, source, host, engineer):
    modelscope.add_repo("qwen/redirect", {"config.json": CONFIG})
    artifact = model_add(actor=engineer, source=source, repo_id="qwen/redirect", host=host)
    modelscope.redirect_files_to = "http://192.0.2.10:9000/oss"  # TEST-NET: not on the list
    assert runner.run(job_of(artifact).pk) == "failed"
    job = job_of(artifact)
    assert job.failure_cause == "endpoint_not_allowed" and "192.0.2.10" in job.failure_detail


@pytest.mark.django_db
def test_a_private_model_needs_the_sources_token(modelscope, admin, engineer, host):
    AllowedEndpoint.objects.get_or_create(pattern="127.0.0.1")
    modelscope.add_repo("acme/private", {"config.json": CONFIG}, private=True)
    anonymous = source_create(actor=admin, name="ms anonymous", kind="modelscope", endpoint=modelscope.endpoint)
    with pytest.raises(ApplicationError) as refused:
        model_add(actor=engineer, source=anonymous, repo_id="acme/private", host=host)
    assert "private or does not exist" in refused.value.message and "ModelScope SDK token" in refused.value.message
    signed_in = source_create(
        actor=admin, name="ms account", kind="modelscope", endpoint=modelscope.endpoint, token=TEST_TOKEN
    )
    signed_in.refresh_from_db()  # the token as the database gives it back: encrypted, revealed on use
    artifact = model_add(actor=engineer, source=signed_in, repo_id="acme/private", host=host)
    assert runner.run(job_of(artifact).pk) == "succeeded"
    assert (Path(ModelArtifact.objects.get(pk=artifact.pk).path) / "config.json").read_bytes() == CONFIG

    # A token revoked between adding the model and the download: the job says so, on the token.
    modelscope.add_repo("acme/revoked", {"config.json": CONFIG}, private=True)
    artifact = model_add(actor=engineer, source=signed_in, repo_id="acme/revoked", host=host)
    modelscope.required_token = "another"
    assert runner.run(job_of(artifact).pk) == "failed"
    job = job_of(artifact)
    assert job.failure_cause == "repo_not_found" and "ModelScope SDK token" in job.next_step


def test_a_file_refused_after_the_listing_points_at_the_token(modelscope, tmp_path):
    modelscope.add_repo("acme/secret", {"config.json": CONFIG}, private=True)
    snapshot = downloads.resolve("acme/secret", None, endpoint=modelscope.endpoint, token=TEST_TOKEN, kind="modelscope")
    modelscope.required_token = "rotated"  # the token stops working between the listing and the files
    with pytest.raises(downloads.DownloadError) as refused:
        downloads.download(
            snapshot, snapshot.files, tmp_path, endpoint=modelscope.endpoint, token=TEST_TOKEN,
            on_progress=lambda p: None, should_cancel=bool,
        )  # fmt: skip
    assert refused.value.cause == "file_not_found" and "config.json" in refused.value.message
    assert "ModelScope SDK token" in refused.value.next_step


@pytest.mark.django_db
def test_an_unknown_revision_says_which_one(modelscope, source, host, engineer):
    modelscope.add_repo("qwen/rev", {"config.json": CONFIG}, tag="v1.0")
    assert model_add(actor=engineer, source=source, repo_id="qwen/rev", host=host, revision="v1.0").repo.commit
    with pytest.raises(ApplicationError) as missing:
        model_add(actor=engineer, source=source, repo_id="qwen/rev", host=host, revision="v9")
    assert missing.value.field == "revision" and "'v9'" in missing.value.message


@pytest.mark.django_db
def test_the_form_and_the_api_add_a_modelscope_source(client, api, admin, settings):
    settings.MODELSCOPE_ENDPOINT = "https://www.modelscope.cn"
    client.force_login(admin)
    assert 'value="modelscope"' in client.get("/models/sources/").content.decode()
    form = {"name": "ModelScope", "kind": "modelscope", "endpoint": ""}
    refused = client.post("/models/sources/", form)  # its default address must be allowed like any other
    assert refused.status_code == 400 and "www.modelscope.cn" in refused.content.decode()
    AllowedEndpoint.objects.create(pattern="www.modelscope.cn")
    response = client.post("/models/sources/", form)
    assert response.status_code == 302
    source = ModelSource.objects.get(name="ModelScope")
    assert source.kind == "modelscope" and source.url == "https://www.modelscope.cn"
    page = client.get("/models/sources/").content.decode()
    assert "<code>https://www.modelscope.cn</code>" in page
    # A mirror of ModelScope: the endpoint, checked against the allow-list like any other.
    AllowedEndpoint.objects.get_or_create(pattern="10.9.0.0/16")
    created = api(admin).post(
        "/api/v1/sources/", {"name": "ms-mirror", "kind": "modelscope", "endpoint": "http://10.9.0.5:8000"}
    )
    assert created.data["kind"] == "modelscope" and created.data["url"] == "http://10.9.0.5:8000"
    api(admin).post("/api/v1/sources/", {"name": "x", "kind": "local"}, expected=400)


@pytest.mark.django_db(transaction=True)
def test_kill_9_mid_download_resumes_and_verifies(modelscope, source, host, engineer, redis_url, settings):
    """The worker is killed mid-download (kill -9) and another takes the job over: it resumes from the bytes on
    disk (little is fetched twice) and every file verifies against the list's sha256."""
    from deployments.jobs.reaper import jobs_reap
    from tests.conftest import _start_worker, _test_database_url

    files = {"config.json": CONFIG, "model.safetensors": noise(16 * MiB, 5)}
    total = sum(len(v) for v in files.values())
    modelscope.add_repo("qwen/killed", files)
    modelscope.throttle_bytes_per_second = 4 * MiB
    env = {
        "REDIS_URL": redis_url,
        "DATABASE_URL": _test_database_url(),
        "MODEL_STORE": str(settings.MODEL_STORE),
        "JOB_LEASE_SECONDS": "2",
        "DOWNLOAD_CHUNK_BYTES": str(MiB),
        "AGENT_HOST_NAME": "",
    }
    artifact = model_add(actor=engineer, source=source, repo_id="qwen/killed", host=host)
    job = job_of(artifact)
    staging = settings.MODEL_STORE / ".staging" / f"artifact-{artifact.pk}"
    workers = []
    try:
        workers.append(_start_worker(env, "ms-first", host.queue))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            on_disk = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file()) if staging.exists() else 0
            if on_disk >= 0.4 * total:
                break
            time.sleep(0.1)
        else:
            pytest.fail(Path(workers[0][1].name).read_text()[-3000:])
        os.kill(workers[0][0].pid, signal.SIGKILL)
        workers[0][0].wait()
        time.sleep(2.5)  # the lease (2 s) runs out
        assert jobs_reap()["retried"] == [job.pk]
        workers.append(_start_worker(env, "ms-second", host.queue))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not Job.objects.filter(pk=job.pk, status__in=["succeeded", "failed"]):
            time.sleep(0.2)
        job.refresh_from_db()
        assert job.status == "succeeded", (job.failure_detail, Path(workers[1][1].name).read_text()[-3000:])
    finally:
        for process, log in workers:
            if process.poll() is None:
                process.kill()
                process.wait()
            log.close()
    served = sum(modelscope.served("qwen/killed", name) for name in files)
    assert served <= 1.05 * total, f"re-fetched {(served - total) / total:.1%}"
    assert any(r and not r.startswith("bytes=0-") for r in modelscope.ranges)  # the second worker resumed
    artifact.refresh_from_db()
    assert artifact.status == "ready" and job.attempts == 2
    for name, data in files.items():
        assert artifact.files_sha256[name] == hashlib.sha256(data).hexdigest()

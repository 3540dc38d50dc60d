"""Importing a dataset version from a Hub dataset repo, against the Hub test server (real HTTP, the real
huggingface_hub client and download engine): the request pins the commit and refuses what cannot work with the
field at fault; the job downloads resumably, checks the Hub's hash, and registers the file through the upload path.
Jobs run in-process through the runner as the registry's download tests do, and once in a real worker killed with
SIGKILL mid-transfer."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from django.db import connection

from audit.models import AuditEvent
from deployments.datasets import storage
from deployments.models import AllowedEndpoint, DatasetUpload, DatasetVersion, Job, ModelSource
from deployments.registry.downloads import hub
from tests.deployments.datasets.conftest import api, chat, jsonl
from tests.support.hub_server import LFS_THRESHOLD_BYTES
from workers import runner
from workers.handlers.dataset_import import staging_dir

REPO = "acme/support-chats"
SMALL = jsonl([chat(f"question {i}") for i in range(40)])  # stored in git: verified by its git blob id
LARGE = jsonl([chat(f"question {i}", "answer " * 20) for i in range(12_000)])  # LFS: verified by its sha256


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(hub, "BACKOFF_BASE_S", 0.01)


@pytest.fixture
def mirror(hub_server, admin):
    AllowedEndpoint.objects.get_or_create(pattern="127.0.0.1")
    return ModelSource.objects.create(name="test mirror", kind="mirror", endpoint=hub_server.endpoint, created_by=admin)


@pytest.fixture
def repo(hub_server) -> str:
    """A dataset repo with a small JSONL (git), a large one (LFS), a README and a file of no dataset format."""
    assert len(LARGE) > LFS_THRESHOLD_BYTES > len(SMALL)
    files = {"data/train.jsonl": SMALL, "data/large.jsonl": LARGE, "README.md": b"# chats\n", "notes.txt": b"x"}
    return hub_server.add_repo(REPO, files, repo_type="dataset")


def start(user, dataset, **fields):
    body = {"source": "test mirror", "repo_id": REPO, "revision": "main", "path": "data/train.jsonl", **fields}
    return api(user).post(f"/api/v1/datasets/{dataset.pk}/import/", body, format="json")


def started_job(user, dataset, **fields) -> Job:
    response = start(user, dataset, **fields)
    assert response.status_code == 202, response.content
    return Job.objects.get(pk=response.json()["job"])


def resolve_gets(hub_server, path: str):
    return [r for r in hub_server.requests_to(path, "GET") if r.path.startswith("/datasets/")]


# -- the import ----------------------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(("path", "content"), [("data/train.jsonl", SMALL), ("data/large.jsonl", LARGE)])
def test_an_import_pins_the_commit_and_registers_the_files_bytes_as_a_version(
    hub_server, mirror, repo, admin, dataset, path, content
):
    job = started_job(admin, dataset, path=path)
    assert job.kind == "dataset_import" and job.queue == "celery" and job.status == "pending"
    assert job.params["commit"] == repo and job.params["size"] == len(content) and job.params["path"] == path
    assert job.params["sha256"] == (sha256(content) if content is LARGE else "")  # the Hub gives it for LFS only
    # main moves on after the request: the job still imports the commit it was pinned to.
    hub_server.add_repo(REPO, {path: jsonl([{"text": "later"}])}, repo_type="dataset")

    assert runner.run(job.pk) == "succeeded"

    version = DatasetVersion.objects.get(dataset=dataset)
    assert version.version == 1 and version.sha256 == sha256(content) and version.size == len(content)
    assert storage.absolute(version.path).read_bytes() == content
    assert version.shape == "chat" and version.row_count == content.count(b"\n")
    job.refresh_from_db()
    assert job.result["commit"] == repo and job.result["path"] == path and job.result["repo_id"] == REPO
    assert job.result["version"] == 1 and job.result["sha256"] == version.sha256
    assert job.progress["done"] == job.progress["total"] == len(content)
    imported = AuditEvent.objects.get(action="dataset.imported")
    assert imported.details["commit"] == repo and imported.details["path"] == path
    assert imported.details["source"] == "test mirror" and imported.details["version"] == 1
    requested = AuditEvent.objects.get(action="dataset.import_requested")
    assert requested.details["commit"] == repo and requested.details["job"] == job.pk
    assert AuditEvent.objects.filter(action="dataset.versioned").count() == 1
    assert [r.path for r in resolve_gets(hub_server, path)] == [f"/datasets/{REPO}/resolve/{repo}/{path}"]
    assert not staging_dir(job.params).exists()
    assert not list((storage.store() / "uploads").iterdir())


@pytest.mark.django_db
def test_a_transfer_cut_in_the_middle_resumes_with_a_range_and_ends_verified(hub_server, mirror, repo, admin, dataset):
    hub_server.fail_after_bytes, hub_server.fail_filename = 2**20, "data/large.jsonl"
    job = started_job(admin, dataset, path="data/large.jsonl")

    assert runner.run(job.pk) == "succeeded"

    assert hub_server.failures_injected == 1
    assert [r.range for r in resolve_gets(hub_server, "data/large.jsonl")] == [None, f"bytes={2**20}-"]
    assert hub_server.served(REPO, "data/large.jsonl") == len(LARGE)  # nothing fetched twice
    assert DatasetVersion.objects.get(dataset=dataset).sha256 == sha256(LARGE)


@pytest.mark.django_db
def test_a_retry_resumes_from_the_bytes_a_killed_attempt_left_on_disk(hub_server, mirror, repo, admin, dataset):
    job = started_job(admin, dataset, path="data/large.jsonl")
    part = staging_dir(job.params) / "data" / "large.jsonl.part"
    part.parent.mkdir(parents=True)
    kept = 700_000
    part.write_bytes(LARGE[:kept])  # what an attempt killed mid-transfer leaves

    assert runner.run(job.pk) == "succeeded"

    assert [r.range for r in resolve_gets(hub_server, "data/large.jsonl")] == [f"bytes={kept}-"]
    assert hub_server.served(REPO, "data/large.jsonl") == len(LARGE) - kept
    assert DatasetVersion.objects.get(dataset=dataset).sha256 == sha256(LARGE)


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["data/train.jsonl", "data/large.jsonl"])
def test_wrong_bytes_are_refused_and_nothing_is_registered(hub_server, mirror, repo, admin, dataset, path):
    hub_server.corrupt_filename = path  # the Hub's metadata is right, the bytes are not
    job = started_job(admin, dataset, path=path)

    assert runner.run(job.pk) == "failed"

    job.refresh_from_db()
    assert job.failure_cause == "checksum_mismatch" and path in job.failure_detail
    expected = "sha256" if path == "data/large.jsonl" else "git blob sha1"
    assert f"expected {expected}" in job.failure_detail
    assert not DatasetVersion.objects.exists() and not DatasetUpload.objects.exists()
    assert not staging_dir(job.params).exists()
    assert not AuditEvent.objects.filter(action__in=["dataset.versioned", "dataset.imported"]).exists()


@pytest.mark.django_db
def test_an_attempt_after_the_registration_finds_the_version_instead_of_adding_one(
    hub_server, mirror, repo, admin, dataset
):
    job = started_job(admin, dataset)
    assert runner.run(job.pk) == "succeeded"
    # The worker died after registering, before it wrote the job's outcome: the reaper hands the job out again.
    Job.objects.filter(pk=job.pk).update(status="pending", lease_owner="", result={})
    hub_server.reset_stats()

    assert runner.run(job.pk) == "succeeded"

    job.refresh_from_db()
    assert job.result["version"] == 1 and DatasetVersion.objects.count() == 1
    assert hub_server.requests == []  # nothing downloaded again
    assert AuditEvent.objects.filter(action="dataset.imported").count() == 1


@pytest.mark.django_db
def test_a_gpu_agent_that_takes_an_import_refuses_it_and_touches_nothing(mirror, repo, admin, dataset, settings):
    job = started_job(admin, dataset)
    settings.GPU_AGENT = True
    assert runner.run(job.pk) == "failed"
    job.refresh_from_db()
    assert job.failure_cause == "wrong_worker" and "console's worker" in job.failure_detail
    assert not DatasetUpload.objects.exists() and not DatasetVersion.objects.exists()


@pytest.mark.django_db
def test_a_file_that_is_no_dataset_fails_by_line_and_registers_nothing(hub_server, mirror, admin, dataset):
    hub_server.add_repo(REPO, {"bad.jsonl": jsonl([chat("ok")]) + b"{not json\n"}, repo_type="dataset")
    job = started_job(admin, dataset, path="bad.jsonl")

    assert runner.run(job.pk) == "failed"

    job.refresh_from_db()
    assert job.failure_cause == "dataset_invalid" and "line 2" in job.failure_detail
    assert not DatasetVersion.objects.exists() and not list((storage.store() / "uploads").iterdir())


@pytest.mark.django_db
def test_the_same_file_again_is_refused_as_the_version_it_already_is(hub_server, mirror, repo, admin, dataset):
    assert runner.run(started_job(admin, dataset).pk) == "succeeded"
    again = started_job(admin, dataset)
    assert runner.run(again.pk) == "failed"
    again.refresh_from_db()
    assert "version 1 already" in again.failure_detail and DatasetVersion.objects.count() == 1
    assert DatasetUpload.objects.filter(status="receiving").count() == 0


@pytest.mark.django_db(transaction=True)
def test_cancel_stops_the_download_within_seconds_and_registers_nothing(
    hub_server, mirror, repo, admin, dataset, settings
):
    settings.JOB_CANCEL_POLL_SECONDS = 0.1
    hub_server.throttle_bytes_per_second = 512 * 1024
    job = started_job(admin, dataset, path="data/large.jsonl")

    def work() -> None:
        try:
            runner.run(job.pk)
        finally:
            connection.close()  # this thread's own connection, or the test database cannot be dropped

    thread = threading.Thread(target=work)
    thread.start()
    deadline = time.monotonic() + 20
    while hub_server.served(REPO, "data/large.jsonl") < 100_000 and time.monotonic() < deadline:
        time.sleep(0.05)
    cancel = api(admin).post(f"/api/v1/datasets/{dataset.pk}/import/cancel/", {"job": job.pk}, format="json")
    assert cancel.status_code == 202, cancel.content
    asked = time.monotonic()
    thread.join(15)
    assert time.monotonic() - asked < 3
    job.refresh_from_db()
    assert job.status == "cancelled" and not DatasetVersion.objects.exists()
    assert not staging_dir(job.params).exists()


# -- refusals in the request ---------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"repo_id": "acme/nothing"}, "repo_id", "No dataset acme/nothing on test mirror"),
        ({"revision": "v9"}, "revision", "has no revision v9"),
        ({"path": "data/test.jsonl"}, "path", "has no file data/test.jsonl. Its data files: data/large.jsonl"),
        ({"path": "notes.txt"}, "path", "must end in .csv, .json, .jsonl, .ndjson, .parquet"),
        ({"path": "../etc/passwd.jsonl"}, "path", "path inside the repo"),
        ({"repo_id": "https://huggingface.co/datasets/acme/x"}, "repo_id", "looks like org/name"),
    ],
)
def test_a_request_that_cannot_work_is_refused_on_its_field(
    hub_server, mirror, repo, admin, dataset, fields, field, words
):
    response = start(admin, dataset, **fields)
    assert response.status_code == 400, response.content
    assert list(response.json()) == [field] and words in response.json()[field][0]
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_a_wrong_format_is_refused_before_any_request_to_the_source(hub_server, mirror, repo, admin, dataset):
    hub_server.reset_stats()
    assert start(admin, dataset, path="README.md").status_code == 400
    assert hub_server.requests == []


@pytest.mark.django_db
def test_a_file_over_the_upload_limit_is_refused(hub_server, mirror, repo, admin, dataset, settings):
    settings.DATASET_UPLOAD_MAX_BYTES = len(LARGE) - 1
    response = start(admin, dataset, path="data/large.jsonl")
    assert response.status_code == 400
    assert f"allows at most {len(LARGE) - 1}" in response.json()["path"][0]
    assert start(admin, dataset).status_code == 202  # the small one fits


@pytest.mark.django_db
def test_a_source_off_the_allow_list_is_refused_without_contacting_it(hub_server, repo, admin, dataset):
    ModelSource.objects.create(name="test mirror", kind="mirror", endpoint=hub_server.endpoint)
    response = start(admin, dataset)
    assert response.status_code == 400
    assert "not on the endpoint allow-list" in response.json()["source"][0]
    assert hub_server.requests == [] and not Job.objects.exists()


@pytest.mark.django_db
def test_an_unreachable_source_is_one_sentence(admin, dataset):
    AllowedEndpoint.objects.create(pattern="127.0.0.1")
    ModelSource.objects.create(name="test mirror", kind="mirror", endpoint="http://127.0.0.1:9")
    response = start(admin, dataset)
    assert response.status_code == 400
    assert response.json()["source"][0].startswith("Cannot reach 127.0.0.1: the connection was refused.")


@pytest.mark.django_db
def test_a_gated_repo_needs_a_token_that_was_granted_access(hub_server, mirror, admin, dataset, credential):
    hub_server.add_repo(REPO, {"train.jsonl": SMALL}, repo_type="dataset", gated="manual")
    refused = start(admin, dataset, path="train.jsonl")
    assert refused.status_code == 400 and "is a gated dataset" in refused.json()["credential"][0]
    credential.value = hub_server.required_token
    credential.save()
    job = started_job(admin, dataset, path="train.jsonl", credential=credential.pk)
    assert runner.run(job.pk) == "succeeded"
    assert DatasetVersion.objects.get().sha256 == sha256(SMALL)
    assert all(r.token == hub_server.required_token for r in resolve_gets(hub_server, "train.jsonl"))


# -- who may ---------------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_engineer_without_manage_datasets_gets_403_and_a_steward_may(
    hub_server, mirror, repo, admin, engineer, team, dataset
):
    from console.accounts.services.access import object_grant

    assert start(engineer, dataset).status_code == 403
    assert not Job.objects.exists()
    assert AuditEvent.objects.filter(action="permission.denied", actor_id=engineer.pk).exists()
    object_grant(actor=admin, grantee=team, action="manage_datasets", target=team)
    assert start(engineer, dataset).status_code == 202


# -- the page ---------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_dataset_page_imports_and_shows_refusals_on_their_field(
    client, hub_server, mirror, repo, admin, engineer, dataset
):
    client.force_login(engineer)
    assert 'id="dataset-hub-import-form"' not in client.get(f"/datasets/{dataset.pk}/").content.decode()
    client.force_login(admin)
    assert 'id="dataset-hub-import-form"' in client.get(f"/datasets/{dataset.pk}/").content.decode()
    form = {"source": mirror.pk, "repo_id": REPO, "revision": "main", "path": "data/missing.jsonl"}
    refused = client.post(f"/datasets/{dataset.pk}/import/", form)
    page = refused.content.decode()
    assert refused.status_code == 400 and 'data-field-error="path"' in page and "has no file" in page
    started = client.post(f"/datasets/{dataset.pk}/import/", {**form, "path": "data/train.jsonl"})
    assert started.status_code == 302 and started["Location"] == f"/datasets/{dataset.pk}/"
    job = Job.objects.get(kind="dataset_import")
    page = client.get(f"/datasets/{dataset.pk}/").content.decode()
    assert f'data-import-job="{job.pk}"' in page and f'name="cancel" value="{job.pk}"' in page
    assert client.post(f"/datasets/{dataset.pk}/import/", {"cancel": job.pk}).status_code == 302
    assert Job.objects.get(pk=job.pk).cancel_requested


# -- a real worker killed mid-transfer ------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_kill_9_of_the_worker_mid_transfer_resumes_from_the_bytes_on_disk(
    hub_server, mirror, repo, admin, dataset, redis_url, settings
):
    from deployments.jobs.reaper import jobs_reap
    from tests.conftest import _start_worker, _test_database_url

    hub_server.throttle_bytes_per_second = 1024 * 1024
    env = {
        "REDIS_URL": redis_url,
        "DATABASE_URL": _test_database_url(),
        "DATASET_STORE": str(settings.DATASET_STORE),
        "JOB_LEASE_SECONDS": "2",
        "DOWNLOAD_CHUNK_BYTES": str(2**16),
        "AGENT_HOST_NAME": "",
    }
    # A queue of its own: the suite's shared worker consumes "celery" and must not take this job.
    settings.CONSOLE_QUEUE = queue = f"imports-{time.monotonic_ns()}"
    job = started_job(admin, dataset, path="data/large.jsonl")
    part = staging_dir(job.params) / "data" / "large.jsonl.part"
    workers = []

    def start_worker():
        process, log = _start_worker(env, f"import-{time.monotonic_ns()}", queue)
        workers.append((process, log))
        return process, log

    try:
        first, log = start_worker()
        deadline = time.monotonic() + 60
        while not (part.exists() and part.stat().st_size >= 0.3 * len(LARGE)):
            if time.monotonic() > deadline:
                pytest.fail(Path(log.name).read_text()[-3000:])
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGKILL)  # no goodbye: the lease stops being renewed
        first.wait()
        kept = part.stat().st_size
        time.sleep(2.5)
        assert jobs_reap()["retried"] == [job.pk]
        _second, log = start_worker()
        deadline = time.monotonic() + 90
        while not Job.objects.filter(pk=job.pk, status__in=["succeeded", "failed"]).exists():
            if time.monotonic() > deadline:
                pytest.fail(Path(log.name).read_text()[-3000:])
            time.sleep(0.2)
    finally:
        for process, worker_log in workers:
            if process.poll() is None:
                process.kill()
                process.wait()
            worker_log.close()
    job.refresh_from_db()
    assert job.status == "succeeded" and job.attempts == 2, job.failure_detail
    ranges = [r.range for r in resolve_gets(hub_server, "data/large.jsonl")]
    assert ranges[0] is None and ranges[-1] == f"bytes={kept}-"  # the retry asked for what was not on disk
    assert hub_server.served(REPO, "data/large.jsonl") <= 1.05 * len(LARGE)
    version = DatasetVersion.objects.get(dataset=dataset)
    assert version.sha256 == sha256(LARGE) and storage.absolute(version.path).read_bytes() == LARGE
    assert AuditEvent.objects.filter(action="dataset.imported").count() == 1

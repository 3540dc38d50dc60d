"""Disk full in the model store: a real small ext4 (loop-mounted) holds MODEL_STORE, the real download job fetches
from the Hub test server, and the disk fills under it. The job fails with the host's name, how much to free and
the other way out; nothing is published; after space is freed a retry resumes and ends verified."""

from __future__ import annotations

import hashlib
import re
import shutil
import threading
import time
from pathlib import Path

import pytest
from django.db import connection

from audit.models import AuditEvent
from deployments.models import AllowedEndpoint, Host, Job, ModelArtifact, ModelSource
from deployments.registry.services import model_add
from tests.faults import harness
from tests.faults.harness import Trial, fault_report, run_trial, wait_until
from tests.faults.loopfs import MiB, loop_filesystem
from tests.faults.stream_watch import StreamWatcher, live_console, session_cookie
from workers import runner

pytestmark = [pytest.mark.fault, pytest.mark.django_db(transaction=True)]  # the job runs in a thread of its own

CONFIG = b'{"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1}'
MUST_HOLD = (
    "the job fails naming the host's full model store, how many MiB to free or another host; nothing is "
    "published; the partial files are kept; after space is freed a retry resumes and ends verified"
)


def weights(megabytes: int, seed: int) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest() * (MiB // 32)
    return block * megabytes


def job_of(artifact: ModelArtifact) -> Job:
    return Job.objects.filter(target_type="deployments.modelartifact", target_id=str(artifact.pk)).latest("id")


def on_disk(staging: Path) -> int:
    return sum(p.stat().st_size for p in staging.rglob("*") if p.is_file()) if staging.exists() else 0


def run_in_thread(job_id: int) -> None:
    try:
        runner.run(job_id)
    finally:
        connection.close()  # the thread's own connection, or the test database cannot be dropped


@pytest.fixture
def console(tmp_path, redis_url):
    """The console under daphne, for a browser-like client following the job's live log through the fault."""
    with live_console(tmp_path, redis_url) as server:
        yield server


@pytest.fixture
def store(tmp_path, settings):
    with loop_filesystem(tmp_path, size_mib=64) as volume:
        settings.MODEL_STORE = volume.mountpoint / "models"
        settings.DOWNLOAD_FREE_MARGIN_BYTES = MiB  # the default 1 GB margin would not fit this disk at all
        settings.DOWNLOAD_CHUNK_BYTES = MiB
        yield volume


@pytest.fixture
def mirror(hub_server, admin):
    AllowedEndpoint.objects.get_or_create(pattern="127.0.0.1")
    return ModelSource.objects.create(name="test mirror", kind="mirror", endpoint=hub_server.endpoint, created_by=admin)


def test_a_full_model_store_fails_the_download_clearly_and_a_retry_resumes(
    hub_server, mirror, engineer, admin, store, settings, console
):
    host = Host.objects.create(name="dl-node", status="online")
    files = {"config.json": CONFIG, "model.safetensors": weights(24, 1)}
    total = sum(map(len, files.values()))

    with fault_report("disk-full-store", "The model store's disk fills mid-download", MUST_HOLD) as report:
        for trial in harness.repetitions():
            repo = f"acme/filling-{trial}"
            hub_server.add_repo(repo, files)

            def body(repo=repo) -> Trial:
                hub_server.throttle_bytes_per_second = 12 * MiB  # ~2 s for the model: room to fill the disk under it
                artifact = model_add(actor=engineer, source=mirror, repo_id=repo, host=host)
                staging = settings.MODEL_STORE / ".staging" / f"artifact-{artifact.pk}"
                failing = job_of(artifact)
                watcher = StreamWatcher(console.url, f"/ws/jobs/{failing.pk}/", session_cookie(admin)).start()
                worker = threading.Thread(target=run_in_thread, args=(failing.pk,))
                worker.start()
                fill_at = harness.random_delay(0.15, 0.6) * total
                try:
                    started = wait_until(lambda: on_disk(staging) >= fill_at or not worker.is_alive(), 30)
                    ended = job_of(artifact).failure_detail
                    assert started is not None and worker.is_alive(), f"ended before {fill_at / MiB:.1f} MiB: {ended}"
                    store.fill()  # another writer takes the rest of the disk
                finally:
                    worker.join(60)
                job, artifact = job_of(artifact), ModelArtifact.objects.get(pk=artifact.pk)
                kept = on_disk(staging)
                # The live log stayed whole through the fault: every line the job stored reached the client.
                failing.refresh_from_db()
                ended = watcher.wait_for_end(30)
                watcher.stop()
                assert ended and watcher.missing(failing.log_seq) == [], (failing.log_seq, watcher.errors)

                # A clear failure: the host, how much is still to come, how much to free, and the other way out.
                assert job.status == "failed" and job.failure_cause == "no_space", (job.status, job.failure_detail)
                assert job.failure_detail.startswith("The model store on dl-node is full: "), job.failure_detail
                short = re.search(
                    r"Free at least ([\d,]+) MiB in (\S+) on dl-node, or choose another host", job.next_step
                )
                assert short and int(short[1].replace(",", "")) * MiB >= total - kept, job.next_step
                assert "already downloaded are kept" in job.next_step
                # Nothing half-published: no ready record, no directory under the store, no "downloaded" event.
                assert artifact.status == "failed" and artifact.path == ""
                assert not (settings.MODEL_STORE / repo.replace("/", "--")).exists()
                assert not AuditEvent.objects.filter(action="model.downloaded", target_id=str(artifact.pk)).exists()
                # The partial files stay for the retry, as the next step says.
                assert 0 < kept < total and any(p.name.endswith(".part") for p in staging.rglob("*"))

                store.free()
                freed = time.monotonic()
                assert model_add(actor=engineer, source=mirror, repo_id=repo, host=host) == artifact  # the retry
                hub_server.throttle_bytes_per_second = None
                assert runner.run(job_of(artifact).pk) == "succeeded", job_of(artifact).failure_detail
                recover_s = time.monotonic() - freed
                artifact.refresh_from_db()
                for name, data in files.items():
                    assert (Path(artifact.path) / name).read_bytes() == data
                    assert artifact.files_sha256[name] == hashlib.sha256(data).hexdigest()
                served = sum(hub_server.served(repo, name) for name in files)
                assert served <= total + kept * 0.05 + 2 * MiB, f"served {served} for {total}: not resumed"
                assert not staging.exists()
                shutil.rmtree(artifact.path)  # room for the next trial's model on the small disk
                return Trial(True, recover_s, f"{kept / MiB:.1f} MiB of {total / MiB:.0f} kept when the disk filled")

            run_trial(report, body)


def test_a_model_bigger_than_the_free_space_fails_before_a_byte_is_fetched(hub_server, mirror, engineer, store):
    host = Host.objects.create(name="small-node", status="online")
    hub_server.add_repo("acme/too-big", {"config.json": CONFIG, "model.safetensors": weights(80, 2)})
    artifact = model_add(actor=engineer, source=mirror, repo_id="acme/too-big", host=host)
    assert runner.run(job_of(artifact).pk) == "failed"
    job = job_of(artifact)
    assert job.failure_cause == "no_space" and job.failure_detail.startswith("The model store on small-node is full")
    free_mib = store.free_bytes() / MiB
    short = int(re.search(r"Free at least ([\d,]+) MiB", job.next_step)[1].replace(",", ""))
    assert 80 + 1 - free_mib <= short <= 80 + 1 - free_mib + 2  # the model, the margin, less what is free
    assert "choose another host" in job.next_step
    assert hub_server.served("acme/too-big", "model.safetensors") == 0
    assert ModelArtifact.objects.get(pk=artifact.pk).status == "failed"

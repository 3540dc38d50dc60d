"""Re-hashing model files against their manifest (workers/integrity.py), and the integrity sweep surviving a worker
killed mid-way: a real Celery worker on the host's queue, kill -9, the reaper, a second worker that goes on from the
files the first one recorded."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import time
from pathlib import Path

import pytest

from workers import integrity


def write(root: Path, files: dict[str, bytes]) -> dict[str, str]:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


def test_each_file_is_ok_mismatched_or_missing_and_named(tmp_path):
    expected = write(tmp_path, {"config.json": b"{}", "sub/model.safetensors": os.urandom(3 * 2**20 + 7)})
    expected["tokenizer.json"] = hashlib.sha256(b"gone").hexdigest()
    results = {check.path: check for check in integrity.check_directory(tmp_path, expected)}
    assert results["config.json"].status == "ok" and results["sub/model.safetensors"].status == "ok"
    assert results["sub/model.safetensors"].size == 3 * 2**20 + 7
    assert (
        results["tokenizer.json"].status == "missing"
        and results["tokenizer.json"].detail == "tokenizer.json is missing"
    )

    with open(tmp_path / "sub/model.safetensors", "r+b") as handle:
        handle.seek(2**20)
        byte = handle.read(1)
        handle.seek(2**20)
        handle.write(bytes([byte[0] ^ 0x80]))
    check = integrity.check_file(tmp_path, "sub/model.safetensors", expected["sub/model.safetensors"])
    assert check.status == "mismatch" and check.detail.startswith("sub/model.safetensors: sha256 ")


def test_files_done_are_skipped_and_each_is_reported_as_it_finishes(tmp_path):
    expected = write(tmp_path, {f"shard-{i}.bin": bytes([i]) * 1000 for i in range(4)})
    seen = []
    results = integrity.check_directory(
        tmp_path, expected, done={"shard-0.bin", "shard-2.bin"}, on_file=lambda check: seen.append(check.path)
    )
    assert [check.path for check in results] == seen == ["shard-1.bin", "shard-3.bin"]


def test_a_stop_between_chunks_raises_and_the_throttle_holds_the_rate(tmp_path):
    expected = write(tmp_path, {"big.bin": b"\0" * (4 * 10**6)})
    with pytest.raises(integrity.Stopped):
        integrity.check_directory(tmp_path, expected, should_stop=iter([False, True]).__next__)
    start = time.monotonic()
    integrity.check_directory(tmp_path, expected, mb_s=20)
    assert time.monotonic() - start >= 0.19  # 4 MB at 20 MB/s
    start = time.monotonic()
    integrity.check_directory(tmp_path, expected, mb_s=0)  # 0: unthrottled
    assert time.monotonic() - start < 0.19


def test_disk_usage_of_a_store_not_created_yet_is_its_filesystem(tmp_path):
    usage = integrity.disk_usage(tmp_path / "not" / "yet")
    assert usage["path"] == str(tmp_path / "not" / "yet") and 0 < usage["free"] <= usage["total"]


@pytest.mark.django_db(transaction=True)
def test_kill_9_mid_sweep_resumes_on_the_files_not_done(redis_url, settings, tmp_path, admin):
    """8 files of 4 MiB at 8 MB/s; kill -9 the worker after 3 are recorded; the reaper hands the job to a second
    worker. The recorded files are then damaged on disk: the second attempt does not read them again, so the copy
    stays ready (a re-read would have marked it corrupt); the others it hashes."""
    from deployments.jobs.reaper import jobs_reap
    from deployments.models import Host, Job, ModelArtifact
    from deployments.monitoring import health_services
    from deployments.monitoring.models import HealthCheckRun
    from tests.conftest import _start_worker, _test_database_url
    from tests.factories.registry import ModelArtifactFactory
    from workers import runner

    settings.MODEL_STORE = tmp_path / "store"
    settings.BACKUP_DIR, settings.HEALTH_CHECK_CERTIFICATES, settings.AUDIT_CHECKPOINT_EXPORT_DIR = "", [], ""
    host = Host.objects.create(name=f"sweep-{os.getpid()}", status="online", model_store=str(settings.MODEL_STORE))
    artifact = ModelArtifactFactory(host=host)
    root = Path(artifact.path)
    root.mkdir(parents=True)
    artifact.files_sha256 = write(
        root, {f"model-{i:05d}.safetensors": hashlib.sha256(str(i).encode()).digest() * (2**17) for i in range(8)}
    )
    artifact.save()
    env = {
        "REDIS_URL": redis_url,
        "DATABASE_URL": _test_database_url(),
        "MODEL_STORE": str(settings.MODEL_STORE),
        "JOB_LEASE_SECONDS": "2",
        "INTEGRITY_SWEEP_MB_S": "8",
        "AGENT_HOST_NAME": "",
    }
    run = health_services.health_check_start(actor=admin)
    assert runner.run(run.job_id) == "succeeded"  # the console's part, here; the sweep goes to the host's queue
    run.refresh_from_db()
    (job_id,) = run.progress["jobs"]
    workers = []

    def start():
        process, log = _start_worker(env, f"sweep-{time.monotonic_ns()}", host.queue)
        workers.append((process, log))
        return process, log

    def files_done() -> set[str]:
        state = HealthCheckRun.objects.get(pk=run.pk).progress.get("sweep", {}).get(str(artifact.pk), {})
        return set(state.get("files", {}))

    try:
        first, log = start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(files_done()) < 3:
            time.sleep(0.05)
        assert len(files_done()) >= 3, Path(log.name).read_text()[-3000:]
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        done_first = files_done()
        assert 3 <= len(done_first) < 8
        for name in done_first:  # damaged after they were checked: only a re-read could notice
            (root / name).write_bytes(b"damaged")
        time.sleep(2.5)
        assert jobs_reap()["retried"] == [job_id]
        _second, log2 = start()
        deadline = time.monotonic() + 60
        # The handler finishes the run before the runner records the job's end: wait for both.
        while time.monotonic() < deadline and (
            HealthCheckRun.objects.get(pk=run.pk).state != "done"
            or Job.objects.get(pk=job_id).status not in ("succeeded", "failed", "cancelled")
        ):
            time.sleep(0.2)
        run.refresh_from_db()
        job = Job.objects.get(pk=job_id)
        assert run.state == "done", (job.status, Path(log2.name).read_text()[-3000:])
    finally:
        for process, worker_log in workers:
            if process.poll() is None:
                process.kill()
                process.wait()
            worker_log.close()
    assert job.status == "succeeded" and job.attempts == 2
    state = run.progress["sweep"][str(artifact.pk)]
    assert state["finished"] and len(state["files"]) == 8 and state["problems"] == []
    assert ModelArtifact.objects.get(pk=artifact.pk).status == "ready"
    assert not [item for item in run.findings if item["check"] == "integrity"]


def test_a_restored_file_and_the_folders_made_for_it_are_readable_by_a_servers_user(tmp_path):
    """Under the console's umask 077, a file put back in a missing subfolder: 0755 folders, a 0644 file."""
    from workers.integrity import replace_file

    source = tmp_path / "staging" / "weights.bin"
    source.parent.mkdir()
    source.write_bytes(b"ok")
    target = tmp_path / "store" / "org--model" / "c0ffee" / "sub" / "weights.bin"
    (tmp_path / "store").mkdir()
    old = os.umask(0o077)
    try:
        replace_file(source, target)
    finally:
        os.umask(old)
    assert target.read_bytes() == b"ok" and stat.S_IMODE(target.stat().st_mode) == 0o644
    for folder in (target.parent, target.parent.parent, target.parent.parent.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755, folder

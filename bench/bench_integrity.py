"""Integrity sweep throughput: the integrity_sweep job through the job runner (unthrottled, progress written per
file) against a bare sha256 of the same files in one process (hashlib.file_digest), both from the page cache.

1.5 GiB, so the job's fixed cost (claim, lease, audit, log; ~30 ms) weighs as little as on a real store, where one
sweep reads hundreds of GB: at 384 MiB it alone cost ~8 % of the figure."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import Figure

FILES = 8
FILE_BYTES = 192 * 2**20
ROUNDS = 5


def _write_files(root: Path) -> dict[str, str]:
    hashes = {}
    block = os.urandom(2**20)
    for i in range(FILES):
        name = f"model-{i + 1:05d}-of-{FILES:05d}.safetensors"
        with open(root / name, "wb") as handle:
            for j in range(FILE_BYTES // 2**20):
                handle.write(block[j % 251 :] + block[: j % 251])  # no two MiB alike
        with open(root / name, "rb") as handle:
            hashes[name] = hashlib.file_digest(handle, "sha256").hexdigest()  # also warms the page cache
    return hashes


def _bare(root: Path, names: list[str]) -> float:
    start = time.perf_counter()
    for name in names:
        with open(root / name, "rb") as handle:
            hashlib.file_digest(handle, "sha256")
    return time.perf_counter() - start


def _sweep(host, artifact) -> float:
    from deployments.models import Job
    from deployments.monitoring.models import HealthCheckRun
    from workers import runner

    run = HealthCheckRun.objects.create(state=HealthCheckRun.State.RUNNING)
    job = Job.objects.create(
        kind=Job.Kind.INTEGRITY_SWEEP,
        queue=host.queue,
        target_type="deployments.healthcheckrun",
        target_id=str(run.pk),
        params={"run": run.pk, "host": host.name, "artifacts": [artifact.pk]},
        progress={},
    )
    run.progress = {"jobs": [job.pk]}
    run.save(update_fields=["progress"])
    start = time.perf_counter()
    outcome = runner.run(job.pk)
    elapsed = time.perf_counter() - start
    assert outcome == "succeeded", Job.objects.get(pk=job.pk).failure_detail
    assert len(HealthCheckRun.objects.get(pk=run.pk).progress["sweep"][str(artifact.pk)]["files"]) == FILES
    return elapsed


def run() -> list[Figure]:
    from django.conf import settings

    from deployments.models import Host, ModelArtifact, ModelRepo, ModelSource

    settings.INTEGRITY_SWEEP_MB_S = 0
    root = Path(tempfile.mkdtemp(prefix="bench-integrity-", dir=os.environ.get("DATA_DIR")))
    try:
        hashes = _write_files(root)
        host = Host.objects.create(name=f"bench-integrity-{os.getpid()}", status=Host.Status.ONLINE)
        source, _ = ModelSource.objects.get_or_create(name="bench", defaults={"kind": ModelSource.Kind.HUB})
        repo = ModelRepo.objects.create(source=source, repo_id="bench/integrity", commit="0" * 40)
        artifact = ModelArtifact.objects.create(
            repo=repo, host=host, path=str(root), status=ModelArtifact.Status.READY, files_sha256=hashes
        )
        names = sorted(hashes)
        bare, sweep = [], []
        for _ in range(ROUNDS):  # interleaved: drift hits both alike
            bare.append(_bare(root, names))
            sweep.append(_sweep(host, artifact))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    total_mb = FILES * FILE_BYTES / 1e6
    bare_mb_s, sweep_mb_s = total_mb / min(bare), total_mb / min(sweep)
    return [
        Figure(
            "integrity_sweep_vs_bare_sha256",
            sweep_mb_s / bare_mb_s,
            "x",
            ">=",
            0.9,
            f"sweep {sweep_mb_s:.0f} MB/s through the job runner vs bare sha256 {bare_mb_s:.0f} MB/s, "
            f"{FILES} x {FILE_BYTES // 2**20} MiB from the page cache, best of {ROUNDS}",
        )
    ]

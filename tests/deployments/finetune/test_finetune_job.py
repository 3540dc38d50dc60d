"""A fine-tune as a console job, end to end: a real Celery worker on the base model's host queue fetches the dataset
version over the internal route (a live server), runs workers/jobs/finetune.py in the ML environment through the
process runtime, streams its curve into the job log, tiers its checkpoints and registers the adapter with lineage.

Then kill -9: the worker dies mid-run and a new one adopts the program that kept running; the worker and the
program both die and the next attempt resumes from the newest checkpoint. Either way exactly one run finishes and
the per-step losses equal the uninterrupted run's (same seed, same data) within 1e-4 relative.

Timings on 2 shared cores: each run ~15-25 s of training plus ~10 s of worker start."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from audit.models import AuditEvent
from deployments.finetune import services
from deployments.jobs.reaper import jobs_reap
from deployments.models import Checkpoint, Job, JobLogLine, ModelArtifact
from tests.conftest import _start_worker, _test_database_url, _wait_and_stop, need
from tests.deployments.datasets.conftest import jsonl
from tests.deployments.datasets.test_fetch_route import make_version
from tests.factories import HostFactory, ModelArtifactFactory
from tests.support.serve_process import make_model, ml_python
from workers.jobs.manifest import verify_manifest
from workers.runtimes.base import LABEL_JOB
from workers.runtimes.process import ProcessRuntime

# The later tests compare with the first one's curve (REFERENCE): under xdist all run in one process, in order.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.xdist_group("finetune-job-curve")]

PAIRS = "alpha:red bravo:green charlie:blue delta:yellow echo:black foxtrot:white golf:purple hotel:orange"
CANARY = "CANARY-31d8-finetune-row"  # in every row: nothing the engineer who trains on them reads may hold it
RECORDS = [
    {"prompt": f"[{CANARY}] Code {c}?", "completion": f" {colour}."}
    for c, colour in (p.split(":") for p in PAIRS.split())
]
OPTIONS = {
    "method": "lora",
    "checkpoint_every": 50,
    "hyperparameters": {
        "learning_rate": 1e-2,
        "max_steps": 400,  # ~15 s on a shared core: long enough to kill a worker mid-run
        "batch_size": 4,  # two batches an epoch: data order matters after a resume
        "lora_dropout": 0.05,  # dropout draws: the RNG state must survive a resume
        "modules_to_save": ["lm_head"],
        "seed": 11,
    },
}
REFERENCE: dict[int, float] = {}  # step -> loss of the uninterrupted run (the first test)


@pytest.fixture
def stores(settings, tmp_path):
    settings.DATASET_STORE = tmp_path / "datasets"
    settings.CHECKPOINT_DIR = tmp_path / "checkpoints"
    settings.CHECKPOINT_ARCHIVE_DIR = tmp_path / "archive"
    return tmp_path


@pytest.fixture
def setup(stores, admin, engineer, live_server, redis_url):
    need(ml_python() is not None, "the ML environment (make ml-env) is needed to run fine-tunes")
    from django.contrib.auth.models import Group

    from deployments.datasets import services as datasets

    team = Group.objects.create(name="ft-team")
    team.user_set.add(engineer)
    dataset = datasets.dataset_create(actor=admin, name="codes", team=team)
    version = make_version(admin, dataset, jsonl(RECORDS))
    host = HostFactory(name=f"ft-{os.getpid()}-{time.monotonic_ns() % 10**6}")
    model_dir = make_model(Path(host.model_store) / "tests--tiny" / "base")
    base = ModelArtifactFactory(host=host, path=str(model_dir), repo__repo_id="tests/tiny")
    env = {
        "REDIS_URL": redis_url,
        "DATABASE_URL": _test_database_url(),
        "CONSOLE_INTERNAL_URL": live_server.url,
        "CHECKPOINT_DIR": str(stores / "checkpoints"),
        "CHECKPOINT_ARCHIVE_DIR": str(stores / "archive"),
        "DATASET_CACHE_DIR": str(stores / "agent-cache"),
        "CHECKPOINT_KEEP_FAST": "2",
        "CHECKPOINT_RETAIN": "10",
        "JOB_LEASE_SECONDS": "3",
        "JOB_CANCEL_POLL_SECONDS": "0.2",
        "JOB_PROGRAM_STOP_GRACE_SECONDS": "60",
    }
    workers = []

    def start_worker():
        # threads: the worker answers the readiness ping while a job it took at once runs
        process, log = _start_worker(env, f"ft-worker-{len(workers)}", host.queue, pool="threads")
        stopper = _wait_and_stop(process, log, host.queue)
        next(stopper)
        workers.append((process, stopper))
        return process, log

    yield {"engineer": engineer, "base": base, "version": version, "start_worker": start_worker}
    for process, stopper in workers:
        if process.poll() is None:
            next(stopper, None)
    for handle in ProcessRuntime().find({}):
        if handle.labels.get(LABEL_JOB):
            ProcessRuntime().remove(handle)


def wait_for(predicate, timeout: float, what: str, log=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    detail = Path(log.name).read_text()[-4000:] if log else ""
    pytest.fail(f"timed out waiting for {what}\n{detail}")


def losses(job: Job) -> dict[int, float]:
    """step -> loss from the job's metric lines (a step logged twice, before and after a resume: the later one)."""
    found = {}
    for line in JobLogLine.objects.filter(job=job, stream="metric").order_by("seq"):
        if line.data and line.data.get("loss") is not None:
            found[int(line.data["step"])] = float(line.data["loss"])
    return found


def log_text(job: Job) -> str:
    return "\n".join(JobLogLine.objects.filter(job=job).order_by("seq").values_list("text", flat=True))


def assert_one_finished_run(job: Job) -> ModelArtifact:
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, (job.failure_cause, job.failure_detail, log_text(job)[-3000:])
    produced = ModelArtifact.objects.filter(produced_by=job)
    assert produced.count() == 1
    adapter = produced.get()
    assert adapter.kind == ModelArtifact.Kind.ADAPTER and adapter.base_id == job.params["base_artifact_id"]
    assert verify_manifest(adapter.path) == []
    return adapter


def assert_tiers(job: Job, stores: Path) -> None:
    tiers = dict(Checkpoint.objects.filter(job=job).values_list("step", "tier"))
    expected = {step: "archive" for step in range(50, 301, 50)} | {350: "fast", 400: "fast"}
    assert tiers == expected, tiers
    for checkpoint in Checkpoint.objects.filter(job=job, tier="archive"):
        assert Path(checkpoint.path).parent == stores / "archive" / f"finetune-{job.pk}"
        assert verify_manifest(checkpoint.path) == []


def test_a_lora_fine_tune_job_streams_its_curve_tiers_checkpoints_and_registers_the_adapter(setup, stores):
    _process, log = setup["start_worker"]()
    job = services.finetune_start(
        actor=setup["engineer"], base=setup["base"], version=setup["version"], options=OPTIONS
    )
    wait_for(lambda: Job.objects.filter(pk=job.pk, status__in=Job.Status.terminal()).exists(), 300, "the run", log)
    adapter = assert_one_finished_run(job)
    curve = losses(job)
    assert sorted(curve) == list(range(1, 401))
    assert curve[400] <= curve[1] / 2, curve  # the loss falls by at least half
    REFERENCE.update(curve)
    assert_tiers(job, stores)
    lineage = adapter.lineage
    assert lineage["dataset_sha256"] == setup["version"].sha256 and lineage["base"].startswith("tests/tiny@")
    assert lineage["hyperparameters"]["seed"] == 11 and lineage["steps"] == 400 and lineage["code_version"]["trl"]
    assert Path(adapter.path).is_relative_to(Path(setup["base"].host.model_store))
    progress = JobLogLine.objects.filter(job=job, stream="progress").order_by("-seq").first().data
    assert progress["step"] == 400 and progress["total"] == 400 and "eta_seconds" in progress
    actions = set(
        AuditEvent.objects.filter(target_id__in=[str(job.pk), str(adapter.pk)]).values_list("action", flat=True)
    )
    assert {"finetune.started", "finetune.finished", "job.succeeded"} <= actions
    assert_the_canary_reaches_no_engineer(setup["engineer"], job, adapter)


def assert_the_canary_reaches_no_engineer(engineer, job: Job, adapter: ModelArtifact) -> None:
    """The engineer trained on rows holding the canary: no page, API answer, log line (the websocket streams the same
    lines), checkpoint row or audit event they can read holds it."""
    from django.test import Client

    client = Client()
    client.force_login(engineer)
    urls = [
        f"/jobs/{job.pk}/",
        f"/api/v1/jobs/{job.pk}/",
        f"/api/v1/jobs/{job.pk}/log/?limit=5000",
        "/finetune/",
        f"/api/v1/finetunes/{job.pk}/",
        f"/models/{adapter.pk}/",
        f"/api/v1/models/{adapter.pk}/",
        "/api/v1/finetunes/",
    ]
    for url in urls:
        response = client.get(url)
        assert response.status_code == 200, (url, response.status_code)
        assert CANARY not in response.content.decode(), url
    for line in JobLogLine.objects.filter(job=job):
        assert CANARY not in f"{line.text} {line.data}"
    assert CANARY not in json.dumps(list(Checkpoint.objects.filter(job=job).values("path", "metrics")))
    assert CANARY not in json.dumps(adapter.lineage) + json.dumps(adapter.manifest)
    for event in AuditEvent.objects.all():
        assert CANARY not in f"{event.detail} {event.diff} {event.target_name}"


def _kill_worker_mid_run(setup, job, *, also_the_program: bool):
    process, log = setup["start_worker"]()
    wait_for(lambda: Checkpoint.objects.filter(job=job, step=50).exists(), 300, "checkpoint 50", log)
    os.killpg(process.pid, signal.SIGKILL)  # the worker; the program runs in its own session
    process.wait(10)
    handles = ProcessRuntime().find({LABEL_JOB: str(job.pk)})
    assert len(handles) == 1
    if also_the_program:
        os.killpg(int(handles[0].ref), signal.SIGKILL)
    time.sleep(3.5)  # the lease (3 s) runs out
    assert job.pk in jobs_reap()["retried"]
    return setup["start_worker"]()


@pytest.mark.parametrize("also_the_program", [False, True], ids=["program-adopted", "program-killed-too"])
def test_kill_9_of_the_worker_mid_run_adopts_or_resumes_and_repeats_the_uninterrupted_curve(
    setup, stores, also_the_program
):
    need(bool(REFERENCE), "the uninterrupted run (the test above) gives the reference curve")
    job = services.finetune_start(
        actor=setup["engineer"], base=setup["base"], version=setup["version"], options=OPTIONS
    )
    _process, log = _kill_worker_mid_run(setup, job, also_the_program=also_the_program)
    wait_for(lambda: Job.objects.filter(pk=job.pk, status__in=Job.Status.terminal()).exists(), 300, "the run", log)
    assert_one_finished_run(job)
    text = log_text(job)
    if also_the_program:
        assert "the program was killed; starting it again" in text and "Resuming from" in text
    else:
        # The program outlived its worker: the next attempt adopted it, or (on a fast machine) found it finished
        # and took its output; it never started a second one.
        assert "adopted the running program" in text or "ended while no worker watched it" in text
        assert text.count("started llmdeploy-job-") == 1
    curve = losses(job)
    assert sorted(curve) == sorted(REFERENCE)
    for step, loss in curve.items():
        assert loss == pytest.approx(REFERENCE[step], rel=1e-4), step
    assert_tiers(job, stores)
    assert ProcessRuntime().find({LABEL_JOB: str(job.pk)}) == []  # nothing left running
    assert json.dumps(job.params).count("token") == 0  # the fetch token is never stored


def test_stop_saves_a_checkpoint_and_resume_finishes_the_same_curve(setup, stores):
    need(bool(REFERENCE), "the uninterrupted run (the first test) gives the reference curve")
    _process, log = setup["start_worker"]()
    job = services.finetune_start(
        actor=setup["engineer"], base=setup["base"], version=setup["version"], options=OPTIONS
    )
    wait_for(lambda: Checkpoint.objects.filter(job=job, step=50).exists(), 300, "checkpoint 50", log)
    services.finetune_cancel(actor=setup["engineer"], job=job)
    wait_for(lambda: Job.objects.filter(pk=job.pk, status__in=Job.Status.terminal()).exists(), 300, "the stop", log)
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED, (job.failure_cause, log_text(job)[-2000:])
    stopped_at = Checkpoint.objects.filter(job=job).order_by("-step").first().step
    assert stopped_at < 400 and "Stopped on request at step" in log_text(job)
    assert not ModelArtifact.objects.filter(produced_by=job).exists()
    services.finetune_resume(actor=setup["engineer"], job=job)
    wait_for(
        lambda: Job.objects.filter(pk=job.pk, status__in=Job.Status.terminal()).exists(), 300, "the resumed run", log
    )
    assert_one_finished_run(job)
    assert f"Resuming from {stores / 'checkpoints'}" in log_text(job)
    curve = losses(job)
    assert sorted(curve) == sorted(REFERENCE)
    for step, loss in curve.items():
        assert loss == pytest.approx(REFERENCE[step], rel=1e-4), step


def test_rows_longer_than_the_max_sequence_length_fail_the_job_with_where_and_what_to_do(setup, stores):
    _process, log = setup["start_worker"]()
    options = {**OPTIONS, "hyperparameters": {**OPTIONS["hyperparameters"], "max_seq_len": 8}}
    job = services.finetune_start(
        actor=setup["engineer"], base=setup["base"], version=setup["version"], options=options
    )
    wait_for(lambda: Job.objects.filter(pk=job.pk, status__in=Job.Status.terminal()).exists(), 300, "the run", log)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED and job.failure_cause and job.next_step
    assert "line 1" in job.failure_detail.lower() and CANARY not in job.failure_detail
    assert not Checkpoint.objects.filter(job=job).exists()

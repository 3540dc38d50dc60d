"""Fault matrix F3, F10, F11: long work against a real agent worker (Celery, prefork, on real Redis and the test
database) while a real browser-like client follows the job's live stream through daphne.

- F3: a job runs past twice the broker's visibility timeout (shortened to 3 s, checked every second) while another
  job waits prefetched behind it, so kombu hands that one out again: each handler body runs exactly once.
- F10: cancel a download through the API and a long-running job through the service, at a random moment: stopped
  and cancelled within 30 s, partial files kept for a resume (or deleted when asked), the cancel audited.
- F11: the host "reboots" mid-download (the agent's whole process group gets SIGKILL) and the agent starts again
  with the same host name: at start-up it marks the orphaned job lost with the reason and retries it (downloads
  resume), with no lost line at the client.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from django.conf import settings

from audit.models import AuditEvent
from deployments.jobs.services import job_cancel, job_create
from deployments.models import AllowedEndpoint, Host, Job, JobLogLine, ModelSource
from deployments.registry.services import model_add
from tests.conftest import _start_worker, _test_database_url
from tests.deploy.prometheus_live import ConsoleProcess
from tests.faults import harness
from tests.faults.harness import Trial, fault_report, run_trial, wait_until
from tests.faults.stream_watch import StreamWatcher, session_cookie

pytestmark = [pytest.mark.fault, pytest.mark.django_db(transaction=True)]

HOST = "fault-node"
VISIBILITY_S = 3
CONFIG = b'{"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1}'


def weights(megabytes: int, seed: int) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest() * (2**20 // 32)
    return block * megabytes


class Agent:
    """The host's agent: a prefork Celery worker (one child) with AGENT_HOST_NAME, consuming the host's queue and a
    private one, killable as a whole process group and startable again with the same environment."""

    def __init__(self, env: dict, queue: str) -> None:
        self.env, self.queue = env, queue
        self.process: subprocess.Popen | None = None
        self.log = None

    def start(self) -> Agent:
        self.process, self.log = _start_worker(
            self.env, f"fault-agent-{time.monotonic_ns()}", f"{self.queue},host.{HOST}", pool="prefork",
            include="tests.support.job_handlers",
        )  # fmt: skip
        from console.celery import app

        def answers() -> bool:
            assert self.process.poll() is None, self.tail()
            return bool(app.control.ping(destination=[self.process.node_name], timeout=0.5))

        assert wait_until(answers, 60, interval=0.2) is not None, self.tail()
        return self

    def kill(self) -> None:
        """Like a host losing power: every process of the agent at once, no goodbye."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.log.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)  # a warm shutdown waits for nothing here; the test is over
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.log is not None:
            self.log.close()

    def text(self) -> str:
        return Path(self.log.name).read_text()

    def tail(self) -> str:
        return self.text()[-3000:]


@pytest.fixture(scope="module")
def stack(redis_url, django_db_setup, django_db_blocker, tmp_path_factory):
    """The console under daphne and the host's agent, shared by this module's faults (each costs seconds to
    start); F11 replaces the agent with a fresh one."""
    with django_db_blocker.unblock():
        database_url = _test_database_url()
    work = tmp_path_factory.mktemp("job-faults")
    store = work / "store"
    env = {
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "MODEL_STORE": str(store),
        "AGENT_HOST_NAME": HOST,
        "AGENT_NVML_MODULE": "tests.support.fake_nvml",
        "JOB_LEASE_SECONDS": "2",
        "JOB_CANCEL_POLL_SECONDS": "0.2",
        "DOWNLOAD_CHUNK_BYTES": str(2**20),
        "CELERY_VISIBILITY_TIMEOUT": str(VISIBILITY_S),
        "CELERY_UNACKED_RESTORE_SECONDS": "1",
        "HF_HOME": str(work / "hf-home"),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    console_env = dict(
        os.environ,
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        DATA_DIR=str(settings.DATA_DIR),
        ALLOWED_HOSTS="127.0.0.1,localhost",
    )
    console = ConsoleProcess(work).start(console_env)
    processes = {"console": console, "agent": Agent(env, f"faults-{time.monotonic_ns()}"), "store": store}
    try:
        processes["agent"].start()
        yield processes
    finally:
        processes["agent"].stop()  # F11 may have put a fresh one there
        console.stop()


@pytest.fixture
def store(stack, settings):
    settings.MODEL_STORE = stack["store"]  # where model_add and the agent look
    return stack["store"]


@pytest.fixture
def mirror(hub_server, admin):
    AllowedEndpoint.objects.get_or_create(pattern="127.0.0.1")
    return ModelSource.objects.create(name="test mirror", kind="mirror", endpoint=hub_server.endpoint, created_by=admin)


@pytest.fixture
def host(db):
    # The agent's heartbeat may have registered it already (get_or_create: it must not be created twice).
    return Host.objects.get_or_create(name=HOST, defaults={"status": "online"})[0]


def watch(stack, job: Job, user) -> StreamWatcher:
    return StreamWatcher(stack["console"].url, f"/ws/jobs/{job.pk}/", session_cookie(user)).start()


def stream_whole(watcher: StreamWatcher, job: Job) -> str:
    """'' when the client holds every stored line of the ended job, else what it lacks."""
    job.refresh_from_db()
    if not watcher.wait_for_end(20):
        return f"the client saw no end (holds 1..{watcher.last_seq} of {job.log_seq}; {watcher.errors[-3:]})"
    missing = watcher.missing(job.log_seq)
    return f"the client lacks lines {missing[:20]}" if missing else ""


def staged_bytes(staging: Path) -> int:
    return sum(p.stat().st_size for p in staging.rglob("*") if p.is_file()) if staging.exists() else 0


def log_text(job: Job) -> str:
    return "\n".join(JobLogLine.objects.filter(job=job).order_by("seq").values_list("text", flat=True))


# --- F3 -------------------------------------------------------------------------------------------------------------


def test_f3_a_job_running_past_twice_the_visibility_timeout_executes_exactly_once(stack, admin, tmp_path):
    agent = stack["agent"]
    with fault_report(
        "F3", "a job runs past 2 x the visibility timeout", "executed exactly once (and the one queued behind it)"
    ) as report:
        for n in harness.repetitions():

            def trial(n=n) -> Trial:
                runs = tmp_path / f"runs-{n}.txt"
                seen = len(agent.text())
                seconds = 2 * VISIBILITY_S + harness.random_delay(1.5, 3)  # past twice the visibility timeout
                long = job_create(
                    kind="test.count", actor=None, queue=agent.queue,
                    params={"lines": 40, "delay": seconds / 40, "runs_file": str(runs)},
                )  # fmt: skip
                watcher = watch(stack, long, admin)
                try:
                    assert wait_until(lambda: Job.objects.filter(pk=long.pk, status="running").exists(), 30)
                    time.sleep(harness.random_delay(0.2, 1.5))
                    # Prefetched behind the long one, unacknowledged past the visibility timeout: handed out again.
                    queued = job_create(
                        kind="test.count", actor=None, queue=agent.queue, params={"lines": 2, "runs_file": str(runs)}
                    )
                    done = wait_until(
                        lambda: Job.objects.filter(pk__in=[long.pk, queued.pk], status="succeeded").count() == 2,
                        60,
                    )
                    assert done is not None, agent.tail()
                    log = agent.text()[seen:]
                    # The copy kombu handed out again reaches the runner, which finds the job taken: skipped.
                    assert wait_until(lambda: "'skipped'" in agent.text()[seen:], VISIBILITY_S + 10), (
                        "no task was handed out again: the fault was not injected\n" + log[-3000:]
                    )
                    time.sleep(1)  # any further copy would run now
                    bodies = runs.read_text().split()
                    long.refresh_from_db()
                    queued.refresh_from_db()
                    problems = []
                    if sorted(bodies) != sorted([str(long.pk), str(queued.pk)]):
                        problems.append(f"handler bodies ran for jobs {bodies}")
                    if (long.attempts, queued.attempts) != (1, 1):
                        problems.append(f"attempts {long.attempts}, {queued.attempts}")
                    succeeded = AuditEvent.objects.filter(
                        action="job.succeeded", target_id__in=[str(long.pk), str(queued.pk)]
                    )
                    if succeeded.count() != 2:
                        problems.append(f"{succeeded.count()} job.succeeded events for 2 jobs")
                    if lost := stream_whole(watcher, long):
                        problems.append(lost)
                    detail = f"long job ran {seconds:.1f} s; the one queued behind it was handed out again, skipped"
                    return Trial(survived=not problems, detail="; ".join(problems) or detail)
                finally:
                    watcher.stop()

            run_trial(report, trial)


# --- F10 ------------------------------------------------------------------------------------------------------------


def test_f10_cancel_during_a_download_and_a_long_running_job(
    stack,
    store,
    hub_server,
    mirror,
    host,
    engineer,
    admin,
    api,
    tmp_path,
):
    agent = stack["agent"]
    hub_server.throttle_bytes_per_second = 2 * 2**20
    with fault_report(
        "F10", "cancel during a download or a long-running job", "stopped and cancelled within 30 s; partial files "
        "kept for a resume (or deleted when asked); the cancel audited",
    ) as report:  # fmt: skip
        for n in harness.repetitions():

            def download(n=n) -> Trial:
                repo = f"acme/cancel-{n}"
                hub_server.add_repo(repo, {"config.json": CONFIG, "model.safetensors": weights(8, n)})
                artifact = model_add(actor=engineer, source=mirror, repo_id=repo, host=host)
                job = Job.objects.get(target_type="deployments.modelartifact", target_id=str(artifact.pk))
                watcher = watch(stack, job, engineer)
                staging = store / ".staging" / f"artifact-{artifact.pk}"
                delete_partial = harness.random_delay(0, 1) < 0.5
                try:
                    assert wait_until(lambda: staged_bytes(staging) > 0, 30) is not None, agent.tail()
                    time.sleep(harness.random_delay(0, 2))  # somewhere in the 4 s the 8 MB take
                    api(engineer).post(
                        f"/api/v1/models/{artifact.pk}/cancel/", {"delete_partial": delete_partial}, expected=202
                    )
                    took = wait_until(lambda: Job.objects.filter(pk=job.pk, status="cancelled").exists(), 30)
                    problems = [] if took is not None else ["not cancelled within 30 s"]
                    artifact.refresh_from_db()
                    if artifact.status != "cancelled":
                        problems.append(f"the model is {artifact.status}")
                    if delete_partial and staging.exists():
                        problems.append("the partial files were kept though deletion was asked for")
                    if not delete_partial and staged_bytes(staging) == 0:
                        problems.append("the partial files are gone: nothing to resume from")
                    problems += _cancel_audited(job, engineer)
                    if lost := stream_whole(watcher, job):
                        problems.append(lost)
                    kept = "deleted" if delete_partial else f"{staged_bytes(staging)} bytes kept"
                    return Trial(not problems, took, "; ".join(problems) or f"download: {kept}")
                finally:
                    watcher.stop()

            def long_job(n=n) -> Trial:
                runs = tmp_path / f"long-{n}.txt"
                job = job_create(
                    kind="test.count", actor=admin, queue=agent.queue,
                    params={"lines": 300, "delay": 0.05, "runs_file": str(runs)},
                )  # fmt: skip
                watcher = watch(stack, job, admin)
                try:
                    assert wait_until(lambda: Job.objects.filter(pk=job.pk, status="running").exists(), 30)
                    time.sleep(harness.random_delay(0.2, 3))
                    job_cancel(actor=admin, job=job, action="view")
                    took = wait_until(lambda: Job.objects.filter(pk=job.pk, status="cancelled").exists(), 30)
                    problems = [] if took is not None else ["not cancelled within 30 s"]
                    if runs.exists():
                        problems.append("the job ran to its end")
                    problems += _cancel_audited(job, admin)
                    if lost := stream_whole(watcher, job):
                        problems.append(lost)
                    return Trial(not problems, took, "; ".join(problems) or "long-running job")
                finally:
                    watcher.stop()

            run_trial(report, download)
            run_trial(report, long_job)


def _cancel_audited(job: Job, user) -> list[str]:
    problems = []
    if not AuditEvent.objects.filter(action="job.cancel_requested", target_id=str(job.pk), actor_id=user.pk).exists():
        problems.append("no job.cancel_requested event by the user")
    if AuditEvent.objects.filter(action="job.cancelled", target_id=str(job.pk)).count() != 1:
        problems.append("not exactly one job.cancelled event")
    return problems


# --- F11 ------------------------------------------------------------------------------------------------------------


def test_f11_a_host_rebooted_mid_job_marks_the_orphan_lost_and_retries_it(
    stack,
    store,
    hub_server,
    mirror,
    host,
    engineer,
):
    hub_server.throttle_bytes_per_second = 4 * 2**20
    with fault_report(
        "F11", "host reboot mid-job", "on start-up the orphaned running job is marked lost with a reason and retried "
        "where safe (a download resumes)",
    ) as report:  # fmt: skip
        for n in harness.repetitions():

            def trial(n=n) -> Trial:
                repo = f"acme/reboot-{n}"
                files = {"config.json": CONFIG, "model.safetensors": weights(16, 100 + n)}
                hub_server.add_repo(repo, files)
                artifact = model_add(actor=engineer, source=mirror, repo_id=repo, host=host)
                job = Job.objects.get(target_type="deployments.modelartifact", target_id=str(artifact.pk))
                watcher = watch(stack, job, engineer)
                staging = store / ".staging" / f"artifact-{artifact.pk}"
                share = harness.random_delay(0.1, 0.6)
                try:
                    total = sum(len(data) for data in files.values())
                    reached = wait_until(lambda: staged_bytes(staging) >= share * total, 30)
                    assert reached is not None, stack["agent"].tail()
                    job.refresh_from_db()
                    owner = job.lease_owner
                    stack["agent"].kill()
                    killed = time.monotonic()
                    stack["agent"] = Agent(stack["agent"].env, stack["agent"].queue).start()  # the same host name
                    done = wait_until(lambda: Job.objects.filter(pk=job.pk, status="succeeded").exists(), 60)
                    problems = [] if done is not None else [f"not done after the restart: {stack['agent'].tail()}"]
                    job.refresh_from_db()
                    artifact.refresh_from_db()
                    text = log_text(job)
                    if f"lost: the process {owner} that ran this job is gone" not in text:
                        problems.append("no line saying why the first attempt was lost")
                    if job.attempts != 2:
                        problems.append(f"{job.attempts} attempts")
                    for name, data in files.items():
                        if artifact.files_sha256.get(name) != hashlib.sha256(data).hexdigest():
                            problems.append(f"{name}: wrong or no sha256")
                    if lost := stream_whole(watcher, job):
                        problems.append(lost)
                    recover = time.monotonic() - killed
                    detail = "; ".join(problems) or f"killed at {share:.0%}, retried as attempt 2"
                    return Trial(not problems, recover, detail)
                finally:
                    watcher.stop()

            run_trial(report, trial)

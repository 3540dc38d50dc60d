"""An agent loses the network to Redis and PostgreSQL: the agent (a real Celery worker with the process runtime)
runs in a network namespace of the test's own and reaches the suite's PostgreSQL and Redis through relays on this
machine's end of a veth pair; serve.py runs under it, in the same namespace. The test plays the console: the API
in-process and its beat (hosts offline, reaper, reconciler) in a thread. The link is cut for
timings().agent_network_loss_s: the console shows the host offline within the heartbeat window, the deployment's
server keeps answering /health and /generate, and on return the agent reconciles with exactly one server for the
deployment.

The live stream stays whole through it: a browser-like client (StreamWatcher, on the console under daphne) follows
the serve job's log, the stream the agent writes. The agent writes nothing of its own while cut off, so the cut's
requests name an adapter the server does not have: each makes serve.py print a line, which the agent copies into the
job's log once it can (with the lines the reaper and the job's next attempt write at the same time). Afterwards the
job's "server" lines are the server's output, each once and in order, and the client holds 1..N of the job's lines,
none twice, each as stored."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from django.conf import settings
from django.db import close_old_connections, connection

from audit.models import AuditEvent
from deployments.inventory.services import hosts_mark_offline
from deployments.jobs.reaper import jobs_reap
from deployments.models import Deployment, Host, Job, JobLogLine
from tests.conftest import ROOT, _test_database_url, need
from tests.faults import harness
from tests.faults.harness import Trial, fault_report, run_trial, wait_until
from tests.faults.netns import AgentNetwork, agent_network
from tests.faults.stream_watch import StreamWatcher, live_console, session_cookie
from tests.support.deploy_fixtures import ready_artifact, tiny_model_in_store
from tests.support.serve_process import ml_python
from workers.handlers.serve import instance_name
from workers.reconcile import reconcile_console
from workers.runtimes.base import LABEL_DEPLOYMENT, LABEL_MANAGED
from workers.runtimes.process import ProcessRuntime
from workers.tasks import reconcile_host

pytestmark = [pytest.mark.fault, pytest.mark.django_db(transaction=True)]  # the agent reads what the test wrote

HEARTBEAT_S = 1
MUST_HOLD = (
    "the host shows offline within the heartbeat window; the running deployment keeps answering /health and "
    "/generate; on return the agent reconciles with exactly one server for the deployment; the serve job's log "
    "holds the server's output once and in order, and its live stream reaches the client whole (0 lines lost)"
)
UNKNOWN_ADAPTERS_LOGGED = 32  # serve.py logs this many distinct unknown adapter names in a server's life


class Beat(threading.Thread):
    """The console's periodic work, every second: hosts without heartbeats go offline, lost leases are reaped,
    and each online host is asked to reconcile (as workers.deployments_reconcile does under celery beat)."""

    def __init__(self) -> None:
        super().__init__(name="console-beat", daemon=True)
        self.stopped = threading.Event()
        self.errors: list[str] = []
        self.reconciles: list[tuple[float, object]] = []  # (when sent, its AsyncResult)

    def run(self) -> None:
        try:
            while not self.stopped.wait(1):
                try:
                    close_old_connections()
                    hosts_mark_offline()
                    jobs_reap()
                    for host in reconcile_console()["hosts"]:
                        sent = reconcile_host.apply_async(args=[host], queue=f"host.{host}", expires=10)
                        self.reconciles.append((time.monotonic(), sent))
                except Exception as error:  # the test reports it; the beat goes on like the real one
                    self.errors.append(f"{type(error).__name__}: {error}")
        finally:
            connection.close()

    def stop(self) -> None:
        self.stopped.set()
        self.join(30)


def start_agent(network: AgentNetwork, name: str, redis_port: int, database_port: int, log: Path) -> subprocess.Popen:
    """The host's agent inside the namespace: it reaches PostgreSQL and Redis only over the link."""
    database = _test_database_url().replace("@127.0.0.1:5432/", f"@{network.console_ip}:{database_port}/")
    assert network.console_ip in database, database
    redis_db = settings.REDIS_URL.rsplit("/", 1)[-1]
    env = {
        **os.environ,
        "DATABASE_URL": database,
        "REDIS_URL": f"redis://{network.console_ip}:{redis_port}/{redis_db}",
        "DATA_DIR": str(settings.DATA_DIR),
        "MODEL_STORE": str(settings.MODEL_STORE),
        "AGENT_HOST_NAME": name,
        "AGENT_RUNTIME": "process",
        "AGENT_NVML_MODULE": "tests.support.fake_nvml",
        "FAKE_NVML_GPUS": "1",
        "AGENT_HEARTBEAT_SECONDS": str(HEARTBEAT_S),
        "AGENT_METRICS_PORT": "0",
        # Well under HOST_OFFLINE_SECONDS: a heartbeat cut mid-transaction must not hold the host's row past it.
        "DB_IDLE_IN_TRANSACTION_SECONDS": "2",
        "JOB_LEASE_SECONDS": "4",
        "JOB_CANCEL_POLL_SECONDS": "0.2",
        "DEPLOY_HEALTH_SECONDS": "0.5",
        "PYTHONUNBUFFERED": "1",
    }
    # prefork with two processes, as agents run (docs/operations.md): a reconcile can run beside the serve job
    command = [sys.executable, "-m", "celery", "-A", "console", "worker", "--pool", "prefork", "--concurrency", "2"]
    command += ["-l", "INFO", "-Q", f"host.{name}", "-n", f"agent-{name}@%h", "--without-gossip", "--without-mingle"]
    with open(log, "w") as out:
        return subprocess.Popen(
            network.command(*command), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


@pytest.fixture
def console(tmp_path, redis_url):
    """The console under daphne on the test database, for the client following the serve job's live log."""
    with live_console(tmp_path, redis_url) as server:
        yield server


def generate(network: AgentNetwork, deployment: Deployment, adapter: str) -> bool:
    """A request naming an adapter the server does not have: answered by the base model, and one line in the
    server's output ("no LoRA adapter ... is loaded")."""
    body = json.dumps({"inputs": "hello", "parameters": {"max_new_tokens": 2, "adapter_id": adapter}})
    probe = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "10", f"{deployment.endpoint}/generate"]
    probe += ["-H", f"Authorization: Bearer {deployment.server_key.reveal()}", "-H", "Content-Type: application/json"]
    done = subprocess.run(network.command(*probe, "-d", body), capture_output=True, text=True)
    return done.stdout.strip() == "200"


def server_output(deployment: Deployment) -> list[str]:
    """The server's output as the process runtime keeps it: its complete lines."""
    data = (ProcessRuntime().state_dir / f"{instance_name(deployment)}.log").read_bytes()
    return data[: data.rfind(b"\n") + 1].decode("utf-8", errors="replace").splitlines()


def server_lines(job_id: int) -> list[str]:
    return list(
        JobLogLine.objects.filter(job_id=job_id, stream="server").order_by("seq").values_list("text", flat=True)
    )


def health(network: AgentNetwork, deployment: Deployment) -> bool:
    """The server's /health from inside the host's namespace, where its clients on that host reach it."""
    probe = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "3", f"{deployment.endpoint}/health"]
    probe += ["-H", f"Authorization: Bearer {deployment.server_key}"]
    done = subprocess.run(network.command(*probe), capture_output=True, text=True)
    return done.stdout.strip() == "200"


def servers_of(deployment: Deployment) -> list:
    runtime = ProcessRuntime()
    return [h for h in runtime.find({LABEL_DEPLOYMENT: str(deployment.pk)}) if runtime.status(h).alive]


def stop_servers(host_name: str) -> None:
    """The servers this test's agent started (they outlive their agent by design)."""
    runtime = ProcessRuntime()
    mine = {str(pk) for pk in Deployment.objects.filter(host__name=host_name).values_list("pk", flat=True)}
    for handle in runtime.find({LABEL_MANAGED: "true"}):
        if handle.labels.get(LABEL_DEPLOYMENT) in mine:
            runtime.stop(handle, grace=5)
            runtime.remove(handle)


def test_an_agent_cut_from_redis_and_postgres_goes_offline_keeps_serving_and_reconciles_once(
    admin, api, redis_url, settings, tmp_path, console
):
    need(ml_python() is not None, "the ML environment (make ml-env) runs serve.py")
    timings = harness.timings()
    settings.HOST_OFFLINE_SECONDS = timings.host_offline_s
    name = f"cut-{os.getpid()}"
    model = tiny_model_in_store()
    log = tmp_path / "agent.log"
    beat = Beat()

    title = "An agent loses the network to Redis and PostgreSQL"
    with fault_report("agent-network-loss", title, MUST_HOLD) as report, agent_network() as network:
        redis_port = network.relay(int(redis_url.split(":")[-1].split("/")[0]))
        database_port = network.relay(int(_test_database_url().split(":")[-1].split("/")[0]))
        agent = start_agent(network, name, redis_port, database_port, log)
        try:
            registered = wait_until(lambda: Host.objects.filter(name=name, status="online").exists(), 60)
            assert registered is not None, f"the agent never registered:\n{log.read_text()[-3000:]}"
            host = Host.objects.get(name=name)
            artifact = ready_artifact(host, model)
            spec = {"artifact": artifact.pk, "device": "gpu", "max_input_tokens": 200, "max_total_tokens": 256}
            created = api(admin).post("/api/v1/deployments/", {"name": "cut-tiny", "spec_input": spec}).data
            deployment = Deployment.objects.get(pk=created["id"])
            running = wait_until(
                lambda: Deployment.objects.filter(pk=deployment.pk, state__in=["running", "failed"]).exists(), 120
            )
            deployment.refresh_from_db()
            assert running is not None and deployment.state == "running", (
                deployment.state,
                deployment.failure_detail,
                log.read_text()[-3000:],
            )
            beat.start()
            trials = list(harness.repetitions())
            requests_per_cut = max(1, min(4, UNKNOWN_ADAPTERS_LOGGED // len(trials)))
            for trial in trials:
                adapters = [f"cut-{trial}-{n}" for n in range(requests_per_cut)]

                def body(adapters=adapters) -> Trial:
                    return _trial(network, host, deployment, admin, api, timings, log, beat, console, adapters)

                run_trial(report, body)
            assert beat.errors == [], beat.errors[:5]
        finally:
            beat.stop()
            os.killpg(agent.pid, signal.SIGKILL)  # a warm shutdown would wait for the serve job, which never ends
            agent.wait()
            stop_servers(name)


def _trial(network, host, deployment, admin, api, timings, log, beat: Beat, console, adapters: list[str]) -> Trial:
    assert health(network, deployment), "the server did not answer before the cut"
    [before] = servers_of(deployment)
    # The serve job's live log, followed through the cut and the return as the job page follows it.
    watcher = StreamWatcher(console.url, f"/ws/jobs/{deployment.job_id}/", session_cookie(admin)).start()
    try:
        return _cut_and_return(network, host, deployment, admin, api, timings, log, beat, watcher, before, adapters)
    finally:
        watcher.stop()


def _cut_and_return(network, host, deployment, admin, api, timings, log, beat, watcher, before, adapters) -> Trial:
    assert watcher.wait_for(1, 30), f"the client got none of the serve job's lines: {watcher.errors}"
    time.sleep(harness.random_delay(0, HEARTBEAT_S))
    network.cut()
    cut_at = time.monotonic()
    answered = failed = 0
    offline_after = None
    unsent = list(adapters)  # one request each, spread over the cut: lines the agent copies only after it
    try:
        while time.monotonic() - cut_at < timings.agent_network_loss_s:
            status = api(admin).get(f"/api/v1/hosts/{host.pk}/").data["status"]
            if status == "offline" and offline_after is None:
                offline_after = time.monotonic() - cut_at
            if health(network, deployment):
                answered += 1
            else:
                failed += 1
            elapsed = time.monotonic() - cut_at
            if unsent and elapsed >= (len(adapters) - len(unsent)) * timings.agent_network_loss_s / len(adapters):
                if generate(network, deployment, unsent.pop(0)):
                    answered += 1
                else:
                    failed += 1
            time.sleep(0.5)
    finally:
        network.restore()
    restored = time.monotonic()
    window = timings.host_offline_s + HEARTBEAT_S + 2  # the cutoff, one heartbeat missed, the beat's period
    assert offline_after is not None and offline_after <= window, f"offline after {offline_after} s (window {window})"
    assert failed == 0 and answered > 0, f"the server failed {failed} requests during the cut ({answered} answered)"
    assert not unsent, f"{len(unsent)} requests not sent during the cut"

    def settled() -> bool:
        deployment.refresh_from_db()
        online = Host.objects.filter(pk=host.pk, status="online").exists()
        watched = Job.objects.filter(pk=deployment.job_id, status="running").exists()
        return online and watched and deployment.state == "running" and len(servers_of(deployment)) == 1

    back = wait_until(settled, 60, interval=0.5)
    assert back is not None, (
        f"not settled within 60 s of the link's return: state {deployment.state}, servers "
        f"{[h.ref for h in servers_of(deployment)]}\n{log.read_text()[-3000:]}"
    )

    # The agent's own reconcile after the return: it ran, and removed or failed nothing of this deployment.
    outcomes: list[dict] = []

    def reconciled() -> bool:
        ran = [result for sent_at, result in list(beat.reconciles) if sent_at > restored and result.ready()]
        outcomes.extend(result.get() for result in ran if result.successful())
        return bool(outcomes)

    ran = wait_until(reconciled, 30, interval=0.5)
    assert ran is not None, f"no reconcile ran on the agent within 30 s of the return\n{log.read_text()[-3000:]}"
    outcome = outcomes[0]
    assert deployment.pk not in outcome["failed"], outcome
    assert not [name for name in outcome["removed"] if name.startswith(f"llmdeploy-{deployment.pk}-")], outcome
    time.sleep(3)  # a reconcile or a retried job that would start a second server has had its turn
    servers = servers_of(deployment)
    assert len(servers) == 1, f"{len(servers)} servers for the deployment: {[h.ref for h in servers]}"
    assert health(network, deployment)
    # Who took the server back: the reaped serve job's next attempt, or the reconciler (deployment.adopted).
    job = Job.objects.get(pk=deployment.job_id)
    by_job = JobLogLine.objects.filter(job=job, text__startswith="adopted the running server").count()
    by_reconciler = AuditEvent.objects.filter(action="deployment.adopted", target_id=str(deployment.pk)).count()
    same = servers[0].ref == before.ref
    recover_s = time.monotonic() - restored

    # The job's log holds the server's output (with the cut's lines), each line once and in order: nothing the
    # agent held while cut off was lost or stored twice when the reaper and the next attempt wrote meanwhile.
    output = server_output(deployment)
    assert [f'"{name}"' in "\n".join(output) for name in adapters] == [True] * len(adapters), output[-10:]
    copied = wait_until(lambda: server_lines(job.pk) == server_output(deployment), 30, interval=0.5)
    stored = server_lines(job.pk)
    lost, twice = Counter(output) - Counter(stored), Counter(stored) - Counter(output)
    assert copied is not None, (
        f"the job's log holds {len(stored)} server lines for {len(output)} printed: lost {list(lost)[:5]}, "
        f"stored twice or more {list(twice)[:5]}, the same lines out of order: {not lost and not twice}"
    )
    # The agent's own line from before the cut (held in memory if the cut came within a flush interval of it).
    assert JobLogLine.objects.filter(job=job, text__startswith="running: ").exists(), "the job's 'running' line"
    # The client holds every line of the job's stream, 1..N as the database has them, none twice.
    log_seq = Job.objects.get(pk=job.pk).log_seq
    watcher.wait_for(log_seq, 30)
    missing = watcher.missing(log_seq)
    lines = dict(JobLogLine.objects.filter(job=job).values_list("seq", "text"))
    differ = [seq for seq, item in watcher.items.items() if item["text"] != lines.get(seq)]
    assert missing == [] and watcher.duplicates == 0 and differ == [], (
        f"the client missed {missing[:10]} ({len(missing)}), got {watcher.duplicates} twice, {len(differ)} not as "
        f"stored ({differ[:10]}), of 1..{log_seq}; {watcher.connections} connections; {watcher.errors[:3]}"
    )
    detail = f"offline after {offline_after:.1f} s; {answered} /health and /generate answers in the cut; "
    detail += f"{'the same server' if same else 'a new server'} (serve job attempt {job.attempts} adopted it "
    detail += f"{by_job}x, the reconciler {by_reconciler}x); the agent reconciled after the return; the job's log "
    detail += f"holds the server's {len(output)} lines once each ({len(adapters)} printed in the cut); the client "
    detail += f"held lines 1..{log_seq}, 0 missing, 0 twice, over {watcher.connections} connection(s)"
    return Trial(same, recover_s, detail)

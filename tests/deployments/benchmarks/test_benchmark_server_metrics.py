"""Issue 17 item 2, the server's half: the `benchmark` job hands the load generator every running server's own
/metrics (the deployment's and its running replicas', read directly from the agent's host, no key), and each
step row gets the server's queue and batch figures as columns beside the client's."""

from __future__ import annotations

import pytest
from django.test import override_settings

from console import roles
from console.accounts.services.access import object_grant
from deployments.benchmarks import services
from deployments.models import BenchmarkRun, Deployment, DeploymentReplica, Host, Job, JobLogLine
from tests.factories import DeploymentSpecFactory
from tests.support.serve_process import ROOT, free_port
from tests.support.stamping_upstream import StampingUpstream
from tests.workers.test_loadgen_metrics import Exposition
from workers import runner
from workers.handlers.benchmark import kv_budgets, metrics_urls

pytestmark = pytest.mark.django_db(transaction=True)
State = Deployment.State


def test_the_generator_reads_each_running_servers_metrics_and_no_stopped_ones():
    deployment = DeploymentSpecFactory(current=True, deployment__name="scraped").deployment
    Deployment.objects.filter(pk=deployment.pk).update(state=State.RUNNING, endpoint="http://10.0.0.5:8080/")
    DeploymentReplica.objects.create(deployment=deployment, index=1, state=State.RUNNING, endpoint="http://10.0.0.6:81")
    DeploymentReplica.objects.create(deployment=deployment, index=2, state=State.STOPPED, endpoint="http://10.0.0.7:82")
    run = BenchmarkRun.objects.create(deployment=Deployment.objects.get(pk=deployment.pk), workload={})
    assert metrics_urls(run) == ["http://10.0.0.5:8080/metrics", "http://10.0.0.6:81/metrics"]
    Deployment.objects.filter(pk=deployment.pk).update(state=State.FAILED)
    run.deployment.refresh_from_db()
    assert metrics_urls(run) == ["http://10.0.0.6:81/metrics"]  # server 0 restarting: the replica still serves


def test_a_tgi_servers_kv_capacity_comes_from_its_routers_warm_up_line():
    """TGI 3.x's /info has no max_batch_total_tokens; its router logs it at warm-up, into the serve job's log."""
    deployment = DeploymentSpecFactory(current=True, deployment__name="kv-logged").deployment
    logged, silent = (Job.objects.create(kind=Job.Kind.SERVE, status=Job.Status.RUNNING) for _ in range(2))
    lines = ["Warming up model", "INFO text_generation_router_v3: backends/v3/src/lib.rs:137: Setting max batch "
             "total tokens to 123456", "Connected"]  # fmt: skip
    JobLogLine.objects.bulk_create(JobLogLine(job=logged, seq=n, text=text) for n, text in enumerate(lines, 1))
    Deployment.objects.filter(pk=deployment.pk).update(state=State.RUNNING, endpoint="http://10.0.0.5:80", job=logged)
    DeploymentReplica.objects.create(
        deployment=deployment, index=1, state=State.RUNNING, endpoint="http://10.0.0.6:81", job=silent
    )
    run = BenchmarkRun.objects.create(deployment=Deployment.objects.get(pk=deployment.pk), workload={})
    assert kv_budgets(run) == {"http://10.0.0.5:80/metrics": 123456}  # the replica's log has no such line


def test_each_step_row_holds_the_servers_figures(admin, engineer, settings, tmp_path):
    settings.DATA_DIR = tmp_path
    host = Host.objects.create(name="bench-agent", runtime=Host.Runtime.PROCESS, status=Host.Status.ONLINE)
    deployment = DeploymentSpecFactory(current=True, deployment__name="bench-scraped").deployment
    object_grant(actor=admin, grantee=engineer, action=roles.USE_DEPLOYMENT, target=deployment)
    # The model server's /metrics: a TGI router at a moment with 3 queued and 8 running (the fixture's values).
    Deployment.objects.filter(pk=deployment.pk).update(state=State.RUNNING, host=host)
    run = sweep_beside_exposition(engineer, deployment, TGI_AFTER.read_text())
    steps = list(run.steps.order_by("index"))
    assert len(steps) == 2
    for step in steps:
        assert not step.has_errors and step.requests_ok > 0
        assert (step.queue_size, step.batch_size, step.batch_tokens) == (3, 8, 5120)
        assert (step.queue_size_max, step.batch_size_max, step.kv_cache_usage_max) == (3, 8, None)
        # The exposition did not move during the step: no request ended there, so no time per token of its own.
        assert step.server_itl_ms_mean is None and "server_timing" not in step.extra
        assert step.extra["server_metrics_dialect"] == "tgi" and "server_metrics_error" not in step.extra


TGI_AFTER = ROOT / "tests/fixtures/server-metrics/tgi-3-after.prom"


def sweep_beside_exposition(engineer, deployment: Deployment, exposition: str) -> BenchmarkRun:
    """A two-step benchmark job of `deployment` on the worker: the gateway is a stamping fake upstream and the
    deployment's server is an exposition of `exposition` at its /metrics."""
    server = Exposition(exposition)
    Deployment.objects.filter(pk=deployment.pk).update(endpoint=server.url.removesuffix("/metrics"))
    workload = {"prompt_tokens": 8, "output_tokens": 4, "levels": [1, 2], "duration_s": 1, "warmup_requests": 1}
    try:
        with StampingUpstream(free_port(), delay=0.005, first_delay=0.02) as upstream:
            with override_settings(GATEWAY_PUBLIC_URL=upstream.url):
                run = services.benchmark_start(actor=engineer, deployment=deployment, workload=workload)
            assert runner.run(run.job_id) == "succeeded", list(JobLogLine.objects.filter(job=run.job_id).values("text"))
    finally:
        server.close()
    return run

"""Issue 17: the `benchmark` job on a worker: the handler runs the load generator (workers/jobs/loadgen.py) as a
process with the agent's python against the gateway address (here a fake upstream that stamps its chunks), with
the run's key as a file; each step becomes a row as it finishes; the end revokes the key and removes its file."""

from __future__ import annotations

import pytest
from django.test import override_settings

from audit.models import AuditEvent
from console import roles
from console.accounts.services.access import object_grant
from deployments.benchmarks import services
from deployments.models import BenchmarkRun, Deployment, Host, InferenceKey, JobLogLine
from tests.factories import DeploymentSpecFactory
from tests.support.serve_process import free_port
from tests.support.stamping_upstream import StampingUpstream
from workers import runner
from workers.handlers.benchmark import tokenizer_of, workdir

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_sweep_runs_on_the_worker_and_fills_in_its_steps(admin, engineer, settings, tmp_path):
    settings.DATA_DIR = tmp_path
    host = Host.objects.create(name="bench-agent", runtime=Host.Runtime.PROCESS, status=Host.Status.ONLINE)
    deployment = DeploymentSpecFactory(current=True, deployment__name="bench-job").deployment
    Deployment.objects.filter(pk=deployment.pk).update(state=Deployment.State.RUNNING, host=host)
    object_grant(actor=admin, grantee=engineer, action=roles.USE_DEPLOYMENT, target=deployment)
    workload = {"prompt_tokens": 8, "output_tokens": 4, "levels": [1, 2], "duration_s": 1, "warmup_requests": 1}
    with StampingUpstream(free_port(), delay=0.005, first_delay=0.02) as upstream:
        with override_settings(GATEWAY_PUBLIC_URL=upstream.url):
            run = services.benchmark_start(actor=engineer, deployment=deployment, workload=workload)
        raw = run.api_key.reveal()
        assert runner.run(run.job_id) == "succeeded", list(JobLogLine.objects.filter(job=run.job_id).values("text"))
    run.refresh_from_db()
    assert run.state == "succeeded" and run.started_at and run.finished_at and run.api_key is None
    steps = list(run.steps.order_by("index"))
    assert [step.concurrency for step in steps] == [1, 2]
    for step in steps:
        assert step.requests > 0 and not step.has_errors and step.output_tokens_per_s > 0
        assert 15 <= step.ttft_ms_p50 <= 200  # the upstream waits 20 ms before its first token
    assert not InferenceKey.objects.usable().filter(pk=run.inference_key_id).exists()
    assert not workdir(run.job).exists()  # the key file went with it
    log = " ".join(JobLogLine.objects.filter(job=run.job_id).values_list("text", flat=True))
    assert raw not in log and "loadgen" in log
    assert AuditEvent.objects.filter(action="benchmark.finished", detail__contains='"succeeded"').exists()


def test_the_generator_sizes_prompts_with_the_served_models_tokenizer_when_the_host_has_it(tmp_path):
    spec = DeploymentSpecFactory(current=True, artifact__path=str(tmp_path))
    run = BenchmarkRun.objects.create(deployment=spec.deployment, spec=spec, workload={})
    assert tokenizer_of(run) is None
    (tmp_path / "tokenizer.json").write_text("{}")
    assert tokenizer_of(run) == str(tmp_path / "tokenizer.json")
    run.spec = None
    assert tokenizer_of(run) is None

"""Issue 17, the tuning loop: a finished benchmark's suggestions (from its stored steps, its spec, the planner on
the server's GPU), applying one (deploy on the deployment, else 403 and nothing changes) makes a new spec version
and restarts the server, or files an approval on a production deployment; the re-run of the same workload waits
for the new version and starts then (a benchmark job like any other), or is cancelled with the reason when the
approval is rejected or the wait runs out. Every step is audited."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from console import roles
from console.accounts.services.access import object_grant
from deployments.benchmarks import tuning
from deployments.benchmarks.workload import check_workload
from deployments.models import ApprovalRequest, BenchmarkRun, BenchmarkStep, Deployment, Gpu, GpuReservation, Job
from deployments.serving import approvals
from tests.factories import DeploymentSpecFactory, GpuFactory, HostFactory, ModelArtifactFactory, UserFactory
from tests.support.model_dirs import write_llama_dir

pytestmark = pytest.mark.django_db
URL = "/api/v1/benchmarks/"
State = Deployment.State
RULE = "more_concurrent_requests"
WORKLOAD = {"prompt_tokens": 32, "output_tokens": 16, "sweep": "concurrency", "levels": [64, 256], "duration_s": 5}


@pytest.fixture
def tiny(tmp_path):
    """A tiny model on a process host with one 16 GB GPU."""
    host = HostFactory(name="tuning-node")
    GpuFactory(host=host, index=0, memory_total=16 * 10**9)
    return ModelArtifactFactory(host=host, path=str(write_llama_dir(tmp_path / "tiny")), repo__repo_id="org/tiny")


@pytest.fixture
def bob(db):
    """A second admin: the one who decides on what admin asks for."""
    return UserFactory(username="bob-admin", roles=["admin"])


def running(artifact, *, name="tuned", environment=Deployment.Environment.DEVELOPMENT) -> Deployment:
    """A TGI deployment running on GPU 0 of the model's host (max_concurrent_requests 128, the default)."""
    spec = DeploymentSpecFactory(
        deployment__name=name,
        deployment__state=State.RUNNING,
        deployment__environment=environment,
        artifact=artifact,
        current=True,
        max_input_tokens=128,
        max_total_tokens=256,
    )
    Deployment.objects.filter(pk=spec.deployment_id).update(host=artifact.host, gpu_indexes=[0])
    return Deployment.objects.get(pk=spec.deployment_id)


def overloaded_run(deployment, actor) -> BenchmarkRun:
    """A finished sweep whose heaviest step (256 at once, past the cap of 128) got 429s: TGI refused them."""
    run = BenchmarkRun.objects.create(
        deployment=deployment,
        spec=deployment.spec,
        created_by=actor,
        workload=check_workload(WORKLOAD),
        state=BenchmarkRun.State.SUCCEEDED,
    )
    figures = {"ttft_ms_p50": 60.0, "itl_ms_p50": 15.0, "prompt_tokens_mean": 32.0}
    BenchmarkStep.objects.create(run=run, index=0, concurrency=64, requests=640, requests_ok=640,
                                 output_tokens_per_s=3000.0, **figures)  # fmt: skip
    BenchmarkStep.objects.create(run=run, index=1, concurrency=256, requests=900, requests_ok=780,
                                 requests_failed=120, errors={"http_429": 120}, has_errors=True,
                                 output_tokens_per_s=3100.0, **figures)  # fmt: skip
    return run


def detail(action: str, **match) -> dict:
    events = [json.loads(e.detail) for e in AuditEvent.objects.filter(action=action).order_by("id")]
    found = [d for d in events if all(d.get(k) == v for k, v in match.items())]
    assert found, f"no {action} event with {match}: {events}"
    return found[-1]


def test_suggestions_come_from_the_stored_figures_and_say_who_may_apply(api, admin, engineer, tiny):
    deployment = running(tiny)
    run = overloaded_run(deployment, admin)
    object_grant(actor=admin, grantee=engineer, action=roles.USE_DEPLOYMENT, target=deployment)
    body = api(engineer).get(f"{URL}{run.pk}/suggestions/", expected=200).data
    [suggestion] = body["suggestions"]
    assert suggestion["rule"] == RULE and suggestion["change"] == {"max_concurrent_requests": 256}
    assert "120 requests were refused" in suggestion["why"]
    assert body["can_apply"] is False  # use without deploy: the button is absent
    object_grant(actor=admin, grantee=engineer, action=roles.DEPLOY, target=deployment)
    assert api(engineer).get(f"{URL}{run.pk}/suggestions/", expected=200).data["can_apply"] is True


def test_advice_on_the_cpu_or_without_the_model_says_so_instead_of_failing(admin, tiny):
    deployment = running(tiny)
    run = overloaded_run(deployment, admin)
    tiny.path = str(tiny.path) + "-gone"
    tiny.save(update_fields=["path"])
    run = BenchmarkRun.objects.get(pk=run.pk)
    advice = tuning.run_advice(run)
    assert advice.suggestions == [] and any("could not be sized" in note for note in advice.notes)
    run.spec.device = "cpu"
    advice = tuning.run_advice(run)
    assert [s.rule for s in advice.suggestions] == [RULE] and any("CPU" in note for note in advice.notes)


def test_applying_without_deploy_is_refused_and_changes_nothing(api, admin, engineer, tiny):
    deployment = running(tiny)
    run = overloaded_run(deployment, admin)
    object_grant(actor=admin, grantee=engineer, action=roles.USE_DEPLOYMENT, target=deployment)
    api(engineer).post(f"{URL}{run.pk}/apply/", {"rule": RULE}, expected=403)
    deployment.refresh_from_db()
    assert deployment.specs.count() == 1 and deployment.state == State.RUNNING
    assert BenchmarkRun.objects.count() == 1 and not AuditEvent.objects.filter(action="benchmark.suggestion_applied")


def test_applying_on_staging_makes_a_version_restarts_and_the_rerun_starts_on_it(api, admin, engineer, tiny):
    deployment = running(tiny)
    run = overloaded_run(deployment, admin)
    for action in (roles.DEPLOY, roles.USE_DEPLOYMENT):
        object_grant(actor=admin, grantee=engineer, action=action, target=deployment)
    assert "rule" in api(engineer).post(f"{URL}{run.pk}/apply/", {"rule": "make_it_fast"}, expected=400).data

    body = api(engineer).post(f"{URL}{run.pk}/apply/", {"rule": RULE}, expected=201).data
    rerun = BenchmarkRun.objects.get(pk=body["id"])
    deployment.refresh_from_db()
    assert deployment.spec.version == 2 and deployment.spec.max_concurrent_requests == 256
    assert deployment.spec.note.startswith(f"benchmark #{run.pk}: ") and deployment.spec.created_by == engineer
    # The running server restarts with it (it was running without a job here: launched again at once).
    assert deployment.state != State.RUNNING and deployment.job.kind == Job.Kind.SERVE
    assert AuditEvent.objects.filter(action="deployment.restart_requested", actor_name=engineer.username).exists()
    assert body["baseline"] == run.pk and body["after_version"] == 2 and body["state"] == "pending"
    assert body["suggestion"]["rule"] == RULE and body["suggestion"]["change"] == {"max_concurrent_requests": 256}
    assert rerun.workload == run.workload and rerun.job is None and rerun.created_by == engineer
    applied = detail("benchmark.suggestion_applied", run=run.pk)
    assert applied["rule"] == RULE and applied["version"] == 2 and applied["rerun"] == rerun.pk
    # Applying again: the run now measured an older version than the deployment runs.
    assert "rule" in api(engineer).post(f"{URL}{run.pk}/apply/", {"rule": RULE}, expected=400).data

    assert tuning.reruns_due() == 0  # still starting
    Deployment.objects.filter(pk=deployment.pk).update(state=State.RUNNING)
    assert tuning.reruns_due() == 1
    rerun.refresh_from_db()
    assert rerun.job.kind == Job.Kind.BENCHMARK and rerun.spec.version == 2 and rerun.inference_key.user == engineer
    assert detail("benchmark.started", rerun_of=run.pk)["spec_version"] == 2
    assert tuning.reruns_due() == 0  # started once


def test_on_production_the_rerun_waits_for_the_approval_and_starts_once_applied(api, admin, bob, tiny):
    deployment = running(tiny, environment=Deployment.Environment.PRODUCTION)
    run = overloaded_run(deployment, admin)
    body = api(admin).post(f"{URL}{run.pk}/apply/", {"rule": RULE}, expected=202).data
    request = ApprovalRequest.objects.get(pk=body["approval"])
    assert request.state == ApprovalRequest.State.PENDING and request.diff == {"max_concurrent_requests": [128, 256]}
    assert body["after_version"] is None and body["state"] == "pending"
    assert detail("benchmark.suggestion_applied", run=run.pk)["approval"] == request.pk
    deployment.refresh_from_db()
    assert deployment.spec.version == 1 and deployment.state == State.RUNNING
    assert tuning.reruns_due() == 0

    approvals.approve(actor=bob, request=request, comment="ok")
    request.refresh_from_db()
    assert request.state == ApprovalRequest.State.APPLIED, request.result
    assert tuning.reruns_due() == 0  # the new version is launching
    Deployment.objects.filter(pk=deployment.pk).update(state=State.RUNNING)
    assert tuning.reruns_due() == 1
    rerun = BenchmarkRun.objects.get(pk=body["id"])
    assert rerun.after_version == 2 and rerun.spec.version == 2 and rerun.job.kind == Job.Kind.BENCHMARK


def test_a_rejected_approval_cancels_the_rerun_with_the_reason(api, admin, bob, tiny):
    deployment = running(tiny, environment=Deployment.Environment.PRODUCTION)
    run = overloaded_run(deployment, admin)
    rerun_id = api(admin).post(f"{URL}{run.pk}/apply/", {"rule": RULE}, expected=202).data["id"]
    rerun = BenchmarkRun.objects.get(pk=rerun_id)
    approvals.reject(actor=bob, request=rerun.approval, comment="not during the sale")
    assert tuning.reruns_due() == 0
    rerun.refresh_from_db()
    assert rerun.state == BenchmarkRun.State.CANCELLED and rerun.failure_cause == "approval_rejected"
    assert "not during the sale" in rerun.failure_detail and rerun.job is None
    assert detail("benchmark.rerun_cancelled", baseline=run.pk)["cause"] == "approval_rejected"


def test_a_rerun_that_waited_too_long_or_whose_deployment_stays_down_is_cancelled(admin, tiny, settings):
    deployment = running(tiny)
    run = overloaded_run(deployment, admin)
    rerun = tuning.suggestion_apply(actor=admin, run=run, rule=RULE)
    settings.BENCHMARK_RERUN_WAIT_SECONDS = 60
    BenchmarkRun.objects.filter(pk=rerun.pk).update(created_at=timezone.now() - timedelta(minutes=2))
    assert tuning.reruns_due() == 0
    rerun.refresh_from_db()
    assert rerun.state == BenchmarkRun.State.CANCELLED and rerun.failure_cause == "rerun_timeout"
    assert "did not run version 2" in rerun.failure_detail

    settings.BENCHMARK_RERUN_WAIT_SECONDS = 3600
    again = BenchmarkRun.objects.create(deployment=deployment, baseline=run, after_version=3, workload=run.workload)
    Deployment.objects.filter(pk=deployment.pk).update(
        state=State.STOPPED, state_changed_at=timezone.now() - timedelta(minutes=10), next_restart_at=None
    )
    assert tuning.reruns_due() == 0
    again.refresh_from_db()
    assert again.state == BenchmarkRun.State.PENDING  # stopped long ago, but the re-run only began waiting now
    BenchmarkRun.objects.filter(pk=again.pk).update(created_at=timezone.now() - timedelta(minutes=6))
    assert tuning.reruns_due() == 0
    again.refresh_from_db()
    assert again.state == BenchmarkRun.State.CANCELLED and again.failure_cause == "deployment_down"


def queue_bound(run: BenchmarkRun) -> None:
    """The heaviest step waited in the server's queue with its KV cache full."""
    BenchmarkStep.objects.filter(run=run, index=1).update(
        queue_size=12.0, kv_cache_usage_max=0.97, server_queue_ms_mean=700.0, requests_failed=0, errors={}
    )


def test_the_planner_counts_only_the_memory_other_servers_leave_on_the_gpu(admin, tiny):
    deployment = running(tiny)
    deployment.spec.cuda_memory_fraction = 0.5
    deployment.spec.save(update_fields=["cuda_memory_fraction"])
    run = overloaded_run(deployment, admin)
    queue_bound(run)
    gpu = Gpu.objects.get(host=tiny.host, index=0)
    GpuReservation.objects.create(gpu=gpu, memory_bytes=15 * 10**9, holder=deployment.holder)  # its own: free to it
    [memory, *_] = [s for s in tuning.run_advice(run).suggestions if s.rule == "queue_memory_headroom"]
    assert memory.change == {"cuda_memory_fraction": 1.0} and "KV cache grows from" in memory.effect

    GpuReservation.objects.create(gpu=gpu, memory_bytes=15 * 10**9, holder="deployment:other")
    advice = tuning.run_advice(run)
    assert not [s for s in advice.suggestions if s.rule in ("queue_memory_headroom", "fp8_kv_cache")]
    assert any("cuda_memory_fraction 1.0; the planner says it does not fit" in note for note in advice.notes)


def test_a_saturated_gpu_is_sharded_onto_a_free_nvlink_peer_only(admin, tiny):
    deployment = running(tiny)
    Gpu.objects.filter(host=tiny.host, index=0).update(nvlink_group="nv0")
    peer = GpuFactory(host=tiny.host, index=1, memory_total=16 * 10**9, nvlink_group="nv0")
    GpuFactory(host=tiny.host, index=2, memory_total=16 * 10**9, nvlink_group="nv1")  # free, but over PCIe
    run = overloaded_run(deployment, admin)
    queue_bound(run)
    BenchmarkStep.objects.filter(run=run, index=1).update(kv_cache_usage_max=0.2, extra={"gpu_utilization_max": 0.98})
    [shard] = [s for s in tuning.run_advice(run).suggestions if s.rule == "shard_onto_peer"]
    assert shard.change == {"num_shard": 2} and "1 GPU(s) beside it are free" in shard.why

    GpuReservation.objects.create(gpu=peer, memory_bytes=10**9, holder="deployment:other")
    assert "shard_onto_peer" not in [s.rule for s in tuning.run_advice(run).suggestions]

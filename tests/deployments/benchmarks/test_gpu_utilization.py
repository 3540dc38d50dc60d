"""Issue 17 item 5, the GPU's half: the benchmark job hands the load generator the GPUs of the deployment's servers
on its host, the generator reads them through NVML during each step, the step row keeps gpu_utilization_max in
`extra`, and the tuning loop shards a saturated GPU onto a free NVLink peer from those stored figures.

NVML is tests/support/fake_nvml.py (no GPU on the development machines): the idle reading is the fixture's real
H200 one (0 %), a busy one is made up with FAKE_NVML_UTILIZATION."""

from __future__ import annotations

import pytest

from console import roles
from console.accounts.services.access import object_grant
from deployments.benchmarks import tuning
from deployments.benchmarks.workload import check_workload
from deployments.models import BenchmarkRun, Deployment, DeploymentReplica, DeploymentSpec, Gpu
from tests.deployments.benchmarks.test_benchmark_server_metrics import sweep_beside_exposition
from tests.deployments.benchmarks.test_tuning import WORKLOAD, running, tiny  # noqa: F401 (a fixture)
from tests.factories import GpuFactory, HostFactory
from tests.support.serve_process import ROOT, free_port
from tests.support.stamping_upstream import StampingUpstream
from tests.workers.test_loadgen import run_loadgen
from tests.workers.test_loadgen_metrics import Exposition, sweep_spec
from workers.handlers.benchmark import gpu_indexes, process_event

pytestmark = pytest.mark.django_db(transaction=True)
State = Deployment.State
FAKE = "tests.support.fake_nvml"
TGI_AFTER = ROOT / "tests/fixtures/server-metrics/tgi-3-after.prom"  # 3 requests queued, 8 running


def test_the_generator_reads_the_gpus_of_the_running_servers_on_the_deployments_host(tiny):  # noqa: F811
    deployment = running(tiny)  # GPU 0 of the model's host
    other = HostFactory(name="elsewhere")
    DeploymentReplica.objects.create(deployment=deployment, index=1, state=State.RUNNING, endpoint="http://h:1",
                                     host=tiny.host, gpu_indexes=[2, 1])  # fmt: skip
    DeploymentReplica.objects.create(deployment=deployment, index=2, state=State.RUNNING, endpoint="http://o:1",
                                     host=other, gpu_indexes=[5])  # fmt: skip
    DeploymentReplica.objects.create(deployment=deployment, index=3, state=State.STOPPED, endpoint="http://h:2",
                                     host=tiny.host, gpu_indexes=[3])  # fmt: skip
    run = BenchmarkRun.objects.create(deployment=deployment, spec=deployment.spec, workload={})
    assert gpu_indexes(run) == [0, 1, 2]  # the replica elsewhere has another agent's GPUs; the stopped one none
    DeploymentSpec.objects.filter(pk=deployment.spec_id).update(device=DeploymentSpec.Device.CPU)
    run.spec.refresh_from_db()
    assert gpu_indexes(run) == []


def test_each_step_row_keeps_the_gpus_utilization_read_by_the_job(admin, engineer, tiny, settings, tmp_path):  # noqa: F811
    settings.DATA_DIR = tmp_path
    settings.AGENT_NVML_MODULE = FAKE  # the job's environment is a clean one: the fixture's idle reading
    deployment = running(tiny)
    object_grant(actor=admin, grantee=engineer, action=roles.USE_DEPLOYMENT, target=deployment)
    run = sweep_beside_exposition(engineer, deployment, TGI_AFTER.read_text())
    steps = list(run.steps.order_by("index"))
    assert len(steps) == 2
    for step in steps:
        assert not step.has_errors and step.queue_size == 3  # the server's own figures still read
        assert step.extra["gpu_indexes"] == [0] and step.extra["gpu_utilization_samples"] >= 1
        assert step.extra["gpu_utilization_max"] == 0.0 and step.extra["gpu_utilization_mean"] == 0.0
        assert "gpu_metrics_error" not in step.extra


def stored_sweep(run: BenchmarkRun, tmp_path) -> list:
    """The generator's sweep against the stamping upstream with a TGI router's /metrics (requests waiting) and
    the fake NVML (FAKE_NVML_UTILIZATION set by the caller), its step events stored through the handler's own path."""
    server = Exposition(TGI_AFTER.read_text())
    try:
        with StampingUpstream(free_port(), delay=0.002, first_delay=0.01) as upstream:
            spec = sweep_spec(upstream.url, [server.url], tmp_path, duration_s=1.2, gpu_indexes=[0], nvml_module=FAKE)
            result = run_loadgen(spec, tmp_path)
    finally:
        server.close()
    assert result.code == 0, result.stderr[-2000:]
    assert sum(process_event(run, event) for event in result.events) == 2
    return list(run.steps.order_by("index"))


@pytest.mark.parametrize(("busy", "shards"), [("96", True), ("50", False)])
def test_a_saturated_gpu_measured_by_the_generator_is_sharded_onto_a_free_nvlink_peer(
    admin,
    tiny,  # noqa: F811
    tmp_path,
    monkeypatch,
    busy,
    shards,
):
    deployment = running(tiny)
    Gpu.objects.filter(host=tiny.host, index=0).update(nvlink_group="nv0")
    GpuFactory(host=tiny.host, index=1, memory_total=16 * 10**9, nvlink_group="nv0")  # free, over NVLink
    run = BenchmarkRun.objects.create(
        deployment=deployment,
        spec=deployment.spec,
        created_by=admin,
        workload=check_workload(WORKLOAD),
        state=BenchmarkRun.State.SUCCEEDED,
    )
    monkeypatch.setenv("FAKE_NVML_UTILIZATION", busy)
    steps = stored_sweep(run, tmp_path)
    assert [step.extra["gpu_utilization_max"] for step in steps] == [int(busy) / 100] * 2
    suggestions = [s for s in tuning.run_advice(run).suggestions if s.rule == "shard_onto_peer"]
    if shards:
        [shard] = suggestions
        assert shard.change == {"num_shard": 2}
        assert "The busiest GPU was 96 % busy" in shard.why and "1 GPU(s) beside it are free" in shard.why
    else:
        assert suggestions == []  # half busy: not the GPU that limits

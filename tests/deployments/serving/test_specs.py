"""Specs: what a user may ask for (checked against the checkpoint, the allow-lists and the planner), the
exact launcher arguments (every flag a real TGI launcher flag), versions with diffs, rollback, audit."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from audit.models import AuditEvent
from console.errors import ApplicationError
from deployments.backends.tgi import launch as tgi
from deployments.models import AllowedImage, Deployment, Host, Job
from deployments.serving import services as lifecycle
from deployments.serving.planning import verdict
from deployments.serving.specs import clean_spec, command_preview
from tests.support.deploy_fixtures import process_host, ready_artifact
from tests.support.model_dirs import write_llama_dir
from workers.jobs.tgi_flags import BY_NAME

pytestmark = pytest.mark.django_db


@pytest.fixture
def model_dir(tmp_path):
    """A model directory the planner can size (a 7B Llama: config.json and a header-only safetensors)."""
    return write_llama_dir(tmp_path / "llama", "7b")


@pytest.fixture
def artifact(model_dir):
    return ready_artifact(process_host(gpus=1, gpu_bytes=24 * 10**9), model_dir)


def full_spec(**overrides) -> SimpleNamespace:
    fields = {
        "max_concurrent_requests": 64,
        "quantize": "bitsandbytes-nf4",
        "dtype": "bfloat16",
        "kv_cache_dtype": "fp8_e4m3fn",
        "max_input_tokens": 4000,
        "max_total_tokens": 4096,
        "max_batch_prefill_tokens": 8192,
        "cuda_memory_fraction": 0.8,
        "lora_adapters": [{"name": "support", "path": "/data/adapters/support"}, {"name": "org/adapter"}],
        "device": "cpu",
        "extra_env": {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", "API_KEY": "x"},
    }
    return SimpleNamespace(**{**fields, **overrides})


@pytest.mark.parametrize("native", [True, False])
def test_every_emitted_flag_is_a_real_launcher_flag(native):
    plan = tgi.LaunchPlan(
        model_path="/data/m",
        port=80,
        hostname="127.0.0.1",
        num_shard=2,
        instance="llmdeploy-1-x",
        native=native,
        master_port=29600,
        prometheus_port=9100,
    )
    args = tgi.launcher_args(full_spec(), plan)
    flags = [arg for arg in args if arg.startswith("--")]
    assert flags and all(flag in BY_NAME for flag in flags), [f for f in flags if f not in BY_NAME]
    for flag in flags:  # a value flag is followed by its value, a switch is not
        value = args[args.index(flag) + 1] if args.index(flag) + 1 < len(args) else None
        if BY_NAME[flag].kind == "bool":
            assert value is None or value.startswith("--")
        else:
            assert value is not None and not value.startswith("--"), flag
            if BY_NAME[flag].choices:
                assert value in BY_NAME[flag].choices, (flag, value)
    assert ("--shard-uds-path" in args) == native and ("--master-port" in args) == native
    assert args[args.index("--lora-adapters") + 1] == "support=/data/adapters/support,org/adapter"
    assert args[args.index("--usage-stats") + 1] == "off"


def test_serve_accepts_every_emitted_flag():
    from workers.jobs.serve import build_parser

    plan = tgi.LaunchPlan(
        model_path="/m",
        port=8080,
        hostname="127.0.0.1",
        num_shard=1,
        instance="i",
        native=True,
        master_port=1,
        prometheus_port=2,
    )
    parsed = build_parser().parse_args(tgi.launcher_args(full_spec(), plan))
    assert parsed.max_total_tokens == "4096" and parsed.kv_cache_dtype == "fp8_e4m3fn"


def test_environment_is_explicit_and_allow_listed():
    env = tgi.launch_env(full_spec(device="gpu"), gpu_indexes=[2, 3], native=True)
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3" and env["HF_HUB_OFFLINE"] == "1"
    assert env["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    assert "API_KEY" not in env  # not on the allow-list: never reaches the server
    assert tgi.launch_env(full_spec(device="cpu"), gpu_indexes=[], native=True)["CUDA_VISIBLE_DEVICES"] == ""
    assert "CUDA_VISIBLE_DEVICES" not in tgi.launch_env(full_spec(device="gpu"), gpu_indexes=[0], native=False)


def test_spec_checks_name_the_field(artifact, model_dir):
    def refused(**values) -> str:
        with pytest.raises(ApplicationError) as error:
            clean_spec({"artifact": artifact.pk, **values})
        return error.value.field

    assert refused(quantize="awq") == "quantize"  # needs an AWQ checkpoint
    assert refused(quantize="eetq", dtype="float16") == "dtype"
    assert refused(max_input_tokens=4096, max_total_tokens=4096) == "max_input_tokens"
    assert refused(extra_env={"API_KEY": "leak"}) == "extra_env"
    assert refused(gpu_indexes=[5]) == "gpu_indexes"
    assert refused(lora_adapters=[{"name": "x", "path": "/etc"}]) == "lora_adapters"
    assert clean_spec({"artifact": artifact.pk, "quantize": "bitsandbytes-nf4", "dtype": "bfloat16"})["dtype"]
    config = json.loads((model_dir / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "awq", "bits": 4}
    (model_dir / "config.json").write_text(json.dumps(config))
    assert clean_spec({"artifact": artifact.pk, "quantize": "awq"})["quantize"] == "awq"
    assert refused(quantize="eetq") == "quantize"  # already quantized


def test_docker_hosts_run_allowed_images_only(artifact):
    Host.objects.filter(pk=artifact.host_id).update(runtime=Host.Runtime.DOCKER)
    artifact.host.refresh_from_db()
    with pytest.raises(ApplicationError) as error:
        clean_spec({"artifact": artifact.pk})
    assert error.value.field == "image" and tgi.DEFAULT_IMAGE in error.value.message
    AllowedImage.objects.create(reference=tgi.DEFAULT_IMAGE, digest="sha256:" + "a" * 64)
    assert clean_spec({"artifact": artifact.pk})["image"] == ""
    assert AllowedImage.objects.get().pinned == "ghcr.io/huggingface/text-generation-inference@sha256:" + "a" * 64


def test_planner_refuses_what_cannot_fit_before_any_task(admin, artifact):
    values = clean_spec({"artifact": artifact.pk, "max_total_tokens": 4096})
    plan = verdict(values)
    assert plan.fits is True and plan.gpu_indexes == [0] and plan.num_shard == 1
    assert command_preview(values, plan)[:3] == ["text-generation-launcher", "--model-id", artifact.path]
    with pytest.raises(ApplicationError) as error:
        lifecycle.deployment_create(
            actor=admin,
            name="huge",
            spec={"artifact": artifact.pk, "gpu_indexes": [0], "max_total_tokens": 2_000_000, "max_input_tokens": 1000},
        )
    assert "GB" in error.value.message
    assert not Deployment.objects.exists() and not Job.objects.exists()


def test_versions_diff_rollback_and_audit(admin, artifact):
    deployment = lifecycle.deployment_create(
        actor=admin, name="chat", spec={"artifact": artifact.pk, "max_total_tokens": 2048}, launch=False
    )
    v2 = lifecycle.spec_update(actor=admin, deployment=deployment, spec={"max_total_tokens": 4096}, note="longer")
    assert v2.version == 2 and v2.diff == {"max_total_tokens": [2048, 4096]}
    with pytest.raises(ApplicationError):
        lifecycle.spec_update(actor=admin, deployment=deployment, spec={"max_total_tokens": 4096})
    v3 = lifecycle.deployment_rollback(actor=admin, deployment=deployment, version=1)
    assert v3.version == 3 and v3.diff == {"max_total_tokens": [4096, 2048]}
    deployment.refresh_from_db()
    assert deployment.spec_id == v3.pk and deployment.specs.count() == 3
    edited = AuditEvent.objects.get(action="deployment.edited")
    assert edited.changes == {"max_total_tokens": [2048, 4096]}
    assert AuditEvent.objects.filter(action="deployment.rolled_back").count() == 1
    lifecycle.deployment_delete(actor=admin, deployment=deployment)
    assert not Deployment.objects.exists()
    assert AuditEvent.objects.filter(action="deployment.deleted").count() == 1


def test_api_create_refused_with_field_errors_then_edit_and_rollback(admin, engineer, api, artifact):
    admin_api = api(admin)
    refused = admin_api.post(
        "/api/v1/deployments/",
        {"name": "x", "spec_input": {"artifact": artifact.pk, "max_input_tokens": 10, "max_total_tokens": 5}},
        expected=400,
    ).data
    assert "max_input_tokens" in refused
    created = admin_api.post(
        "/api/v1/deployments/",
        {"name": "api", "launch": False, "spec_input": {"artifact": artifact.pk, "max_total_tokens": 2048}},
    ).data
    assert created["state"] == "stopped" and created["spec"]["version"] == 1
    spec = admin_api.call(
        "patch",
        f"/api/v1/deployments/{created['id']}/",
        200,
        data={"spec": {"max_total_tokens": 1024}, "note": "smaller"},
    ).data
    assert spec["version"] == 2 and spec["diff"] == {"max_total_tokens": [2048, 1024]}
    versions = admin_api.get(f"/api/v1/deployments/{created['id']}/specs/").data
    assert [v["version"] for v in versions] == [2, 1]
    assert (
        admin_api.post(f"/api/v1/deployments/{created['id']}/rollback/", {"version": 1}, expected=200).data["version"]
        == 3
    )
    plan = admin_api.post("/api/v1/deployments/plan/", {"spec": {"artifact": artifact.pk}}, expected=200).data
    assert plan["verdict"]["fits"] is True and plan["command"][0] == "text-generation-launcher"
    api(engineer).post("/api/v1/deployments/", {"name": "no", "spec_input": {"artifact": artifact.pk}}, expected=403)
    api(engineer).post(f"/api/v1/deployments/{created['id']}/launch/", expected=403)

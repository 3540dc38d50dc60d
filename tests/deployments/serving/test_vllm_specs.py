"""vLLM specs: a spec that sets a field its backend does not read is refused naming it (a 400 from the API), a
spec may switch backend when the other backend's fields hold their defaults, vLLM's own checks read the
checkpoint, the command preview is `vllm serve <model>`, and its image is allowed like TGI's (by an admin)."""

from __future__ import annotations

import pytest

from console.errors import ApplicationError
from deployments.backends.vllm import launch as vllm
from deployments.models import Host
from deployments.serving import images
from deployments.serving import services as lifecycle
from deployments.serving.planning import verdict
from deployments.serving.specs import clean_spec, command_preview
from tests.support.deploy_fixtures import process_host, ready_artifact
from tests.support.model_dirs import write_llama_dir

pytestmark = pytest.mark.django_db


@pytest.fixture
def model_dir(tmp_path):
    return write_llama_dir(tmp_path / "llama", "7b")  # 32 attention heads, 4096 positions


@pytest.fixture
def artifact(model_dir):
    return ready_artifact(process_host(gpus=4, gpu_bytes=80 * 10**9), model_dir, repo_id="meta-llama/Llama-2-7b-hf")


def refused(**values) -> ApplicationError:
    with pytest.raises(ApplicationError) as error:
        clean_spec(values)
    return error.value


def test_the_api_refuses_a_tgi_setting_on_a_vllm_spec_naming_the_field(admin, api, artifact):
    client = api(admin)
    answer = client.post(
        "/api/v1/deployments/",
        {
            "name": "v",
            "launch": False,
            "spec_input": {"artifact": artifact.pk, "backend": "vllm", "max_input_tokens": 4096},
        },
        expected=400,
    ).data
    assert list(answer) == ["max_input_tokens"]
    assert "vLLM does not take it" in str(answer["max_input_tokens"][0])
    plan = client.post(
        "/api/v1/deployments/plan/",
        {"spec": {"artifact": artifact.pk, "backend": "vllm", "cuda_memory_fraction": 0.8}},
        expected=400,
    ).data
    assert list(plan) == ["cuda_memory_fraction"]
    # The other way round: TGI takes no vLLM setting either.
    tgi = client.post(
        "/api/v1/deployments/",
        {"name": "t", "launch": False, "spec_input": {"artifact": artifact.pk, "gpu_memory_utilization": 0.8}},
        expected=400,
    ).data
    assert list(tgi) == ["gpu_memory_utilization"] and "Text Generation Inference does not take it" in str(tgi)


def test_a_spec_switches_backend_when_the_other_backends_fields_hold_their_defaults(admin, api, artifact):
    client = api(admin)
    created = client.post(
        "/api/v1/deployments/", {"name": "switch", "launch": False, "spec_input": {"artifact": artifact.pk}}
    ).data
    assert created["spec"]["max_concurrent_requests"] == 128 and created["spec"]["cuda_memory_fraction"] == 1.0
    url = f"/api/v1/deployments/{created['id']}/"
    spec = client.patch(url, {"spec": {"backend": "vllm", "max_model_len": 4096, "max_num_seqs": 64}}).data
    assert spec["backend"] == "vllm" and spec["diff"]["backend"] == ["tgi", "vllm"]
    assert spec["diff"]["max_model_len"] == [None, 4096] and spec["max_concurrent_requests"] == 128
    # Back to TGI: vLLM's settings must go (they would be ignored silently otherwise).
    back = client.patch(url, {"spec": {"backend": "tgi"}}, expected=400).data
    assert sorted(back) == ["max_model_len"]
    client.patch(
        url, {"spec": {"backend": "tgi", "max_model_len": None, "max_num_seqs": None, "max_total_tokens": 2048}}
    )
    again = client.patch(url, {"spec": {"backend": "vllm"}}, expected=400).data
    assert list(again) == ["max_total_tokens"] and "Text Generation Inference setting" in str(again)
    client.patch(url, {"spec": {"backend": "vllm", "max_total_tokens": None}})


def test_vllm_checks_read_the_checkpoint(artifact):
    base = {"artifact": artifact.pk, "backend": "vllm"}
    assert refused(**base, gpu_indexes=[0, 1, 2]).field == "gpu_indexes"  # 32 heads over 3 GPUs
    assert refused(**base, num_shard=3).field == "num_shard"
    assert refused(**base, max_model_len=8192).field == "max_model_len"  # the model has 4096 positions
    assert refused(**base, quantize="awq").field == "quantize"  # not an AWQ checkpoint
    assert refused(**base, quantize="bitsandbytes-nf4").field == "quantize"  # TGI's, not vLLM 0.34's
    values = clean_spec({**base, "gpu_indexes": [0, 1], "quantize": "fp8", "kv_cache_dtype": "fp8_e4m3fn"})
    assert values["backend"] == "vllm" and values["quantize"] == "fp8"


def test_the_command_preview_is_vllm_serve_with_the_model_first(artifact):
    values = clean_spec({"artifact": artifact.pk, "backend": "vllm", "max_model_len": 2048})
    plan = verdict(values)
    assert plan.fits is True, plan.reason
    command = command_preview(values, plan, name="chat")
    assert command[:3] == ["vllm", "serve", artifact.path]
    assert command[command.index("--served-model-name") + 1] == "meta-llama/Llama-2-7b-hf"
    assert command[command.index("--port") + 1] == "PORT" and command[command.index("--max-model-len") + 1] == "2048"


def test_the_vllm_image_is_allowed_by_an_admin_like_tgis(admin, artifact):
    Host.objects.filter(pk=artifact.host_id).update(runtime=Host.Runtime.DOCKER)
    error = refused(artifact=artifact.pk, backend="vllm")
    assert error.field == "image" and vllm.DEFAULT_IMAGE in error.message
    image = images.image_allow(actor=admin, reference=vllm.DEFAULT_IMAGE, digest="sha256:" + "b" * 64)
    assert image.backend == "vllm" and image.pinned == "vllm/vllm-openai@sha256:" + "b" * 64
    assert clean_spec({"artifact": artifact.pk, "backend": "vllm"})["image"] == ""
    tgi = images.image_allow(actor=admin, reference="ghcr.io/huggingface/text-generation-inference:3.3.5")
    assert tgi.backend == "tgi" and tgi.digest == ""


def test_a_deployment_is_created_and_edited_with_vllm_settings(admin, artifact):
    deployment = lifecycle.deployment_create(
        actor=admin,
        name="vchat",
        spec={"artifact": artifact.pk, "backend": "vllm", "gpu_memory_utilization": 0.8, "max_model_len": 2048},
        launch=False,
    )
    assert deployment.spec.backend == "vllm" and deployment.spec.gpu_memory_utilization == 0.8
    v2 = lifecycle.spec_update(actor=admin, deployment=deployment, spec={"max_num_batched_tokens": 4096})
    assert v2.diff == {"max_num_batched_tokens": [None, 4096]} and v2.max_model_len == 2048

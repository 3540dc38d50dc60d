"""Deploying a compressed-tensors checkpoint (what a quantize job writes): TGI is launched with
`--quantize compressed-tensors` when the spec names no quantization, vLLM reads the format from config.json itself
(no flag, or `--quantization compressed-tensors` when chosen), and another quantization is refused on the
quantization field, in the form as in the API."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from console.errors import ApplicationError
from deployments.serving.planning import verdict
from deployments.serving.specs import clean_spec, command_preview
from tests.deployments.serving.test_pages import artifact_at, field_error, form_data, page
from tests.deployments.serving.test_vllm_form import plan_command, vllm_data
from tests.factories import GpuFactory, HostFactory
from tests.support.fixtures import FIXTURES

pytestmark = pytest.mark.django_db
GB = 10**9


def quantized_dir(directory: Path, name: str = "tiny-w4a16-channel-asym") -> Path:
    """A model directory of llm-compressor's output: its config.json and a safetensors file holding its header
    (tests/fixtures/compressed-tensors), which is all the console reads."""
    source = FIXTURES / "compressed-tensors" / name
    directory.mkdir(parents=True)
    (directory / "config.json").write_text((source / "config.json").read_text())
    header = json.dumps(json.loads((source / "safetensors-header.json").read_text())).encode()
    (directory / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    return directory


@pytest.fixture
def quantized(tmp_path):
    node = HostFactory(name="quant-node")
    GpuFactory(host=node, index=0, name="L4", memory_total=24 * GB)
    return artifact_at(node, quantized_dir(tmp_path / "w4a16"), "org/tiny-w4a16")


def preview(values: dict) -> list[str]:
    return command_preview(values, verdict(values), name="tiny-chat")


def flag(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


def test_tgi_launches_it_with_quantize_compressed_tensors(quantized):
    values = clean_spec({"artifact": quantized.pk, "max_total_tokens": 256})
    assert values["quantize"] == "compressed-tensors"
    assert flag(preview(values), "--quantize") == "compressed-tensors"
    # Chosen explicitly, the same.
    chosen = clean_spec({"artifact": quantized.pk, "quantize": "compressed-tensors", "max_total_tokens": 256})
    assert flag(preview(chosen), "--quantize") == "compressed-tensors"


def test_with_a_dtype_tgi_reads_the_format_itself(quantized):
    # TGI refuses --dtype beside --quantize, and takes it when it reads the format from config.json.
    values = clean_spec({"artifact": quantized.pk, "dtype": "bfloat16", "max_total_tokens": 256})
    assert values["quantize"] == ""
    command = preview(values)
    assert "--quantize" not in command and flag(command, "--dtype") == "bfloat16"


def test_vllm_reads_the_format_from_the_checkpoint(quantized):
    base = {"artifact": quantized.pk, "backend": "vllm", "max_model_len": 256}
    values = clean_spec(base)
    assert values["quantize"] == "" and "--quantization" not in preview(values)
    chosen = clean_spec(base | {"quantize": "compressed-tensors"})
    assert flag(preview(chosen), "--quantization") == "compressed-tensors"


@pytest.mark.parametrize(
    ("backend", "quantize"),
    [("tgi", "bitsandbytes-nf4"), ("tgi", "eetq"), ("tgi", "fp8"), ("tgi", "awq"), ("vllm", "fp8"), ("vllm", "gptq")],
)
def test_another_quantization_is_refused_on_the_quantization_field(quantized, backend, quantize):
    with pytest.raises(ApplicationError) as error:
        clean_spec({"artifact": quantized.pk, "backend": backend, "quantize": quantize})
    assert error.value.field == "quantize"
    assert "compressed-tensors" in error.value.message


def test_the_deploy_form_reviews_the_flag_and_refuses_a_conflicting_choice(client, admin, quantized):
    client.force_login(admin)
    review = client.post("/deployments/new/", form_data(quantized, review="1"))
    assert review.status_code == 200
    command = shlex.split(plan_command(page(review)))
    assert command[0] == "text-generation-launcher" and flag(command, "--quantize") == "compressed-tensors"
    vllm = client.post("/deployments/new/", vllm_data(quantized, review="1"))
    assert vllm.status_code == 200 and "--quantization" not in plan_command(page(vllm))

    refused = client.post("/deployments/new/", form_data(quantized, review="1", quantize="bitsandbytes-nf4"))
    assert refused.status_code == 400
    assert "already quantized (compressed-tensors)" in field_error(refused, "quantize")
    refused = client.post("/deployments/new/", vllm_data(quantized, review="1", quantize="fp8"))
    assert refused.status_code == 400
    assert "already quantized (compressed-tensors)" in field_error(refused, "quantize")


@pytest.mark.parametrize(
    ("name", "fmt"), [("tiny-nvfp4a16", "nvfp4-pack-quantized"), ("tiny-fp8-block", "float-quantized")]
)
def test_a_format_tgi_cannot_load_is_refused_on_the_backend_field(tmp_path, quantized, name, fmt):
    other = artifact_at(quantized.host, quantized_dir(tmp_path / name, name), f"org/{name}")
    with pytest.raises(ApplicationError) as error:
        clean_spec({"artifact": other.pk, "max_total_tokens": 256})
    assert error.value.field == "backend"
    assert fmt in error.value.message and "vLLM" in error.value.message
    values = clean_spec({"artifact": other.pk, "backend": "vllm", "max_model_len": 256})
    assert "--quantization" not in preview(values)


@pytest.mark.parametrize("name", ["tiny-fp8-dynamic", "tiny-w8a8-int8", "tiny-w4a16-group16", "tiny-w4a16-kv-fp8"])
def test_the_quantize_programs_formats_are_tgis_to_load(tmp_path, quantized, name):
    other = artifact_at(quantized.host, quantized_dir(tmp_path / name, name), f"org/{name}")
    assert clean_spec({"artifact": other.pk, "max_total_tokens": 256})["quantize"] == "compressed-tensors"

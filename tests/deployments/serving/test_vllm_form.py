"""The deploy form's backend choice (issue 16): TGI or vLLM, each with its own fields and the quantization and KV
cache values its launcher takes; choosing vLLM creates a vLLM spec with vLLM's fields, previewed as `vllm serve
...`; values left in the other backend's fields are ignored, never refused; an edit may switch backend, as a new
version whose diff shows the switch."""

from __future__ import annotations

import html
import re

import pytest

from deployments.backends import get_backend
from deployments.models import Deployment, DeploymentSpec
from tests.deployments.serving.test_pages import artifact_at, field_error, form_data, make_deployment, page
from tests.factories import GpuFactory, HostFactory
from tests.support.model_dirs import write_llama_dir

pytestmark = pytest.mark.django_db
GB = 10**9
TGI_ONLY = {
    "max_input_tokens",
    "max_total_tokens",
    "max_batch_prefill_tokens",
    "max_concurrent_requests",
    "cuda_memory_fraction",
}
VLLM_ONLY = {"gpu_memory_utilization", "max_model_len", "max_num_seqs", "max_num_batched_tokens"}


@pytest.fixture
def tiny(tmp_path):
    """A tiny Llama on a process host with one 24 GB GPU (room for vLLM's share of it)."""
    node = HostFactory(name="vllm-node")
    GpuFactory(host=node, index=0, name="L4", memory_total=24 * GB)
    return artifact_at(node, write_llama_dir(tmp_path / "tiny", "tiny"), "org/tiny-llama")


def vllm_data(artifact, **extra) -> dict:
    """The form as posted for vLLM; form_data's TGI values (max_input_tokens 128, ...) are still in it, as a
    browser without the page's script would post them."""
    return form_data(
        artifact,
        backend="vllm",
        gpu_memory_utilization=0.8,
        max_model_len=256,
        max_num_seqs=16,
        max_num_batched_tokens=512,
        **extra,
    )


def wrapper(body: str, name: str) -> str:
    """The opening tag of a field's block on the form."""
    found = re.search(rf'<div [^>]*data-field="{name}"[^>]*>', body)
    assert found, f"no field {name}"
    return found.group(0)


def plan_command(body: str) -> str:
    return html.unescape(re.search(r'<pre[^>]*id="plan-command">(.*?)</pre>', body, re.S).group(1))


def field_errors(body: str) -> list[str]:
    return re.findall(r'data-field-error="(\w+)"', body)


def diff_row(body: str, version: int, name: str) -> tuple[str, str]:
    table = body.split(f'data-diff="{version}">', 1)[1].split("</table>", 1)[0]
    row = re.search(rf'data-field="{name}">.*?</tr>', table, re.S)
    assert row, f"v{version}'s diff has no {name}: {table}"
    before = re.search(r'data-diff-side="before"><code>(.*?)</code>', row.group(0)).group(1)
    after = re.search(r'data-diff-side="after"><code>(.*?)</code>', row.group(0)).group(1)
    return html.unescape(before), html.unescape(after)


def test_each_backend_reads_the_fields_the_issue_names():
    tgi, vllm = get_backend("tgi").spec_fields, get_backend("vllm").spec_fields
    assert set(tgi - vllm) == TGI_ONLY and set(vllm - tgi) == VLLM_ONLY


def test_the_form_offers_the_backend_and_shows_only_the_chosen_ones_fields(client, admin, tiny):
    client.force_login(admin)
    body = page(client.get("/deployments/new/"))
    backend = re.search(r'<select name="backend".*?</select>', body, re.S).group(0)
    assert re.search(r'<option value="tgi" selected>', backend) and '<option value="vllm">vLLM</option>' in backend
    for name in TGI_ONLY:
        assert wrapper(body, name).endswith('data-backends="tgi">')  # shown
    for name in VLLM_ONLY:
        assert wrapper(body, name).endswith('data-backends="vllm" hidden>')
    assert wrapper(body, "quantize").endswith('data-backends="tgi vllm">')  # both read it, with their own values
    assert '<option value="eetq" data-backends="tgi">' in body  # vLLM 0.34 has no EETQ
    assert '<option value="bitsandbytes-nf4" data-backends="tgi">' in body
    assert '<option value="awq" data-backends="tgi vllm">' in body
    assert '<option value="fp8_e4m3fn" data-backends="tgi vllm">' in body  # vLLM spells it fp8_e4m3

    # Editing a vLLM deployment starts from vLLM, its fields shown and TGI's hidden.
    deployment = make_deployment(
        tiny, "vllm-edit", backend="vllm", max_input_tokens=None, max_total_tokens=None, gpu_memory_utilization=0.7
    )
    body = page(client.get(f"/deployments/{deployment.pk}/edit/"))
    assert re.search(r'<option value="vllm" selected>', body)
    assert wrapper(body, "gpu_memory_utilization").endswith('data-backends="vllm">')
    assert 'name="gpu_memory_utilization" value="0.7"' in body
    assert wrapper(body, "max_total_tokens").endswith('data-backends="tgi" hidden>')


def test_choosing_vllm_reviews_its_command_and_creates_a_vllm_spec(client, admin, tiny):
    client.force_login(admin)
    review = client.post("/deployments/new/", vllm_data(tiny, review="1", kv_cache_dtype="fp8_e4m3fn"))
    body = page(review)
    assert review.status_code == 200, field_errors(body)
    command = plan_command(body)
    assert command.startswith(f"vllm serve {tiny.path} --served-model-name org/tiny-llama ")
    for flag in (
        "--gpu-memory-utilization 0.8",
        "--max-model-len 256",
        "--max-num-seqs 16",
        "--max-num-batched-tokens 512",
        "--kv-cache-dtype fp8_e4m3",
    ):
        assert flag in command
    assert "--max-total-tokens" not in command and "--max-concurrent-requests" not in command
    assert 'id="confirm-deploy"' in body
    assert re.search(r'id="plan-details"><li>', body)  # the planner's account of vLLM's share of the GPU
    assert not Deployment.objects.exists()

    response = client.post("/deployments/new/", vllm_data(tiny, confirm="1", kv_cache_dtype="fp8_e4m3fn"))
    assert response.status_code == 302, field_errors(page(response))
    spec = Deployment.objects.get(name="tiny-chat").spec
    assert spec.backend == "vllm" and spec.kv_cache_dtype == "fp8_e4m3fn"
    assert (spec.gpu_memory_utilization, spec.max_model_len, spec.max_num_seqs, spec.max_num_batched_tokens) == (
        0.8,
        256,
        16,
        512,
    )
    # TGI's fields were posted (128, 256) and are not kept: empty, or the model's default where there is no empty.
    assert (spec.max_input_tokens, spec.max_total_tokens, spec.max_batch_prefill_tokens) == (None, None, None)
    assert (spec.max_concurrent_requests, spec.cuda_memory_fraction) == (128, 1.0)


def test_values_left_in_the_other_backends_fields_are_ignored_not_refused(client, admin, tiny):
    client.force_login(admin)
    leftovers = {
        "max_input_tokens": 300,
        "max_total_tokens": 256,
        "cuda_memory_fraction": 7,
        "max_concurrent_requests": 0,
    }
    # For TGI these values are refused...
    tgi = client.post("/deployments/new/", form_data(tiny, review="1", **leftovers))
    assert tgi.status_code == 400
    assert {"cuda_memory_fraction", "max_concurrent_requests"} <= set(field_errors(page(tgi)))
    # ...after switching to vLLM they are what the user left behind, and nothing refuses them.
    vllm = client.post("/deployments/new/", vllm_data(tiny, review="1", **leftovers))
    assert vllm.status_code == 200 and field_errors(page(vllm)) == []
    assert plan_command(page(vllm)).startswith("vllm serve ")

    # The other way round: vLLM's values left behind when going back to TGI.
    back = client.post("/deployments/new/", form_data(tiny, review="1", backend="tgi", gpu_memory_utilization=5))
    assert back.status_code == 200 and field_errors(page(back)) == []
    command = plan_command(page(back))
    assert command.startswith("text-generation-launcher ") and "--gpu-memory-utilization" not in command


def test_a_choice_the_backend_lacks_is_refused_naming_it(client, admin, tiny):
    client.force_login(admin)
    response = client.post("/deployments/new/", vllm_data(tiny, review="1", quantize="eetq"))
    assert response.status_code == 400
    assert field_error(response, "quantize") == "vLLM does not offer eetq."
    assert client.post("/deployments/new/", form_data(tiny, review="1", quantize="eetq")).status_code == 200


def test_an_edit_switches_backend_as_a_new_version_whose_diff_shows_it(client, admin, tiny):
    deployment = make_deployment(tiny, "switcher", cuda_memory_fraction=0.9)  # TGI, max tokens 128 / 256
    client.force_login(admin)
    data = vllm_data(tiny, note="to vLLM")
    data.pop("name")
    response = client.post(f"/deployments/{deployment.pk}/edit/", data, follow=True)
    assert response.redirect_chain, field_errors(page(response))
    deployment.refresh_from_db()
    spec = deployment.spec
    assert spec.version == 2 and spec.backend == "vllm"
    assert spec.diff == {
        "backend": ["tgi", "vllm"],
        "max_input_tokens": [128, None],
        "max_total_tokens": [256, None],
        "cuda_memory_fraction": [0.9, 1.0],
        "gpu_memory_utilization": [None, 0.8],
        "max_model_len": [None, 256],
        "max_num_seqs": [None, 16],
        "max_num_batched_tokens": [None, 512],
    }
    body = page(response)
    assert 'data-backend-switch="tgi:vllm">backend tgi → vllm</span>' in body
    assert diff_row(body, 2, "backend") == ("text-generation-inference (tgi)", "vLLM (vllm)")
    assert diff_row(body, 2, "max_total_tokens") == ("256", "—")
    assert diff_row(body, 2, "gpu_memory_utilization") == ("—", "0.8")
    # vLLM does not read the CUDA memory fraction: it was 0.9 and is now not used, not "1.0"
    assert diff_row(body, 2, "cuda_memory_fraction") == ("0.9", "—")
    # The current spec lists vLLM's fields, not TGI's; the command a launch runs is vLLM's.
    assert 'data-spec="gpu_memory_utilization"' in body and 'data-spec="max_total_tokens"' not in body
    assert re.search(rf'id="command">vllm serve {re.escape(tiny.path)} ', body)

    # And back to TGI: vLLM's values go, TGI's come back.
    data = form_data(tiny, backend="tgi", max_total_tokens=512, gpu_memory_utilization=0.8)
    data.pop("name")
    body = page(client.post(f"/deployments/{deployment.pk}/edit/", data, follow=True))
    deployment.refresh_from_db()
    assert deployment.spec.version == 3 and deployment.spec.backend == "tgi"
    assert deployment.spec.gpu_memory_utilization is None and deployment.spec.max_total_tokens == 512
    assert 'data-backend-switch="vllm:tgi"' in body and diff_row(body, 3, "max_model_len") == ("256", "—")
    assert "data-backend-switch" not in body.split('data-version="1"', 1)[1]  # version 1 switched nothing

    # Rolling back to version 2 is vLLM again, with its values.
    client.post(f"/deployments/{deployment.pk}/rollback/", {"version": 2})
    deployment.refresh_from_db()
    assert deployment.spec.backend == "vllm" and deployment.spec.max_model_len == 256


def test_the_preview_of_a_vllm_spec_is_its_vllm_serve_command(client, api, admin, tiny):
    deployment = make_deployment(
        tiny, "previewed", backend="vllm", max_input_tokens=None, max_total_tokens=None, max_model_len=512
    )
    client.force_login(admin)
    body = page(client.get(f"/deployments/{deployment.pk}/"))
    command = html.unescape(re.search(r'id="command">(.*?)</pre>', body, re.S).group(1))
    assert command.startswith(f"vllm serve {tiny.path} --served-model-name org/tiny-llama --host 127.0.0.1 --port PORT")
    assert "--max-model-len 512" in command

    # The planner endpoint the form calls live: the backend and vLLM's fields go in, vLLM's command comes out.
    spec = {"artifact": tiny.pk, "backend": "vllm", "max_model_len": 1024, "max_num_seqs": 8}
    result = api(admin).post("/api/v1/deployments/plan/", {"spec": spec}, expected=200).json()
    assert result["command"][:2] == ["vllm", "serve"] and "--max-num-seqs" in result["command"]
    assert result["verdict"]["fits"] is True and result["verdict"]["max_total_tokens"] == 1024
    assert result["verdict"]["details"]  # what the panel lists for vLLM
    assert DeploymentSpec.objects.count() == 1

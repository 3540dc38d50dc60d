"""The VRAM planner page (Inventory -> VRAM planner) and its API plan for TGI or vLLM: the backend choice, vLLM's
share and KV cache in the result, vLLM's refusals as field errors, and TGI's plan as before.

The model is DeepSeek LLM 7B's config.json (tests/fixtures/model-configs) in the model store; the inventory is one
H200 as NVML reports it, so the figures are those checked by hand in tests/deployments/sizing/test_vllm_memory.py."""

from __future__ import annotations

import json
import re
from html import unescape

import pytest

from deployments.inventory.capacity import inventory_capacity
from deployments.inventory.services import gpu_create, host_create
from deployments.sizing import size_model
from deployments.sizing.metadata import load_local_metadata
from tests.support.fixtures import MODEL_CONFIGS, NVML_H200

pytestmark = pytest.mark.django_db
H200 = json.loads(NVML_H200.read_text())["gpus"][0]["memory"]["total"]  # 150,754,820,096 bytes
PAGE, API = "/inventory/sizing/", "/api/v1/sizing/"
MODEL = "deepseek-7b"


@pytest.fixture
def model_store(settings, tmp_path):
    settings.MODEL_STORE = str(tmp_path)
    (tmp_path / MODEL).mkdir()
    (tmp_path / MODEL / "config.json").write_bytes((MODEL_CONFIGS / "deepseek-llm-7b-base.json").read_bytes())
    return tmp_path


@pytest.fixture
def one_h200(admin):
    host = host_create(actor=admin, name="h200-node")
    gpu_create(actor=admin, host=host, index=0, name="NVIDIA H200", memory_total=H200, power_limit_w=700)
    return host


def _page(client, user, expected: int = 200, **query) -> str:
    client.force_login(user)
    response = client.get(PAGE, query)
    assert response.status_code == expected, response.content.decode()[:2000]
    return response.content.decode()


def _wrapper(page: str, name: str) -> str:
    """The opening tag of a field's wrapper (templates/serving/_field.html)."""
    return re.search(rf'<div class="[^"]*" data-field="{name}"[^>]*>', page).group(0)


def _field_errors(page: str, name: str) -> list[str]:
    found = re.findall(rf'data-field-error="{name}">(.*?)</div>', page, re.S)
    return [unescape(text) for text in found]


def test_the_page_offers_the_registered_backends_and_shows_only_the_chosen_ones_fields(client, engineer):
    page = _page(client, engineer)
    select = re.search(r'<select name="backend".*?</select>', page, re.S).group(0)
    assert re.findall(r'<option value="(\w+)"', select) == ["tgi", "vllm"]
    assert 'value="tgi" selected' in select  # TGI until someone chooses
    for name in ("gpu_memory_utilization", "max_model_len", "max_num_seqs", "max_num_batched_tokens"):
        assert 'data-backends="vllm" hidden' in _wrapper(page, name), name
    for name in ("max_total_tokens", "max_batch_total_tokens"):
        wrapper = _wrapper(page, name)
        assert 'data-backends="tgi"' in wrapper and "hidden" not in wrapper, name
    # vLLM has no EETQ: the script hides it when vLLM is chosen; the shared fields belong to no one backend.
    assert re.search(r'<option value="eetq" data-backends="tgi">', page)
    assert re.search(r'<option value="fp8" data-backends="tgi vllm">', page)
    assert "data-backends" not in _wrapper(page, "source")
    assert "console/sizing_form.js" in page


def test_the_vllm_field_shows_when_vllm_is_chosen(client, engineer):
    page = _page(client, engineer, 400, backend="vllm")  # no model yet: a field error, vLLM's fields shown
    assert "hidden" not in _wrapper(page, "gpu_memory_utilization")
    assert 'data-backends="tgi" hidden' in _wrapper(page, "max_total_tokens")
    assert 'value="vllm" selected' in page


def test_a_vllm_plan_shows_the_share_the_kv_tokens_and_the_sequences(client, engineer, model_store, one_h200):
    # TGI's max_total_tokens 1 would be refused for TGI; for vLLM it is another backend's field, ignored.
    page = _page(client, engineer, source=MODEL, backend="vllm", gpu_memory_utilization="0.9", max_total_tokens="1")
    details = re.search(r'<ul class="small my-2" id="sizing-vllm"([^>]*)>(.*?)</ul>', page, re.S)
    assert 'data-kv-tokens="240576"' in details.group(1) and 'data-max-sequences="58"' in details.group(1)
    text = unescape(re.sub(r"<[^>]+>", " ", details.group(2)))
    # The share of the one H200 (0.9 of 150.1 GB as CUDA counts it), the weights on it, the KV cache, the sequences.
    assert "vLLM may use 135.1 GB of each GPU (gpu_memory_utilization 0.9 of 150.8 GB)" in text
    assert "Per GPU: weights 13.8 GB" in text
    assert "KV cache: 240,576 tokens, in 3,759 blocks of 64 tokens" in text
    assert "At max_model_len 4,096 the KV cache holds 58 full sequences at once" in text
    assert "up to 58 run at once" in text
    assert 'data-backend="vllm"' in page and "Token limits" not in page  # TGI's limits are not vLLM's
    assert "h200-node" in page and "--quantize" not in page  # vLLM's rows, not TGI's flags
    assert re.search(r'data-kv-tokens="240576">\(240,576 tokens\)', page)  # the stored format's table row


def test_vllm_limits_change_the_plan(client, engineer, model_store, one_h200):
    """max_model_len and max_num_seqs reach the planner: 1024-token sequences, capped at 128 per batch."""
    page = _page(
        client, engineer, source=MODEL, backend="vllm", gpu_memory_utilization="0.9", max_model_len="1024",
        max_num_seqs="128",
    )  # fmt: skip
    assert 'data-kv-tokens="242432"' in page and 'data-max-sequences="128"' in page
    assert "holds 236 full sequences at once; max_num_seqs 128 caps a batch, so up to 128 run at once" in page


def test_a_too_small_utilization_is_a_field_error_naming_it(client, api, engineer, model_store, one_h200):
    page = _page(client, engineer, 400, source=MODEL, backend="vllm", gpu_memory_utilization="0.1")
    [error] = _field_errors(page, "gpu_memory_utilization")
    assert error.startswith("gpu_memory_utilization 0.1 gives vLLM 15.0 GB of each 150.8 GB GPU")
    assert error.endswith("Raise gpu_memory_utilization to 0.13 or use 2 GPUs.")
    assert 'id="sizing-summary"' not in page
    refused = api(engineer).get(f"{API}?source={MODEL}&backend=vllm&gpu_memory_utilization=0.1", expected=400).data
    assert list(refused) == ["gpu_memory_utilization"] and "Raise gpu_memory_utilization to 0.13" in str(refused)
    # Below what a spec may ask for at all: the form's own bound, on the same field.
    refused = api(engineer).get(f"{API}?source={MODEL}&backend=vllm&gpu_memory_utilization=0.01", expected=400).data
    assert list(refused) == ["gpu_memory_utilization"]


def test_other_vllm_refusals_name_their_fields(api, engineer, model_store, one_h200):
    query = f"{API}?source={MODEL}&backend=vllm"
    too_long = api(engineer).get(f"{query}&max_model_len=8192", expected=400).data
    assert "longer than the model's context of 4096 tokens" in str(too_long["max_model_len"])
    batch = api(engineer).get(f"{query}&max_num_seqs=256&max_num_batched_tokens=128", expected=400).data
    assert list(batch) == ["max_num_batched_tokens"]
    eetq = api(engineer).get(f"{query}&quantize=eetq", expected=400).data
    assert eetq == {"quantize": ["vLLM does not offer eetq."]}


def test_the_api_answers_vllm_numbers_and_details(api, engineer, model_store, one_h200):
    report = api(engineer).get(f"{API}?source={MODEL}&backend=vllm&gpu_memory_utilization=0.9").data
    assert report["backend"] == "vllm" and report["memory_mode"] == "reserve"
    assert report["vllm"]["kv_tokens"] == 240_576 and report["vllm"]["max_sequences"] == 58
    assert report["vllm"]["share_bytes"] == 135_098_892_288 and report["vllm"]["weight_bytes"] == 13_820_731_392
    assert report["gpu_set"]["host"] == "h200-node" and report["fits"] is True
    assert len(report["details"]) == 4 and "240,576 tokens" in report["details"][2]


def test_tgi_is_planned_as_before_and_ignores_vllm_fields(client, api, engineer, model_store, one_h200):
    # gpu_memory_utilization 0.01 would be refused for vLLM; TGI does not read it.
    query = f"{API}?source={MODEL}&max_total_tokens=4096&gpu_memory_utilization=0.01&max_model_len=99999999"
    for url in (query, f"{query}&backend=tgi", f"{query}&backend="):
        report = dict(api(engineer).get(url).data)
        assert (report.pop("backend"), report.pop("backend_label"), report.pop("details")) == (
            "tgi",
            "Text Generation Inference",
            [],
        )
        expected = size_model(
            load_local_metadata(model_store / MODEL), max_total_tokens=4096, inventory=inventory_capacity()
        ).as_dict()
        assert report == expected and report["vllm"] is None and report["memory_mode"] == "fill"
    page = _page(client, engineer, source=MODEL, max_total_tokens="4096", gpu_memory_utilization="0.01")
    assert "Token limits" in page and '<code class="small">--quantize fp8</code>' in page
    assert 'id="sizing-vllm"' not in page and 'data-backend="tgi"' in page
    assert not _field_errors(page, "gpu_memory_utilization")

"""The planner's metadata path with the real huggingface_hub client against the Hub test server."""

from __future__ import annotations

import json

import pytest

from audit.models import AuditEvent
from console.accounts.services.credentials import credential_create
from deployments.inventory.services import gpu_create, host_create
from deployments.models import AllowedEndpoint
from tests.support.fixtures import MODEL_CONFIGS
from tests.support.hub_server import make_safetensors

pytestmark = pytest.mark.django_db
CONFIGS = MODEL_CONFIGS
EXPECTED = json.loads((CONFIGS / "expected.json").read_text())
H200 = 150754820096


@pytest.fixture(autouse=True)
def hub_allowed(hub_server):
    """The test Hub answers on 127.0.0.1: on the endpoint allow-list, as huggingface.co is by default."""
    AllowedEndpoint.objects.get_or_create(pattern="127.0.0.1")


@pytest.fixture
def h200_host(admin):
    host = host_create(actor=admin, name="h200-node")
    for index in range(8):
        gpu_create(actor=admin, host=host, index=index, name="NVIDIA H200", memory_total=H200, power_limit_w=700)
    return host


def test_config_only_repo_is_sized_without_downloading_weights(api, engineer, hub_server, h200_host):
    hub_server.add_repo(
        "deepseek-ai/deepseek-llm-7b-base", {"config.json": (CONFIGS / "deepseek-llm-7b-base.json").read_bytes()}
    )
    report = api(engineer).get("/api/v1/sizing/?source=deepseek-ai/deepseek-llm-7b-base").data
    assert report["params"] == EXPECTED["deepseek-llm-7b-base"]["params"]
    assert report["kv_bytes_per_token"] == EXPECTED["deepseek-llm-7b-base"]["kv_bytes_per_token_bf16"]
    assert report["revision_sha"] == hub_server.commit_sha("deepseek-ai/deepseek-llm-7b-base")
    bf16 = next(row for row in report["rows"] if row["precision"] == "bf16")
    assert bf16["fits"] and bf16["gpu_set"]["num_shard"] == 1 and bf16["gpu_set"]["host"] == "h200-node"


def test_safetensors_headers_are_read_by_range_not_downloaded(api, engineer, hub_server):
    weights = make_safetensors(
        {"model.embed_tokens.weight": ("BF16", (1024, 256)), "model.layers.0.mlp.up_proj.weight": ("BF16", (512, 256))}
    )
    config = {
        "model_type": "llama",
        "hidden_size": 256,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "num_hidden_layers": 1,
        "intermediate_size": 512,
        "vocab_size": 1024,
        "torch_dtype": "bfloat16",
    }
    hub_server.add_repo("acme/tiny", {"config.json": json.dumps(config).encode(), "model.safetensors": weights})
    report = api(engineer).get("/api/v1/sizing/?source=acme/tiny").data
    assert report["params"] == 1024 * 256 + 512 * 256 and report["params_source"].startswith("safetensors")
    assert hub_server.served("acme/tiny", "model.safetensors") < len(weights)


def test_gated_repo_needs_a_stored_token_and_its_use_is_audited(api, engineer, hub_server):
    hub_server.add_repo(
        "meta-llama/Meta-Llama-3-70B", {"config.json": (CONFIGS / "llama-3-70b.json").read_bytes()}, gated=True
    )
    refused = api(engineer).get("/api/v1/sizing/?source=meta-llama/Meta-Llama-3-70B", expected=400).data
    assert "token" in json.dumps(refused).lower()
    token = credential_create(actor=engineer, name="hf", value=hub_server.required_token)
    report = api(engineer).get(f"/api/v1/sizing/?source=meta-llama/Meta-Llama-3-70B&credential={token.pk}").data
    assert report["params"] == EXPECTED["llama-3-70b"]["params"]
    used = AuditEvent.objects.get(action="secret.used")
    assert used.target_id == str(token.pk) and hub_server.required_token not in used.detail


def test_unknown_repo_and_paths_outside_the_model_store_are_field_errors(api, engineer, hub_server):
    assert "source" in api(engineer).get("/api/v1/sizing/?source=nobody/nothing", expected=400).data
    assert "model store" in api(engineer).get("/api/v1/sizing/?source=/etc", expected=400).data["source"][0]
    assert "source" in api(engineer).get("/api/v1/sizing/", expected=400).data


def test_the_sizing_page_shows_the_table(client, auditor, hub_server, h200_host):
    hub_server.add_repo("meta-llama/Meta-Llama-3-70B", {"config.json": (CONFIGS / "llama-3-70b.json").read_bytes()})
    client.force_login(auditor)
    page = client.get("/inventory/sizing/?source=meta-llama/Meta-Llama-3-70B&max_total_tokens=4096").content.decode()
    assert ('data-precision="bf16"' in page and 'data-precision="awq"' in page) or 'data-precision="int4"' in page
    assert "h200-node" in page

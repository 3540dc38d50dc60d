"""Paths a user names cannot reach outside what the console owns: LoRA adapters stay in the model store and are
plain names, the sizing API reads only the model store (never the web process's own directory), and a symlink
under an import root does not make what it points to importable. Each test is the attack, which used to work."""

from __future__ import annotations

import json
import os

import pytest

from console.errors import ApplicationError
from deployments.registry.services import import_directory
from deployments.serving.specs import clean_spec
from tests.support.deploy_fixtures import process_host, ready_artifact, tiny_model_in_store

CONFIG = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1}


@pytest.fixture
def artifact(db):
    return ready_artifact(process_host(gpus=1), tiny_model_in_store())


@pytest.mark.parametrize(
    "adapter",
    [
        {"name": "/etc/ssl", "path": "{store}/adapters/a"},  # a bare id that TGI reads as a path
        {"name": "../../etc", "path": "{store}/adapters/a"},
        {"name": "ok", "path": "{store}/adapters/a,evil=/etc"},  # TGI splits --lora-adapters on , and =
        {"name": "ok", "path": "{store}/adapters/a@main"},
        {"name": "ok", "path": "{link}"},  # inside the store by name, outside by its real path
        {"name": "ok", "path": 7},
        {"name": "ok"},  # a Hub id with no path: fetched from outside the store
    ],
)
def test_lora_adapters_cannot_name_anything_outside_the_model_store(artifact, adapter, settings, tmp_path):
    store = settings.MODEL_STORE
    link = os.path.join(store, f"escape-{os.getpid()}")
    if not os.path.islink(link):
        os.symlink(tmp_path, link)
    adapter = {k: v.format(store=store, link=link) if isinstance(v, str) else v for k, v in adapter.items()}
    with pytest.raises(ApplicationError) as refused:
        clean_spec({"artifact": artifact.pk, "device": "cpu", "lora_adapters": [adapter]})
    assert refused.value.field == "lora_adapters"


def test_a_plain_adapter_in_the_store_is_accepted(artifact, settings):
    adapter = {"name": "support-v2", "path": os.path.join(settings.MODEL_STORE, "adapters", "support")}
    assert clean_spec({"artifact": artifact.pk, "device": "cpu", "lora_adapters": [adapter]})["lora_adapters"]


def _decoy(directory):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(CONFIG))


def test_sizing_never_reads_the_web_process_directory(api, engineer, hub_server, tmp_path, monkeypatch):
    """`org/name` that happens to exist relative to the web process's working directory is a Hub repo id."""
    _decoy(tmp_path / "acme" / "decoy")
    monkeypatch.chdir(tmp_path)
    refused = api(engineer).get("/api/v1/sizing/?source=acme/decoy", expected=400).data
    assert "source" in refused  # the Hub (here a test server) has no such repo; the local decoy was not read


def test_sizing_refuses_parent_directories_of_the_store(api, engineer, tmp_path, monkeypatch):
    _decoy(tmp_path)
    (tmp_path / "inner").mkdir()
    monkeypatch.chdir(tmp_path / "inner")
    for source in ("..", "../", "/etc", "../../.."):
        refused = api(engineer).get(f"/api/v1/sizing/?source={source}", expected=400).data
        assert "inside the model store" in str(refused["source"]), source


def test_a_symlink_under_an_import_root_does_not_import_what_it_points_to(settings, tmp_path):
    root, elsewhere = tmp_path / "imports", tmp_path / "elsewhere"
    root.mkdir()
    _decoy(elsewhere)
    (root / "link").symlink_to(elsewhere, target_is_directory=True)
    (root / "real").mkdir()
    settings.MODEL_IMPORT_ROOTS = [str(root)]
    with pytest.raises(ApplicationError) as refused:
        import_directory(str(root / "link"))
    assert refused.value.field == "directory"
    assert import_directory(str(root / "real")) == os.path.realpath(root / "real")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("gpu_indexes", ["a"]),
        ("gpu_indexes", [{}]),
        ("gpu_indexes", "0,1"),
        ("gpu_indexes", [-1]),
        ("lora_adapters", [{"name": "x", "path": 3}]),
        ("lora_adapters", "x"),
    ],
)
def test_bad_spec_values_are_a_400_naming_the_field(api, admin, artifact, field, value):
    """These used to raise inside the spec checks (a 500); now the API names the field."""
    body = {"spec": {"artifact": artifact.pk, "device": "gpu", field: value}}
    refused = api(admin).post("/api/v1/deployments/plan/", body, expected=400).data
    assert field in refused or field in str(refused.get("spec", "")), refused

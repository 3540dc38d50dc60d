"""The fine-tune form, its memory estimate and the API, without running anything: what an engineer may start, on
which data, and the clear errors for what cannot run (the program's own option rules, QLoRA without CUDA, a base
model without a tokenizer, a setup that does not fit the host's GPUs, a dataset of another team)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.contrib.auth.models import Group
from rest_framework.test import APIClient

from audit.models import AuditEvent
from deployments.datasets import services as datasets
from deployments.models import GpuReservation, Job
from tests.deployments.datasets.conftest import jsonl
from tests.deployments.datasets.test_fetch_route import make_version
from tests.factories import GpuFactory, HostFactory, ModelArtifactFactory

pytestmark = pytest.mark.django_db

# A small Llama shape: the planner sizes it from config.json alone.
CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "vocab_size": 32000,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
RECORDS = [{"prompt": f"q{n}", "completion": f" a{n}"} for n in range(4)]


def model_dir(root: Path, *, tokenizer: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(CONFIG))
    if tokenizer:
        (root / "tokenizer.json").write_text("{}")
    return root


@pytest.fixture
def world(settings, tmp_path, admin, engineer):
    settings.DATASET_STORE = tmp_path / "datasets"
    settings.MODEL_STORE = tmp_path / "models"
    team = Group.objects.create(name="ft-team")
    team.user_set.add(engineer)
    other = Group.objects.create(name="other-team")
    version = make_version(admin, datasets.dataset_create(actor=admin, name="ours", team=team), jsonl(RECORDS))
    foreign = make_version(admin, datasets.dataset_create(actor=admin, name="theirs", team=other), jsonl(RECORDS))
    cpu_host = HostFactory(name="cpu-box")
    base = ModelArtifactFactory(host=cpu_host, repo__repo_id="org/small")
    model_dir(Path(base.path))
    return {"version": version, "foreign": foreign, "base": base, "team": team}


def form_data(world, **changes) -> dict:
    data = {
        "base": world["base"].pk,
        "dataset_version": world["version"].pk,
        "method": "lora",
        "precision": "auto",
        "gpu_count": 1,
        "learning_rate": 2e-4,
        "epochs": 1,
        "batch_size": 2,
        "grad_accumulation": 1,
        "max_seq_len": 512,
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.05,
        "target_modules": "all-linear",
        "warmup_steps": 0,
        "scheduler": "linear",
        "seed": 42,
        "eval_fraction": 0.0,
        "checkpoint_every": 50,
    }
    data.update(changes)
    return data


def test_the_engineer_estimates_then_starts_a_run_on_their_teams_data(client, engineer, world):
    client.force_login(engineer)
    page = client.get("/finetune/new/").content.decode()
    assert "ours v1" in page and "theirs" not in page  # only data the engineer may train on
    estimate = client.post("/finetune/new/", {**form_data(world), "estimate": "1"})
    assert estimate.status_code == 200
    body = estimate.content.decode()
    assert 'data-fits="unknown"' in body  # a CPU host: its memory is not in the inventory
    assert Job.objects.count() == 0  # an estimate starts nothing
    started = client.post("/finetune/new/", form_data(world))
    job = Job.objects.get(kind=Job.Kind.FINETUNE)
    assert started.status_code == 302 and started["Location"] == f"/jobs/{job.pk}/"
    assert job.queue == "host.cpu-box" and job.params["dataset_version_id"] == world["version"].pk
    assert job.params["options"]["hyperparameters"]["max_seq_len"] == 512
    assert job.params["options"]["hyperparameters"]["scheduler"] == "linear"
    assert job.target_id == str(world["version"].dataset_id)
    event = AuditEvent.objects.get(action="finetune.started")
    detail = json.loads(event.detail)
    assert detail["dataset_sha256"] == world["version"].sha256 and detail["method"] == "lora"
    panel = client.get(f"/jobs/{job.pk}/").content.decode()
    assert 'id="finetune-panel"' in panel and 'id="finetune-cancel-form"' in panel
    assert (
        "ours" in client.get("/finetune/").content.decode() or f"#{job.pk}" in client.get("/finetune/").content.decode()
    )


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"learning_rate": 5}, "learning_rate", "between 0 and 1"),
        ({"method": "qlora"}, "method", "QLoRA needs a CUDA GPU"),
        ({"scheduler": "sideways"}, "scheduler", "Select a valid choice"),
        ({"target_modules": "q_proj, nope_proj"}, "target_modules", "nope_proj"),
    ],
    ids=["learning-rate", "qlora-on-cpu", "scheduler", "unknown-target-module"],
)
def test_bad_options_are_errors_on_their_field_and_nothing_starts(client, engineer, world, changes, field, words):
    client.force_login(engineer)
    response = client.post("/finetune/new/", form_data(world, **changes))
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert any(words in message for message in errors.get(field, [])), errors
    assert Job.objects.count() == 0


def test_a_base_model_without_a_tokenizer_is_refused_on_the_base_field(client, engineer, world):
    bare = ModelArtifactFactory(host=world["base"].host, repo__repo_id="org/no-tokenizer")
    model_dir(Path(bare.path), tokenizer=False)
    client.force_login(engineer)
    response = client.post("/finetune/new/", form_data(world, base=bare.pk))
    assert response.status_code == 400
    assert "no tokenizer files" in " ".join(response.context["form"].errors["base"])
    assert Job.objects.count() == 0


def test_on_a_gpu_host_the_run_is_placed_and_reserved_or_refused_with_what_would_fit(engineer, world):
    gpu_host = HostFactory(name="gpu-box")
    GpuFactory(host=gpu_host, index=0, memory_total=24 * 10**9)
    base = ModelArtifactFactory(host=gpu_host, repo__repo_id="org/small-gpu")
    model_dir(Path(base.path))
    api = APIClient()
    api.force_authenticate(engineer)
    request = {"base": base.pk, "dataset_version": world["version"].pk, "method": "full"}
    too_big = api.post("/api/v1/finetunes/estimate/", {**request, "hyperparameters": {"batch_size": 8}}, format="json")
    verdict = too_big.json()["estimate"]
    assert verdict["fits"] is False and verdict["reason"] and verdict["suggestions"], verdict
    refused = api.post("/api/v1/finetunes/", {**request, "hyperparameters": {"batch_size": 8}}, format="json")
    assert refused.status_code == 400 and "method" in refused.json()
    fits = api.post("/api/v1/finetunes/", {**request, "method": "lora", "gradient_checkpointing": True}, format="json")
    assert fits.status_code == 201, fits.json()
    job = Job.objects.get(pk=fits.json()["id"])
    assert job.queue == "host.gpu-box" and job.params["gpu_indexes"] == [0]
    reservation = GpuReservation.objects.get(holder=f"finetune:{job.pk}")
    assert reservation.memory_bytes == job.params["estimate_bytes"] > 0


def test_the_api_refuses_another_teams_data_and_the_auditor_starts_nothing(engineer, auditor, world):
    api = APIClient()
    api.force_authenticate(engineer)
    foreign = api.post(
        "/api/v1/finetunes/", {"base": world["base"].pk, "dataset_version": world["foreign"].pk}, format="json"
    )
    assert foreign.status_code in (403, 404)
    wrong = api.post(
        "/api/v1/finetunes/",
        {"base": world["base"].pk, "dataset_version": world["version"].pk, "hyperparameters": {"lora_r": 0}},
        format="json",
    )
    assert wrong.status_code == 400 and "lora_r" in wrong.json()
    watcher = APIClient()
    watcher.force_authenticate(auditor)
    assert watcher.post("/api/v1/finetunes/", {"base": world["base"].pk}, format="json").status_code == 403
    assert Job.objects.count() == 0


def test_cancel_and_resume_are_audited_and_resume_reopens_the_same_run(engineer, world):
    api = APIClient()
    api.force_authenticate(engineer)
    created = api.post(
        "/api/v1/finetunes/", {"base": world["base"].pk, "dataset_version": world["version"].pk}, format="json"
    )
    job = Job.objects.get(pk=created.json()["id"])
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING)
    assert api.post(f"/api/v1/finetunes/{job.pk}/cancel/").status_code == 202
    job.refresh_from_db()
    assert job.cancel_requested
    assert api.post(f"/api/v1/finetunes/{job.pk}/resume/").status_code == 400  # still running
    Job.objects.filter(pk=job.pk).update(status=Job.Status.CANCELLED)
    resumed = api.post(f"/api/v1/finetunes/{job.pk}/resume/")
    assert resumed.status_code == 202 and resumed.json()["status"] == "pending"
    job.refresh_from_db()
    assert not job.cancel_requested and job.attempts == 0
    actions = list(AuditEvent.objects.filter(target_id=str(job.pk)).values_list("action", flat=True))
    assert {"finetune.started", "finetune.cancelled", "finetune.resumed"} <= set(actions)
    listing = api.get("/api/v1/finetunes/").json()
    assert [run["id"] for run in listing["results"]] == [job.pk]

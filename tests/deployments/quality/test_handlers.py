"""Quantize and evaluate jobs through their handlers (runner.run in the test process, the program run by the process
runtime as a job runs it), with a stand-in program (tests/support/fake_quality_program.py) that answers under the
job-program contract as the real ones do, in well under a second: the handler passes the fetched calibration
file, publishes the output into the model store whole and registers it with its lineage (the recipe verbatim);
a program killed mid-run leaves no artifact and nothing in the store, and leftovers of a killed run do not reach
the next one's output; an evaluate job stores one figure per model and metric, keyed by the data."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from django.contrib.auth.models import Group

from audit.models import AuditEvent
from deployments.datasets import services as datasets
from deployments.models import ArtifactUse, EvalResult, Job, ModelArtifact
from deployments.quality import services
from tests.deployments.datasets.conftest import jsonl
from tests.deployments.datasets.test_fetch_route import make_version
from tests.factories import HostFactory, ModelArtifactFactory
from tests.support.deploy_fixtures import run_job_in_thread
from tests.support.serve_process import ROOT
from workers import runner
from workers.jobs.manifest import verify_manifest

pytestmark = pytest.mark.django_db

FAKE = ROOT / "tests" / "support" / "fake_quality_program.py"  # the repository's own stand-in program
CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256}
ROWS = [{"text": f"secret row {n}"} for n in range(8)]


def fake_ml_python(directory: Path, *, die: bool = False, wait: bool = False) -> str:
    """An ML_PYTHON that runs the stand-in program with the arguments the handler gives the real one."""
    script = directory / "fake-ml-python"
    export = ("export FAKE_QUANTIZE_DIE=1\n" if die else "") + ("export FAKE_QUANTIZE_WAIT=1\n" if wait else "")
    script.write_text(f'#!/bin/sh\n{export}exec {sys.executable} {FAKE} "$@"\n')
    script.chmod(0o755)
    return str(script)


@pytest.fixture
def world(settings, tmp_path, admin, engineer):
    settings.DATASET_STORE = tmp_path / "datasets"
    settings.MODEL_STORE = tmp_path / "models"
    settings.CHECKPOINT_DIR = tmp_path / "work"
    settings.DATASET_CACHE_DIR = tmp_path / "cache"
    settings.ML_PYTHON = fake_ml_python(tmp_path)
    team = Group.objects.create(name="q-team")
    team.user_set.add(engineer)
    version = make_version(admin, datasets.dataset_create(actor=admin, name="calib", team=team), jsonl(ROWS))
    # The host's cached copy (what the fetch would write; it is verified by sha256 and reused).
    cached = Path(settings.DATASET_CACHE_DIR) / f"{version.sha256}.{version.format}"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(jsonl(ROWS))
    source = ModelArtifactFactory(host=HostFactory(name="cpu-box"), repo__repo_id="org/small")
    Path(source.path).mkdir(parents=True)
    (Path(source.path) / "config.json").write_text(json.dumps(CONFIG))
    (Path(source.path) / "model.safetensors").write_bytes(b"\0" * 128)
    return {"version": version, "source": source, "cached": cached}


def log_text(job: Job) -> str:
    return "\n".join(job.lines.order_by("seq").values_list("text", flat=True))


def test_a_quantize_job_publishes_a_whole_checkpoint_and_registers_it_with_its_lineage(
    world, engineer, settings, client
):
    source, version = world["source"], world["version"]
    job = services.quantize_start(
        actor=engineer, source=source, options={"scheme": "W4A16_GPTQ", "samples": 8}, calibration=version
    )
    # What a killed earlier run left in the work directory must not end up in this run's output.
    leftover = Path(settings.CHECKPOINT_DIR) / f"quantize-{job.pk}" / "model.partial"
    leftover.mkdir(parents=True)
    (leftover / "stale.bin").write_bytes(b"half")

    assert runner.run(job.pk) == "succeeded", log_text(job)
    job.refresh_from_db()
    spec = json.loads((Path(settings.CHECKPOINT_DIR) / f"quantize-{job.pk}-last-spec.json").read_text())
    assert spec["calibration"] == {"path": str(world["cached"]), "samples": 8, "seq_len": 512}
    assert spec["source_model"] == source.path and spec["device"] == "cpu"

    artifact = ModelArtifact.objects.get(produced_by=job)
    home = Path(artifact.path)
    assert home == services.quantize_output_home(source, job) and home.is_dir()
    assert not (home / "stale.bin").exists() and verify_manifest(home) == []
    assert not list(home.parent.glob("*.partial"))
    assert artifact.kind == ModelArtifact.Kind.MODEL and artifact.base == source
    assert artifact.status == ModelArtifact.Status.READY and artifact.files_sha256["config.json"]
    lineage = artifact.lineage
    assert lineage["source"] == f"org/small@{source.repo.commit}" and lineage["source_artifact"] == source.pk
    assert lineage["scheme"] == "W4A16_GPTQ" and lineage["recipe"] == "quant_stage:\n  quant_modifiers: {}\n"
    assert lineage["calibration"]["dataset"] == "calib" and lineage["calibration"]["dataset_version"] == 1
    assert lineage["calibration"]["sha256"] == version.sha256 and lineage["calibration"]["samples"] == 8
    assert lineage["peak_memory_bytes"] == 12345 and lineage["versions"] == {"llmcompressor": "fake"}
    assert job.result["artifact"] == artifact.pk
    assert AuditEvent.objects.filter(action="quantize.finished", target_id=str(artifact.pk)).exists()
    assert not ArtifactUse.objects.exists()  # released when the job ended
    assert not (Path(settings.CHECKPOINT_DIR) / f"quantize-{job.pk}").exists()
    assert "secret row" not in log_text(job)
    client.force_login(engineer)
    page = client.get(f"/models/{artifact.pk}/").content.decode()
    assert 'id="quantize-lineage"' in page and "W4A16_GPTQ" in page and "calib v1" in page
    assert 'id="quantize-link"' not in page  # a quantized model is not quantized again
    assert 'id="quantize-link"' in client.get(f"/models/{source.pk}/").content.decode()


def test_a_quantize_program_killed_mid_run_leaves_no_artifact_and_nothing_in_the_store(
    world, engineer, settings, tmp_path
):
    settings.ML_PYTHON = fake_ml_python(tmp_path, die=True)
    source = world["source"]
    job = services.quantize_start(actor=engineer, source=source, options={"scheme": "FP8_DYNAMIC"})
    runner.run(job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED and job.failure_cause and job.next_step
    assert not ModelArtifact.objects.filter(produced_by=job).exists()
    assert not services.quantize_output_home(source, job).exists()
    assert not services.quantize_output_home(source, job).parent.exists()
    assert not (Path(settings.CHECKPOINT_DIR) / f"quantize-{job.pk}").exists()  # its half output is gone
    # A new run of the same model then succeeds cleanly.
    settings.ML_PYTHON = fake_ml_python(tmp_path)
    again = services.quantize_start(actor=engineer, source=source, options={"scheme": "FP8_DYNAMIC"})
    assert runner.run(again.pk) == "succeeded", log_text(again)
    assert verify_manifest(ModelArtifact.objects.get(produced_by=again).path) == []


def test_an_evaluate_job_stores_one_figure_per_model_and_metric_keyed_by_its_data(world, engineer, settings, client):
    source, version = world["source"], world["version"]
    other = ModelArtifactFactory(host=source.host, repo__repo_id="org/small-fp8")
    job = services.evaluate_start(
        actor=engineer,
        artifacts=[source, other],
        perplexity={"context_length": 64, "stride": 32},
        task={"kind": "exact_match", "prompt_field": "text", "expected_field": "answer"},
        task_version=version,
    )
    assert runner.run(job.pk) == "succeeded", log_text(job)
    spec = json.loads((Path(settings.CHECKPOINT_DIR) / f"evaluate-{job.pk}-last-spec.json").read_text())
    assert spec["perplexity"]["path"] is None  # the shipped sample
    assert spec["task"]["path"] == str(world["cached"]) and spec["models"][1] == {
        "id": f"artifact-{other.pk}",
        "path": other.path,
    }
    perplexities = EvalResult.objects.filter(job=job, metric=EvalResult.Metric.PERPLEXITY).order_by("value")
    assert [(r.artifact_id, r.value) for r in perplexities] == [(source.pk, 10.0), (other.pk, 11.0)]
    first = perplexities[0]
    assert first.dataset_version is None and first.data_sha256 == "d" * 64
    assert (first.context_length, first.stride, first.tokens, first.tokens_per_s) == (64, 32, 1000, 500.0)
    assert first.comparable_key == perplexities[1].comparable_key and first.detail["token_ids_sha256"] == "f" * 64
    accuracy = EvalResult.objects.get(job=job, artifact=source, metric=EvalResult.Metric.ACCURACY)
    assert accuracy.dataset_version == version and accuracy.task_kind == "exact_match" and accuracy.value == 0.5
    assert AuditEvent.objects.filter(action="evaluate.finished", target_id=str(job.pk)).exists()
    assert not ArtifactUse.objects.exists()
    client.force_login(engineer)
    page = client.get(f"/models/{source.pk}/").content.decode()
    assert 'id="artifact-eval-results"' in page and "10.0000" in page and "64 / 32" in page


@pytest.mark.django_db(transaction=True)  # the job runs in a thread, on its own connection
def test_a_quantize_job_stopped_mid_run_registers_nothing_and_frees_what_it_held(world, engineer, settings, tmp_path):
    settings.ML_PYTHON = fake_ml_python(tmp_path, wait=True)
    settings.JOB_PROGRAM_STOP_GRACE_SECONDS = 10
    source = world["source"]
    job = services.quantize_start(actor=engineer, source=source, options={"scheme": "FP8_DYNAMIC"})
    worker = run_job_in_thread(job.pk)
    deadline = time.monotonic() + 30
    while "waiting for a stop request" not in log_text(job):
        assert time.monotonic() < deadline and worker.is_alive(), log_text(job)
        time.sleep(0.2)
    services.quality_cancel(actor=engineer, job=job)
    worker.join(30)
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED, (job.status, log_text(job))
    assert not ModelArtifact.objects.filter(produced_by=job).exists()
    assert not services.quantize_output_home(source, job).exists()
    assert not ArtifactUse.objects.exists()
    assert AuditEvent.objects.filter(action="quantize.cancelled", target_id=str(job.pk)).exists()


def test_the_handler_passes_an_eval_split_and_its_figures_never_compare_with_the_whole_versions(
    world, engineer, settings
):
    source, version = world["source"], world["version"]

    def run(perplexity: dict, task: dict | None = None) -> EvalResult:
        job = services.evaluate_start(
            actor=engineer,
            artifacts=[source],
            perplexity=perplexity,
            perplexity_version=version,
            task=task,
            task_version=version if task else None,
        )
        assert runner.run(job.pk) == "succeeded", log_text(job)
        spec = json.loads((Path(settings.CHECKPOINT_DIR) / f"evaluate-{job.pk}-last-spec.json").read_text())
        assert spec["perplexity"]["path"] == str(world["cached"])
        if task:
            assert spec["task"]["split"] == {"eval_fraction": 0.1, "seed": 42}
        return EvalResult.objects.get(job=job, metric=EvalResult.Metric.PERPLEXITY)

    whole = run({"context_length": 64, "stride": 32})
    held_out = run(
        {"context_length": 64, "stride": 32, "eval_fraction": 0.25, "seed": 7},
        {"kind": "exact_match", "eval_split": True},
    )
    again = run({"context_length": 64, "stride": 32, "eval_fraction": 0.25, "seed": 7})
    other_seed = run({"context_length": 64, "stride": 32, "eval_fraction": 0.25, "seed": 8})
    assert held_out.detail["split"] == {"eval_fraction": 0.25, "seed": 7} and whole.detail["split"] is None
    assert held_out.data_sha256 == whole.data_sha256  # the same file: only the split tells them apart
    assert held_out.comparable_key == again.comparable_key and "eval split 0.25, seed 7" in held_out.data_label
    assert len({whole.comparable_key, held_out.comparable_key, other_seed.comparable_key}) == 3
    accuracy = EvalResult.objects.get(job=held_out.job, metric=EvalResult.Metric.ACCURACY)
    assert accuracy.detail["split"] == {"eval_fraction": 0.1, "seed": 42}

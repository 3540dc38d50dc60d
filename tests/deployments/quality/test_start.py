"""Starting quantize and evaluate jobs, without running anything: each bad input refused before any work with its
field (an adapter, a source not ready, an already quantized source, an unknown scheme, a calibration version
shorter than the samples asked for, a CUDA-only scheme on a host without GPUs, a model no GPU of its host can
hold, models on two hosts, a window the program would refuse); the placement's GPU reservation and the audit
event of a start and a cancel; who may start (the finetune action, use of each dataset) on the API and pages."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from django.contrib.auth.models import Group

from audit.models import AuditEvent
from console.errors import ApplicationError
from console.permissions import ActionDenied
from deployments.datasets import services as datasets
from deployments.models import ArtifactUse, GpuReservation, Job, ModelArtifact
from deployments.quality import services
from deployments.units import GB
from tests.deployments.datasets.conftest import jsonl
from tests.deployments.datasets.test_fetch_route import make_version
from tests.factories import GpuFactory, HostFactory, ModelArtifactFactory
from workers.jobs import quantize_spec

pytestmark = pytest.mark.django_db

CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256}
ROWS = [{"text": f"row {n}"} for n in range(8)]


def model_dir(root: Path, config: dict | None = None, weight_bytes: int = 1000) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config or CONFIG))
    with open(root / "model.safetensors", "wb") as weights:
        weights.truncate(weight_bytes)  # sparse: the size is what placement reads
    return root


@pytest.fixture
def world(settings, tmp_path, admin, engineer):
    settings.DATASET_STORE = tmp_path / "datasets"
    settings.MODEL_STORE = tmp_path / "models"
    team = Group.objects.create(name="q-team")
    team.user_set.add(engineer)
    other = Group.objects.create(name="q-other")
    version = make_version(admin, datasets.dataset_create(actor=admin, name="ours", team=team), jsonl(ROWS))
    foreign = make_version(admin, datasets.dataset_create(actor=admin, name="theirs", team=other), jsonl(ROWS))
    host = HostFactory(name="cpu-box")
    source = ModelArtifactFactory(host=host, repo__repo_id="org/small")
    model_dir(Path(source.path))
    return {"version": version, "foreign": foreign, "source": source, "host": host}


def refused(call, field: str) -> str:
    with pytest.raises(ApplicationError) as caught:
        call()
    assert caught.value.field == field, (caught.value.field, caught.value.message)
    return caught.value.message


def quantize(actor, source, calibration=None, **options):
    return services.quantize_start(
        actor=actor, source=source, options={"scheme": "W4A16_GPTQ", **options}, calibration=calibration
    )


# -- quantize: refusals --------------------------------------------------------------------------------------------
def test_quantize_refuses_each_bad_input_before_any_work_naming_its_field(world, engineer, tmp_path):
    source, version = world["source"], world["version"]
    adapter = ModelArtifactFactory(host=source.host, kind=ModelArtifact.Kind.ADAPTER, base=source)
    assert "adapter" in refused(lambda: quantize(engineer, adapter), "source")
    pending = ModelArtifactFactory(host=source.host, status=ModelArtifact.Status.DOWNLOADING)
    assert "not ready" in refused(lambda: quantize(engineer, pending), "source")

    quantized = ModelArtifactFactory(host=source.host, repo__repo_id="org/small-awq")
    model_dir(Path(quantized.path), {**CONFIG, "quantization_config": {"quant_method": "awq", "bits": 4}})
    message = refused(lambda: quantize(engineer, quantized), "source")
    assert "already quantized (awq)" in message

    assert "NF5" in refused(lambda: quantize(engineer, source, scheme="NF5"), "scheme")
    narrow = ModelArtifactFactory(host=source.host, repo__repo_id="org/narrow")
    model_dir(Path(narrow.path), {**CONFIG, "hidden_size": 96})
    assert "hidden_size (96)" in refused(lambda: quantize(engineer, narrow, group_size=64), "group_size")
    assert refused(lambda: quantize(engineer, source, group_size=100), "group_size")

    message = refused(lambda: quantize(engineer, source, version, samples=64), "samples")
    assert "has 8 rows; 64 calibration samples" in message
    assert "row 1" not in message  # counts, never a row
    assert not Job.objects.exists() and not AuditEvent.objects.filter(action="quantize.started").exists()


def test_a_scheme_that_needs_cuda_is_refused_on_a_host_without_gpus_with_its_reason(world, engineer, monkeypatch):
    gptq = quantize_spec.SCHEMES["W4A16_GPTQ"]
    reason = "its kernels exist for CUDA only."
    monkeypatch.setitem(quantize_spec.SCHEMES, "W4A16_GPTQ", dataclasses.replace(gptq, cuda_only_reason=reason))
    message = refused(lambda: quantize(engineer, world["source"]), "scheme")
    assert "cpu-box" in message and "no GPU" in message and reason in message
    # AWQ is such a scheme (measured with llm-compressor 0.14 on a CPU).
    assert "page-locked memory" in refused(lambda: quantize(engineer, world["source"], scheme="W4A16_AWQ"), "scheme")


def test_a_model_no_gpu_of_its_host_can_hold_is_refused_and_one_that_fits_reserves_a_gpu(world, engineer, tmp_path):
    gpu_host = HostFactory(name="gpu-box")
    GpuFactory(host=gpu_host, memory_total=16 * GB)
    big = ModelArtifactFactory(host=gpu_host, repo__repo_id="org/big")
    model_dir(Path(big.path), weight_bytes=20 * GB)
    message = refused(lambda: quantize(engineer, big, scheme="FP8_DYNAMIC"), "source")
    assert "gpu-box" in message and "GB needed" in message

    small = ModelArtifactFactory(host=gpu_host, repo__repo_id="org/small-on-gpu")
    model_dir(Path(small.path), weight_bytes=2 * GB)
    job = quantize(engineer, small, scheme="FP8_DYNAMIC")
    assert job.kind == Job.Kind.QUANTIZE and job.params["device"] == "cuda" and job.params["gpu_indexes"] == [0]
    reservation = GpuReservation.objects.get(holder=f"quantize:{job.pk}")
    assert reservation.memory_bytes == int(2 * GB * services.WORKING_MARGIN)
    assert ArtifactUse.objects.filter(artifact=small, holder=f"quantize:{job.pk}").exists()
    # A second model that fits alone no longer fits beside the first one's reservation.
    other = ModelArtifactFactory(host=gpu_host, repo__repo_id="org/other")
    model_dir(Path(other.path), weight_bytes=12 * GB)
    refused(lambda: quantize(engineer, other, scheme="FP8_DYNAMIC"), "source")
    services.release(job)
    assert not GpuReservation.objects.exists() and not ArtifactUse.objects.exists()


def test_a_start_and_a_cancel_are_audited_and_the_calibration_version_is_the_jobs_own(world, engineer):
    job = quantize(engineer, world["source"], world["version"], samples=8, seq_len=128, ignore=["lm_head", "embed"])
    assert job.params["dataset_version_id"] == world["version"].pk and job.params["device"] == "cpu"
    options = job.params["options"]
    assert options["scheme"] == "W4A16_GPTQ" and options["group_size"] == 128
    assert options["calibration"] == {"samples": 8, "seq_len": 128} and options["ignore"] == ["lm_head", "embed"]
    started = json.loads(AuditEvent.objects.get(action="quantize.started", target_id=str(job.pk)).detail)
    assert started["calibration"]["dataset"] == "ours" and started["scheme"] == "W4A16_GPTQ"
    services.quality_cancel(actor=engineer, job=job)
    assert AuditEvent.objects.filter(action="quantize.cancelled", target_id=str(job.pk)).exists()
    # A scheme without calibration reads no dataset, so its job holds no version.
    plain = quantize(engineer, world["source"], world["version"], scheme="FP8_DYNAMIC")
    assert plain.params["dataset_version_id"] is None


def test_a_dataset_of_another_team_and_a_viewer_are_refused(world, engineer, auditor):
    with pytest.raises(ActionDenied):
        quantize(auditor, world["source"])
    with pytest.raises(Exception) as caught:
        quantize(engineer, world["source"], world["foreign"], samples=4)
    assert not isinstance(caught.value, ApplicationError)  # a permission refusal, not a form error
    assert not Job.objects.exists()


# -- evaluate ------------------------------------------------------------------------------------------------------
def test_evaluate_refusals_and_a_start_with_both_data_kinds(world, engineer):
    source, version = world["source"], world["version"]
    elsewhere = ModelArtifactFactory(host=HostFactory(name="other-box"), repo__repo_id="org/elsewhere")
    model_dir(Path(elsewhere.path))

    def start(artifacts, perplexity=None, task=None, perplexity_version=None, task_version=None):
        return services.evaluate_start(
            actor=engineer,
            artifacts=artifacts,
            perplexity=perplexity,
            perplexity_version=perplexity_version,
            task=task,
            task_version=task_version,
        )

    assert "one host" in refused(lambda: start([source, elsewhere], {}), "artifacts")
    assert refused(lambda: start([], {}), "artifacts")
    message = refused(lambda: start([source], {"context_length": 128, "stride": 256}), "perplexity.stride")
    assert "stride (256)" in message
    assert refused(lambda: start([source], None, {"kind": "exact_match"}), "task_version")
    assert refused(lambda: start([source], None, {"kind": "guess"}, task_version=version), "task.kind")
    assert refused(lambda: start([source]), "perplexity")  # nothing to measure
    assert not Job.objects.exists()

    second = ModelArtifactFactory(host=source.host, repo__repo_id="org/small-fp8")
    model_dir(Path(second.path))
    job = start(
        [source, second],
        {"context_length": 64, "stride": 32},
        {"kind": "exact_match", "prompt_field": "text", "expected_field": "answer"},
        perplexity_version=version,
        task_version=version,
    )
    assert job.kind == Job.Kind.EVALUATE and job.params["artifact_ids"] == [source.pk, second.pk]
    assert job.params["options"]["perplexity"]["stride"] == 32 and job.params["dataset_version_ids"] == [
        version.pk,
        version.pk,
    ]
    started = json.loads(AuditEvent.objects.get(action="evaluate.started", target_id=str(job.pk)).detail)
    assert started["perplexity"]["dataset"] == "ours" and started["task"]["kind"] == "exact_match"


# -- API and pages -------------------------------------------------------------------------------------------------
def test_the_api_starts_lists_and_refuses_with_field_errors(world, engineer, auditor, api):
    source = world["source"]
    api(auditor).post("/api/v1/quantize-jobs/", {"source": source.pk, "scheme": "FP8_DYNAMIC"}, expected=403)
    api(auditor).post("/api/v1/evaluate-jobs/", {"artifacts": [source.pk], "perplexity": {}}, expected=403)
    engineer_api = api(engineer)
    errors = engineer_api.post("/api/v1/quantize-jobs/", {"source": source.pk, "scheme": "NF5"}, expected=400).data
    assert "scheme" in errors
    body = {"source": source.pk, "scheme": "W4A16_GPTQ", "calibration_version": world["version"].pk, "samples": 99}
    assert "samples" in engineer_api.post("/api/v1/quantize-jobs/", body, expected=400).data
    body = {"artifacts": [source.pk], "perplexity": {"context_length": 16, "stride": 32}}
    assert "perplexity.stride" in engineer_api.post("/api/v1/evaluate-jobs/", body, expected=400).data

    created = engineer_api.post("/api/v1/quantize-jobs/", {"source": source.pk, "scheme": "FP8_DYNAMIC"}).data
    assert created["source"] == source.pk and created["options"]["scheme"] == "FP8_DYNAMIC"
    listed = api(auditor).get("/api/v1/quantize-jobs/").data["results"]
    assert [row["id"] for row in listed] == [created["id"]]
    api(auditor).post(f"/api/v1/quantize-jobs/{created['id']}/cancel/", expected=403)
    engineer_api.post(f"/api/v1/quantize-jobs/{created['id']}/cancel/", expected=202)
    evaluation = engineer_api.post("/api/v1/evaluate-jobs/", {"artifacts": [source.pk], "perplexity": {}}).data
    assert evaluation["perplexity_version"] is None and evaluation["results"] == []
    api(engineer).get(f"/api/v1/evaluate-jobs/{evaluation['id']}/")
    api(auditor).get(f"/api/v1/eval-results/?artifact={source.pk}")


def test_a_job_on_another_teams_dataset_is_hidden_from_the_engineer(world, admin, engineer, api):
    options = {"scheme": "W4A16_GPTQ", "samples": 4}
    hidden = services.quantize_start(actor=admin, source=world["source"], options=options, calibration=world["foreign"])
    assert api(engineer).get("/api/v1/quantize-jobs/").data["results"] == []
    api(engineer).get(f"/api/v1/quantize-jobs/{hidden.pk}/", expected=404)
    assert [row["id"] for row in api(admin).get("/api/v1/quantize-jobs/").data["results"]] == [hidden.pk]


def test_the_pages_for_an_engineer_and_a_viewer(world, client, engineer, auditor):
    client.force_login(auditor)
    assert client.get("/quality/").status_code == 403
    assert client.get("/quality/quantize/").status_code == 403
    client.force_login(engineer)
    page = client.get(f"/quality/quantize/?source={world['source'].pk}")
    assert page.status_code == 200 and b"FP8 dynamic" in page.content and b"ours v1" in page.content
    assert b"theirs" not in page.content  # only versions the engineer may train on
    data = {
        "source": world["source"].pk,
        "scheme": "W4A16_GPTQ",
        "group_size": 128,
        "ignore": "lm_head",
        "calibration_version": world["version"].pk,
        "samples": 64,
        "seq_len": 256,
    }
    refused_page = client.post("/quality/quantize/", data)
    assert refused_page.status_code == 400 and b"has 8 rows" in refused_page.content
    started = client.post("/quality/quantize/", {**data, "samples": 8})
    job = Job.objects.get(kind=Job.Kind.QUANTIZE)
    assert started.status_code == 302 and started["Location"] == f"/jobs/{job.pk}/"
    detail = client.get(f"/jobs/{job.pk}/")
    assert b'id="quality-panel"' in detail.content and b"W4A16_GPTQ" in detail.content

    evaluate = client.get(f"/quality/evaluate/?artifacts={world['source'].pk}")
    assert evaluate.status_code == 200
    window = {"perplexity": "on", "context_length": 16, "stride": 32}
    bad = client.post("/quality/evaluate/", {"artifacts": [world["source"].pk], **window})
    assert bad.status_code == 400 and b"stride (32)" in bad.content
    listing = client.get("/quality/")
    assert listing.status_code == 200 and f'data-job="{job.pk}"'.encode() in listing.content


def test_an_evaluate_jobs_fetch_token_opens_its_two_versions_and_no_other(world, admin, engineer):
    from deployments.datasets.fetch import FetchRefused, check_fetch_token, fetch_token

    task = make_version(admin, world["version"].dataset, jsonl([{"prompt": "p", "completion": " e"}]))
    job = services.evaluate_start(
        actor=engineer,
        artifacts=[world["source"]],
        perplexity={},
        perplexity_version=world["version"],
        task={"kind": "exact_match", "expected_field": "completion"},
        task_version=task,
    )
    for version in (world["version"], task):
        assert check_fetch_token(fetch_token(job, version), version.pk) == job
    with pytest.raises(FetchRefused) as refused_fetch:
        check_fetch_token(fetch_token(job, world["foreign"]), world["foreign"].pk)
    assert refused_fetch.value.status == 403


def test_an_eval_split_defaults_to_the_versions_computed_split_and_too_few_rows_are_refused(
    world, engineer, api, client
):
    source, version = world["source"], world["version"]  # 8 rows

    def split_of(perplexity: dict, chosen=version) -> dict:
        job = services.evaluate_start(
            actor=engineer, artifacts=[source], perplexity=perplexity, perplexity_version=chosen
        )
        return job.params["options"]["perplexity"]["split"]

    assert split_of({"eval_split": True}) == {"eval_fraction": 0.1, "seed": 42}  # no statistics: the defaults
    version.stats = {"split": {"train": 6, "eval": 2, "seed": 7, "eval_fraction": 0.2}}
    version.save(update_fields=["stats"])
    assert split_of({"eval_split": True}) == {"eval_fraction": 0.2, "seed": 7}
    assert split_of({"seed": 3}) == {"eval_fraction": 0.2, "seed": 3}
    assert "shipped" in refused(lambda: split_of({"eval_split": True}, None), "perplexity.eval_split")
    assert "below 0.5" in refused(lambda: split_of({"eval_fraction": 0.5}), "perplexity.eval_fraction")

    engineer_api = api(engineer)
    body = {"artifacts": [source.pk], "perplexity": {"dataset_version": version.pk, "eval_fraction": 0.25}}
    assert engineer_api.post("/api/v1/evaluate-jobs/", body).data["options"]["perplexity"]["split"] == {
        "eval_fraction": 0.25,
        "seed": 7,
    }
    client.force_login(engineer)
    form = {"artifacts": [source.pk], "perplexity": "on", "context_length": 64, "stride": 32}
    started = client.post("/quality/evaluate/", {**form, "perplexity_version": version.pk, "eval_split": "on"})
    assert started.status_code == 302
    assert Job.objects.latest("pk").params["options"]["perplexity"]["split"] == {"eval_fraction": 0.2, "seed": 7}

    version.row_count = 1  # one row: nothing would be left to train on
    version.save(update_fields=["row_count"])
    body["perplexity"]["eval_split"] = True
    errors = engineer_api.post("/api/v1/evaluate-jobs/", body, expected=400).data
    assert "too few" in str(errors["perplexity.eval_split"])
    page = client.post("/quality/evaluate/", {**form, "perplexity_version": version.pk, "eval_split": "on"})
    assert page.status_code == 400 and b"too few for an eval split" in page.content

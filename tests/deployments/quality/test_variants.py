"""The variants page of a base model (issue 18, point 4): every artifact made from it, transitively, with size,
weight memory by the planner, perplexity and accuracy against the base only on the same data (the newest figure per
data identity), benchmark figures against the base's only at a load both ran cleanly with the same workload, and
the seed's two claims measured where the variants exist (what is missing said otherwise). The page and the API
show the same rows; "Deploy this one" only for users who may deploy, and the deployment create answers 403 to the
others for a quantized variant."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from deployments.models import (
    BenchmarkRun,
    BenchmarkStep,
    Deployment,
    EvalResult,
    Gpu,
    Host,
    ModelArtifact,
)
from deployments.quality import variants
from deployments.sizing import memory
from deployments.sizing.params import count_parameters
from tests.factories import DeploymentSpecFactory, HostFactory, ModelArtifactFactory
from tests.support.model_dirs import write_llama_dir

pytestmark = pytest.mark.django_db

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "compressed-tensors"
SAMPLE_SHA, OTHER_SHA, TASK_SHA = "a" * 64, "b" * 64, "c" * 64


def derive(base: ModelArtifact, lineage: dict, kind: str = ModelArtifact.Kind.MODEL, **extra) -> ModelArtifact:
    return ModelArtifactFactory(host=base.host, base=base, kind=kind, lineage=lineage, **extra)


def quantized(base: ModelArtifact, scheme: str, **extra) -> ModelArtifact:
    return derive(base, {"scheme": scheme, "source_artifact": base.pk}, **extra)


def figure(artifact, metric, value, *, sha=SAMPLE_SHA, context=128, stride=64, task="", age_s=0) -> EvalResult:
    result = EvalResult.objects.create(
        artifact=artifact,
        metric=metric,
        value=value,
        data_sha256=sha,
        context_length=context if metric == "perplexity" else None,
        stride=stride if metric == "perplexity" else None,
        task_kind=task,
    )
    if age_s:
        EvalResult.objects.filter(pk=result.pk).update(created_at=timezone.now() - timedelta(seconds=age_s))
    return result


def accuracy(artifact, value, **kw) -> EvalResult:
    return figure(artifact, "accuracy", value, sha=kw.pop("sha", TASK_SHA), task="multiple_choice", **kw)


def benchmark(
    artifact, steps, *, state=BenchmarkRun.State.SUCCEEDED, workload=None, age_s=0, host=None
) -> BenchmarkRun:
    """A run of a deployment serving `artifact`; steps: (concurrency, tokens/s, ttft ms, failed requests)."""
    spec = DeploymentSpecFactory(artifact=artifact, current=True, deployment__host=host)
    run = BenchmarkRun.objects.create(
        deployment=spec.deployment,
        spec=spec,
        state=state,
        workload=workload or {"prompt_tokens": 128, "output_tokens": 64},
    )
    if age_s:
        BenchmarkRun.objects.filter(pk=run.pk).update(created_at=timezone.now() - timedelta(seconds=age_s))
    for index, (concurrency, tokens, ttft, failed) in enumerate(steps):
        BenchmarkStep.objects.create(
            run=run,
            index=index,
            concurrency=concurrency,
            output_tokens_per_s=tokens,
            ttft_ms_p50=ttft,
            requests=20,
            requests_ok=20 - failed,
            requests_failed=failed,
            has_errors=bool(failed),
        )
    return run


def tiny_configs() -> tuple[dict, dict]:
    """The config.json llm-compressor wrote for W4A16 (group 16) on the tiny Llama, and the same model unquantized;
    both in bf16 (the fixture model was float32, which the planner serves at 2 bytes but stores the quantized
    checkpoint's embeddings at 4)."""
    quantized_config = json.loads((FIXTURES / "tiny-w4a16-group16" / "config.json").read_text())
    quantized_config["dtype"] = "bfloat16"
    return {k: v for k, v in quantized_config.items() if k != "quantization_config"}, quantized_config


def config_dir(path: str, config: dict) -> None:
    Path(path).mkdir(parents=True, exist_ok=True)
    (Path(path) / "config.json").write_text(json.dumps(config))


@pytest.fixture
def base(settings, tmp_path):
    settings.MODEL_STORE = tmp_path / "models"
    return ModelArtifactFactory(
        host=HostFactory(name="store-box"),
        repo__repo_id="org/base",
        manifest={"files": [{"path": "model.safetensors", "size": 4000}, {"path": "config.json", "size": 100}]},
    )


def by_pk(table) -> dict[int, variants.Variant]:
    return {v.artifact.pk: v for v in table.variants}


def test_every_derived_artifact_with_how_it_was_made_and_its_quality_against_the_base(base, admin):
    gptq = quantized(base, "W4A16_GPTQ", manifest={"files": [{"path": "model.safetensors", "size": 1200}]})
    adapter = derive(base, {"method": "lora"}, kind=ModelArtifact.Kind.ADAPTER)
    merged = derive(base, {"method": "lora", "merged_from": "org/base-ft-3@x", "adapter_artifact": adapter.pk})
    merged_fp8 = quantized(merged, "FP8_DYNAMIC")
    quantized(base, "W4A16_RTN", status=ModelArtifact.Status.FAILED)  # a failed job's leftover: not a variant
    figure(base, "perplexity", 10.0)
    figure(gptq, "perplexity", 9.0, age_s=60)  # older: the newest figure on the same data counts
    figure(gptq, "perplexity", 11.0)
    accuracy(base, 0.80)
    accuracy(gptq, 0.72)
    figure(merged_fp8, "perplexity", 8.0)

    table = variants.variant_table(base, user=admin)

    rows = by_pk(table)
    assert list(rows) == [gptq.pk, adapter.pk, merged.pk, merged_fp8.pk]
    assert [(rows[a.pk].kind, rows[a.pk].made_by, rows[a.pk].depth) for a in (gptq, adapter, merged, merged_fp8)] == [
        ("quantized", "W4A16_GPTQ", 1),
        ("adapter", "lora", 1),
        ("merged", "lora", 1),
        ("quantized", "FP8_DYNAMIC", 2),
    ]
    assert rows[merged_fp8.pk].parent == merged
    assert table.base_size_bytes == 4100 and rows[gptq.pk].size_bytes == 1200
    perplexity = rows[gptq.pk].perplexity
    assert (perplexity.value, perplexity.base, perplexity.delta, perplexity.verdict) == (11.0, 10.0, 1.0, "worse")
    assert perplexity.delta_percent == pytest.approx(10.0)
    assert "context 128, stride 64" in perplexity.note
    acc = rows[gptq.pk].accuracy
    assert (acc.value, acc.base, acc.verdict) == (0.72, 0.80, "worse") and acc.delta == pytest.approx(-0.08)
    assert rows[merged_fp8.pk].perplexity.verdict == "better"  # lower perplexity than the base on the same tokens
    assert rows[adapter.pk].perplexity.value is None and rows[adapter.pk].perplexity.note == "Not evaluated."


def test_figures_compare_only_on_the_same_data_measured_the_same_way(base, admin):
    other_data, other_window, no_identity, matching = (quantized(base, "W4A16_GPTQ") for _ in range(4))
    figure(base, "perplexity", 10.0)
    figure(other_data, "perplexity", 12.0, sha=OTHER_SHA)
    figure(other_window, "perplexity", 12.0, context=256)
    figure(no_identity, "perplexity", 12.0, sha="")  # neither a dataset version nor the data's sha256
    figure(matching, "perplexity", 12.0, sha=OTHER_SHA, age_s=5)  # only on other data: the older one compares
    figure(matching, "perplexity", 10.5)
    accuracy(base, 0.5)
    accuracy(matching, 0.6, sha=OTHER_SHA)  # another task's data

    rows = by_pk(variants.variant_table(base, user=admin))

    for variant in (other_data, other_window):
        cell = rows[variant.pk].perplexity
        assert (cell.value, cell.delta, cell.verdict) == (12.0, None, None)
        assert cell.note.startswith("The base has no figure on the same data")
    assert rows[no_identity.pk].perplexity.value is None
    assert (rows[matching.pk].perplexity.value, rows[matching.pk].perplexity.delta) == (10.5, 0.5)
    assert rows[matching.pk].accuracy.delta is None


def test_benchmark_figures_at_the_highest_level_both_ran_cleanly_with_the_same_workload(base, admin):
    gptq = quantized(base, "W4A16_GPTQ")
    benchmark(base, [(1, 50.0, 40.0, 0), (4, 150.0, 60.0, 0), (8, 200.0, 90.0, 0)], age_s=100)
    benchmark(gptq, [(1, 80.0, 30.0, 0), (4, 300.0, 45.0, 0), (8, 500.0, 70.0, 3)], age_s=50)  # errors at 8
    benchmark(gptq, [(4, 999.0, 1.0, 0)], state=BenchmarkRun.State.FAILED)  # not finished
    benchmark(gptq, [(4, 999.0, 1.0, 0)], workload={"prompt_tokens": 2048, "output_tokens": 64})  # no base like it

    row = by_pk(variants.variant_table(base, user=admin))[gptq.pk]

    assert row.benchmark["level"] == "concurrency 4"
    tokens, ttft = row.tokens_per_s, row.ttft_ms_p50
    assert (tokens.value, tokens.base, tokens.delta, tokens.verdict) == (300.0, 150.0, 150.0, "better")
    assert (ttft.value, ttft.base, ttft.delta, ttft.verdict) == (45.0, 60.0, -15.0, "better")  # lower TTFT is better


def test_benchmark_without_a_comparable_base_run_shows_the_figure_and_why(base, admin):
    gptq = quantized(base, "W4A16_GPTQ")
    plain = quantized(base, "FP8_DYNAMIC")
    benchmark(gptq, [(4, 300.0, 45.0, 0)])
    benchmark(base, [(2, 150.0, 60.0, 0)])  # no common level
    benchmark(base, [(4, 150.0, 60.0, 0)], host=HostFactory(name="other-box"))  # another machine

    rows = by_pk(variants.variant_table(base, user=admin))

    assert (rows[gptq.pk].tokens_per_s.value, rows[gptq.pk].tokens_per_s.delta) == (300.0, None)
    assert "at a level both ran without errors" in rows[gptq.pk].tokens_per_s.note
    assert rows[plain.pk].tokens_per_s.note == "No finished benchmark of a deployment serving it."


def test_weight_memory_is_the_planners_from_config_json_or_blank_with_the_reason(base, admin):
    plain_config, quantized_config = tiny_configs()
    config_dir(base.path, plain_config)
    gptq = quantized(base, "W4A16_GPTQ")
    config_dir(gptq.path, quantized_config)
    elsewhere = quantized(base, "FP8_DYNAMIC")  # its files are on its host only
    adapter = derive(base, {"method": "lora"}, kind=ModelArtifact.Kind.ADAPTER)

    table = variants.variant_table(base, user=admin)
    rows = by_pk(table)

    planner = memory.weight_bytes(count_parameters(quantized_config), memory.stored_format(quantized_config))
    assert rows[gptq.pk].weight_bytes == planner < table.base_weight_bytes
    assert table.base_weight_bytes == count_parameters(plain_config).total * 2  # bf16 as served
    assert rows[elsewhere.pk].weight_bytes is None
    assert rows[elsewhere.pk].weight_note == "Its config.json is on store-box, not readable by the console."
    assert rows[adapter.pk].weight_note == "An adapter is served on its base model's weights."


def test_the_seeds_claims_measured_where_the_variants_exist(base, admin):
    plain_config, quantized_config = tiny_configs()
    config_dir(base.path, plain_config)
    awq = quantized(base, "W4A16_AWQ")
    config_dir(awq.path, quantized_config)
    gptq = quantized(base, "W4A16_GPTQ")
    accuracy(base, 0.80)
    accuracy(awq, 0.76)
    benchmark(base, [(4, 100.0, 60.0, 0)])
    benchmark(gptq, [(4, 180.0, 50.0, 0)])

    table = variants.variant_table(base, user=admin)
    awq_claim, gptq_claim = table.claims

    assert (awq_claim.scheme, awq_claim.artifact, awq_claim.missing) == ("W4A16_AWQ", awq.pk, [])
    assert awq_claim.measured["accuracy_ratio"] == pytest.approx(0.95)
    assert awq_claim.measured["memory_ratio"] == pytest.approx(
        by_pk(table)[awq.pk].weight_bytes / table.base_weight_bytes
    )
    assert awq_claim.claimed == {"accuracy_ratio": 0.89, "memory_ratio": 0.25}
    assert (gptq_claim.scheme, gptq_claim.artifact, gptq_claim.missing) == ("W4A16_GPTQ", gptq.pk, [])
    assert gptq_claim.measured["speedup"] == pytest.approx(1.8)
    assert gptq_claim.detail == "output tokens/s at concurrency 4"


def test_the_claims_say_what_is_missing(base, admin):
    awq = quantized(base, "W4A16_AWQ")  # no accuracy, no readable config.json
    merged = derive(base, {"method": "lora", "merged_from": "x@y"})
    quantized(merged, "W4A16_GPTQ")  # a quantized fine-tune is not the claim's comparison

    awq_claim, gptq_claim = variants.variant_table(base, user=admin).claims

    assert awq_claim.artifact == awq.pk and awq_claim.measured == {}
    assert awq_claim.missing == [
        "the accuracy of the base and of the variant on the same task data",
        "the weight memory of both (their config.json readable by the console)",
    ]
    assert gptq_claim.artifact is None and gptq_claim.missing == ["a W4A16_GPTQ variant of this model"]


# -- the page and the API ----------------------------------------------------------------------------------------
def test_the_page_shows_the_rows_and_deploy_this_one_to_those_who_may_deploy(client, base, admin, engineer):
    gptq = quantized(base, "W4A16_GPTQ")
    pending = quantized(base, "FP8_DYNAMIC", status=ModelArtifact.Status.DOWNLOADING)
    figure(base, "perplexity", 10.0)
    figure(gptq, "perplexity", 12.5)
    url = f"/quality/variants/{base.pk}/"

    client.force_login(admin)
    page = client.get(url).content.decode()
    assert f'data-deploy="{gptq.pk}"' in page and f"/deployments/new/?artifact={gptq.pk}" in page
    assert f'data-deploy="{pending.pk}"' not in page  # not ready: nothing to deploy yet
    assert 'data-verdict="worse"' in page and "+2.500 (+25.0 %)" in page and "text-danger" in page
    assert "a W4A16_AWQ variant of this model" in page
    form = client.get(f"/deployments/new/?artifact={gptq.pk}").content.decode()
    assert f'value="{gptq.pk}" selected' in form  # the deploy form opens with this variant chosen

    client.force_login(engineer)  # views models, holds no deploy
    page = client.get(url).content.decode()
    assert f'data-artifact="{gptq.pk}"' in page
    assert "Deploy this one" not in page and "data-deploy" not in page


def test_the_page_of_a_model_nothing_was_made_from(client, base, auditor):
    client.force_login(auditor)
    response = client.get(f"/quality/variants/{base.pk}/")
    assert response.status_code == 200
    assert 'id="variants-empty"' in response.content.decode()
    detail = client.get(f"/models/{base.pk}/").content.decode()
    assert f'href="/quality/variants/{base.pk}/"' in detail


def test_the_api_returns_the_rows(client, base, engineer):
    gptq = quantized(base, "W4A16_GPTQ")
    adapter = derive(base, {"method": "lora"}, kind=ModelArtifact.Kind.ADAPTER)
    figure(base, "perplexity", 10.0)
    figure(gptq, "perplexity", 11.0)
    client.force_login(engineer)

    body = client.get(f"/api/v1/models/{base.pk}/variants/").json()

    assert body["base"] == base.pk and body["can_deploy"] is False
    row = body["variants"][0]
    assert row["artifact"] == gptq.pk and row["kind"] == "quantized" and row["scheme"] == "W4A16_GPTQ"
    assert row["perplexity"] == {
        "value": 11.0,
        "base": 10.0,
        "delta": 1.0,
        "delta_percent": 10.0,
        "verdict": "worse",
        "note": "shipped sample · context 128, stride 64",
    }
    assert row["deploy"] == "/api/v1/deployments/"
    assert body["variants"][1]["deploy"] == f"/api/v1/adapters/{adapter.pk}/deploy/"
    assert [c["scheme"] for c in body["claims"]] == ["W4A16_AWQ", "W4A16_GPTQ"]
    assert client.get("/api/v1/models/999999/variants/").status_code == 404


def test_deploying_a_quantized_variant_needs_deploy(client, tmp_path, admin, engineer):
    host = Host.objects.create(name="serve-box", runtime=Host.Runtime.PROCESS, status=Host.Status.ONLINE)
    Gpu.objects.create(host=host, index=0, name="GPU", memory_total=16 * 10**9, health=Gpu.Health.OK)
    base = ModelArtifactFactory(host=host, path=str(write_llama_dir(tmp_path / "base")))
    variant = quantized(base, "FP8_DYNAMIC", path=str(write_llama_dir(tmp_path / "fp8")))
    body = {
        "name": "fp8-try",
        "launch": False,
        "spec_input": {"artifact": variant.pk, "max_input_tokens": 128, "max_total_tokens": 256},
    }

    client.force_login(engineer)
    assert client.post("/api/v1/deployments/", body, content_type="application/json").status_code == 403
    assert not Deployment.objects.filter(name="fp8-try").exists()
    client.force_login(admin)
    response = client.post("/api/v1/deployments/", body, content_type="application/json")
    assert response.status_code == 201, response.content
    assert Deployment.objects.get(name="fp8-try").spec.artifact == variant

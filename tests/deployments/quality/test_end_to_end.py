"""The real programs through the console (issue 18): a quantize job runs workers/jobs/quantize.py in the ML
environment on the tiny random Llama (FP8 dynamic: no calibration, the quickest scheme) through its handler and
the process runtime, and the console registers a compressed-tensors model with its lineage that the next
quantize refuses as already quantized; an evaluate job then runs workers/jobs/evaluate.py on the source and the
quantized model over the same tokens of the shipped text sample, and stores a comparable perplexity for each.

Timings on 2 shared cores: the tiny model ~10 s once (shared with other tests); quantize and evaluate ~32 s."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from console.errors import ApplicationError
from deployments.models import EvalResult, ModelArtifact
from deployments.quality import services
from tests.conftest import need
from tests.factories import HostFactory
from tests.support.deploy_fixtures import ready_artifact, tiny_model_in_store
from tests.support.serve_process import ml_python
from workers import runner
from workers.jobs.manifest import verify_manifest

pytestmark = pytest.mark.django_db


def test_quantize_then_evaluate_with_the_real_programs(settings, tmp_path, engineer):
    need(ml_python() is not None, "the ML environment (make ml-env) runs the quantize and evaluate programs")
    settings.CHECKPOINT_DIR = tmp_path / "work"
    source = ready_artifact(HostFactory(name="cpu-box"), tiny_model_in_store())
    job = services.quantize_start(actor=engineer, source=source, options={"scheme": "FP8_DYNAMIC"})
    home = services.quantize_output_home(source, job)
    try:
        outcome = runner.run(job.pk)
        job.refresh_from_db()
        assert outcome == "succeeded", (job.failure_detail, list(job.lines.values_list("text", flat=True))[-20:])
        quantized = ModelArtifact.objects.get(produced_by=job)
        assert Path(quantized.path) == home and verify_manifest(home) == []
        config = json.loads((home / "config.json").read_text())
        assert config["quantization_config"]["quant_method"] == "compressed-tensors"
        lineage = quantized.lineage
        assert lineage["scheme"] == "FP8_DYNAMIC" and "FP8_DYNAMIC" in lineage["recipe"]
        assert lineage["calibration"] is None and lineage["versions"]["llmcompressor"]
        assert lineage["seconds"] > 0 and lineage["peak_memory_bytes"] > 0
        with pytest.raises(ApplicationError) as caught:
            services.quantize_start(actor=engineer, source=quantized, options={"scheme": "FP8_DYNAMIC"})
        assert caught.value.field == "source" and "already quantized" in caught.value.message

        evaluation = services.evaluate_start(
            actor=engineer,
            artifacts=[source, quantized],
            perplexity={"context_length": 64, "stride": 32, "max_tokens": 512},
        )
        outcome = runner.run(evaluation.pk)
        evaluation.refresh_from_db()
        assert outcome == "succeeded", evaluation.failure_detail
        rows = {row.artifact_id: row for row in EvalResult.objects.filter(job=evaluation)}
        assert set(rows) == {source.pk, quantized.pk}
        base, fp8 = rows[source.pk], rows[quantized.pk]
        assert base.comparable_key == fp8.comparable_key and base.tokens == fp8.tokens > 0
        assert base.dataset_version is None and (base.context_length, base.stride) == (64, 32)
        assert all(math.isfinite(row.value) and row.value > 1 and row.tokens_per_s for row in rows.values())
    finally:
        shutil.rmtree(home.parent, ignore_errors=True)

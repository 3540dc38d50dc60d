"""Issue 17, compare: runs side by side, steps lined up by load, every figure's change against the first run and a
verdict that knows which way the figure improves, a noise band within which nothing changed, and a step with
failed requests never judged better; the API's compare/ route sees only runs the caller may see."""

from __future__ import annotations

import pytest

from deployments.benchmarks.compare import BETTER, MIXED, NOISE_PERCENT, SAME, WORSE, compare_runs, verdict
from deployments.models import BenchmarkRun, BenchmarkStep
from tests.factories import DeploymentSpecFactory

URL = "/api/v1/benchmarks/compare/"


def step(concurrency, **figures) -> dict:
    base = {
        "concurrency": concurrency,
        "output_tokens_per_s": 100.0 * concurrency,
        "total_tokens_per_s": 150.0 * concurrency,
        "requests_per_s": 1.0 * concurrency,
        "ttft_ms_p50": 50.0,
        "ttft_ms_p99": 80.0,
        "itl_ms_p50": 10.0,
        "e2e_ms_p50": 500.0,
        "requests_failed": 0,
        "has_errors": False,
    }
    return {**base, **figures}


def run(pk, *steps, **header) -> dict:
    return {"id": pk, "workload": {"prompt_tokens": 128, "output_tokens": 64}, "steps": list(steps), **header}


def cell(comparison, row: int, column: int, figure: str) -> dict:
    return comparison["rows"][row]["steps"][column]["figures"][figure]


def test_each_figure_is_judged_in_its_own_direction():
    base = run(1, step(4))
    after = run(2, step(4, output_tokens_per_s=500.0, ttft_ms_p50=40.0, itl_ms_p50=12.0, requests_per_s=3.0))
    result = compare_runs([base, after]).as_dict()
    throughput = cell(result, 0, 1, "output_tokens_per_s")
    assert throughput["verdict"] == BETTER and throughput["delta"] == 100.0 and throughput["delta_percent"] == 25.0
    assert cell(result, 0, 1, "ttft_ms_p50")["verdict"] == BETTER  # 20 % less time to the first token
    assert cell(result, 0, 1, "itl_ms_p50")["verdict"] == WORSE  # 20 % more between tokens
    assert cell(result, 0, 1, "requests_per_s")["verdict"] == WORSE
    assert cell(result, 0, 0, "output_tokens_per_s") == {
        "value": 400.0, "delta": None, "delta_percent": None, "verdict": None, "reason": ""
    }  # fmt: skip
    assert result["runs"][1]["verdict"] == MIXED and result["runs"][1]["counts"] == {BETTER: 2, WORSE: 2, SAME: 4}
    assert {f["name"]: f["better"] for f in result["figures"]}["e2e_ms_p99"] == "lower"


@pytest.mark.parametrize(
    ("base", "value", "expected"),
    [(100.0, 104.9, SAME), (100.0, 95.1, SAME), (100.0, 105.5, BETTER), (100.0, 94.0, WORSE), (0.0, 0.0, SAME)],
)
def test_a_change_within_the_noise_band_is_the_same(base, value, expected):
    assert NOISE_PERCENT == 5.0
    assert verdict("total_tokens_per_s", base, value).verdict == expected


def test_failed_requests_are_judged_lower_better_even_from_zero():
    judged = verdict("requests_failed", 0, 3)
    assert judged.verdict == WORSE and judged.delta == 3 and judged.delta_percent is None
    assert verdict("requests_failed", 4, 0).verdict == BETTER


def test_a_step_with_errors_is_never_better_but_can_be_worse():
    base = run(1, step(16))
    # Faster-looking latencies and more tokens/s, but some requests failed: the successful ones alone are measured.
    flaky = run(2, step(16, ttft_ms_p50=20.0, output_tokens_per_s=2000.0, itl_ms_p50=30.0, requests_failed=5,
                        has_errors=True, errors={"http_503": 5}))  # fmt: skip
    result = compare_runs([base, flaky]).as_dict()
    ttft = cell(result, 0, 1, "ttft_ms_p50")
    assert ttft["verdict"] == SAME and "failed requests" in ttft["reason"] and ttft["delta"] == -30.0
    assert cell(result, 0, 1, "output_tokens_per_s")["verdict"] == SAME
    assert (
        cell(result, 0, 1, "itl_ms_p50")["verdict"] == WORSE
        and cell(result, 0, 1, "requests_failed")["verdict"] == WORSE
    )
    column = result["rows"][0]["steps"][1]
    assert column["has_errors"] is True and column["errors"] == {"http_503": 5}
    assert result["runs"][1]["verdict"] == WORSE and result["runs"][1]["counts"][BETTER] == 0


def test_steps_line_up_by_load_and_a_missing_one_is_shown_absent():
    base = run(1, step(1), step(4), step(16))
    after = run(2, step(4, output_tokens_per_s=800.0), step(64), {"rate": 2.0, "output_tokens_per_s": 90.0})
    third = run(3, step(1), step(4), step(16), deployment_name="other", spec_version=3)
    result = compare_runs([base, after, third]).as_dict()
    assert [(row["load"], row["level"], row["label"]) for row in result["rows"]] == [
        ("concurrency", 1.0, "concurrency 1"),
        ("concurrency", 4.0, "concurrency 4"),
        ("concurrency", 16.0, "concurrency 16"),
        ("concurrency", 64.0, "concurrency 64"),
        ("rate", 2.0, "2 requests/s"),
    ]
    assert [column["present"] for column in result["rows"][0]["steps"]] == [True, False, True]
    assert cell(result, 1, 1, "output_tokens_per_s")["verdict"] == BETTER  # 800 against 400 at concurrency 4
    assert cell(result, 3, 1, "output_tokens_per_s")["verdict"] is None  # the base never ran 64
    assert result["runs"][1]["verdict"] == BETTER and result["runs"][1]["common_steps"] == 1
    assert result["runs"][2]["verdict"] == SAME and result["runs"][2]["deployment_name"] == "other"
    assert result["runs"][0]["verdict"] is None


def test_runs_of_different_workloads_carry_a_note_and_runs_without_common_loads_are_incomparable():
    base = run(1, step(1))
    longer = {**run(2, step(8)), "workload": {"prompt_tokens": 2048, "output_tokens": 64}}
    result = compare_runs([base, longer]).as_dict()
    assert result["runs"][1]["verdict"] == "incomparable"
    assert any("different workload" in note for note in result["notes"])


@pytest.mark.django_db
def test_the_api_compares_stored_runs_the_caller_may_see(api, admin, engineer, nobody):
    spec = DeploymentSpecFactory(current=True, deployment__name="cmp")
    runs = []
    for number, throughput in enumerate((400.0, 480.0)):
        stored = BenchmarkRun.objects.create(deployment=spec.deployment, spec=spec, workload={"levels": [4]})
        BenchmarkStep.objects.create(run=stored, index=0, concurrency=4, output_tokens_per_s=throughput,
                                     ttft_ms_p50=50.0 - 10 * number, requests=10, requests_ok=10)  # fmt: skip
        runs.append(stored)
    ids = f"{runs[0].pk},{runs[1].pk}"
    body = api(engineer).get(f"{URL}?runs={ids}", expected=200).data
    assert [r["id"] for r in body["runs"]] == [runs[0].pk, runs[1].pk] and body["runs"][0]["spec_version"] == 1
    assert body["rows"][0]["steps"][1]["figures"]["output_tokens_per_s"]["verdict"] == BETTER
    assert body["runs"][1]["verdict"] == BETTER
    assert "runs" in api(engineer).get(f"{URL}?runs={runs[0].pk}", expected=400).data
    assert "runs" in api(engineer).get(f"{URL}?runs=1,2,3,4,5,6,7", expected=400).data
    api(engineer).get(f"{URL}?runs={ids},{2**31 - 1}", expected=404)
    api(engineer).get(f"{URL}?runs={ids},abc", expected=404)
    api(nobody).get(f"{URL}?runs={ids}", expected=403)  # no view at all: refused before any run is read

"""The tuning loop's suggestion engine on hand-built figures: each rule fires on the figures that show its
bottleneck, stays quiet on those that do not, proposes only the backend's own fields, and never a change the
backend's checks or the planner refuse."""

from __future__ import annotations

import json

import pytest

from deployments.backends import get_backend
from deployments.benchmarks.suggestions import (
    FP8_KV,
    HostView,
    PlannerView,
    StepFigures,
    advise,
    sizing_planner,
    suggest,
)
from deployments.sizing.metadata import ModelMetadata
from tests.support.fixtures import MODEL_CONFIGS

GB = 10**9


class FakePlanner:
    """KV tokens grow with the memory share and double with an fp8 cache; `refuse` says which values do not fit."""

    def __init__(self, kv_tokens: int = 100_000, refuse=lambda values: False, limits: dict | None = None):
        self.kv_tokens, self.refuse, self.limits, self.asked = kv_tokens, refuse, limits or {}, []

    def __call__(self, values: dict) -> PlannerView:
        self.asked.append(values)
        if self.refuse(values):
            return PlannerView(fits=False, reason="needs 90 GB per GPU; 80 GB free")
        share = values.get("cuda_memory_fraction") or values.get("gpu_memory_utilization") or 0.9
        tokens = int(self.kv_tokens * share / 0.9) * (2 if values.get("kv_cache_dtype") else 1)
        tokens *= values.get("num_shard") or 1
        defaults = {"max_batch_prefill_tokens": 4096, "max_total_tokens": 4096, "max_input_tokens": 4095}
        if values.get("backend") == "vllm":
            defaults = {"max_num_seqs": 256, "max_num_batched_tokens": 8192, "max_model_len": 8192}
        return PlannerView(True, "", tokens, {**defaults, **self.limits})


def calm(**extra) -> list[dict]:
    """A sweep with no bottleneck: short queue, room in the KV cache, throughput rising with load."""
    base = {"ttft_ms_p50": 40.0, "itl_ms_p50": 12.0, "prompt_tokens_mean": 200, "queue_size_mean": 0.1}
    return [
        {**base, "concurrency": 1, "output_tokens_per_s": 80.0, "kv_cache_usage_max": 0.05, "batch_tokens_max": 300},
        {**base, "concurrency": 16, "output_tokens_per_s": 900.0, "kv_cache_usage_max": 0.3, "batch_tokens_max": 5000}
        | extra,
    ]


def queued(**extra) -> list[dict]:
    """The heaviest step waits in the queue with a full KV cache."""
    peak = {
        "concurrency": 64,
        "ttft_ms_p50": 900.0,
        "itl_ms_p50": 20.0,
        "prompt_tokens_mean": 300,
        "queue_size_mean": 12.0,
        "queue_time_ms_mean": 700.0,
        "batch_size_max": 40,
        "kv_cache_usage_max": 0.97,
        "batch_tokens_max": 88_000,
        "output_tokens_per_s": 1500.0,
    }
    return [calm()[0], peak | extra]


def tgi(**spec) -> dict:
    return {"backend": "tgi", **spec}


def vllm(**spec) -> dict:
    return {"backend": "vllm", **spec}


def rules(suggestions) -> list[str]:
    return [s.rule for s in suggestions]


def assert_own_fields(backend: str, suggestions) -> None:
    allowed = get_backend(backend).spec_fields | {"num_shard"}
    for suggestion in suggestions:
        assert set(suggestion.change) <= allowed, suggestion


# --- no bottleneck -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [tgi(cuda_memory_fraction=0.8), vllm(gpu_memory_utilization=0.8)])
def test_calm_figures_give_no_suggestion_and_say_so(spec):
    advice = advise(calm(), spec, FakePlanner())
    assert advice.suggestions == []
    assert "No bottleneck" in advice.notes[0] and "concurrency 16" in advice.notes[0]


def test_no_steps_says_so():
    assert advise([], tgi(), FakePlanner()).notes


# --- queue long while memory allows a larger batch -----------------------------------------------------------


def test_tgi_queue_with_full_kv_raises_cuda_memory_fraction():
    planner = FakePlanner(kv_tokens=90_000)
    found = suggest(queued(), tgi(cuda_memory_fraction=0.8), planner)
    [memory] = [s for s in found if s.rule == "queue_memory_headroom"]
    assert memory.change == {"cuda_memory_fraction": 1.0}
    assert "12 requests" in memory.why and "97 %" in memory.why
    assert "80,000" in memory.effect and "100,000" in memory.effect  # the planner's KV tokens before and after
    assert_own_fields("tgi", found)


def test_vllm_queue_with_full_kv_raises_gpu_memory_utilization():
    found = suggest(queued(), vllm(gpu_memory_utilization=0.8), FakePlanner())
    [memory] = [s for s in found if s.rule == "queue_memory_headroom"]
    assert memory.change == {"gpu_memory_utilization": 0.95}
    assert "cuda_memory_fraction" not in json.dumps([s.change for s in found])
    assert_own_fields("vllm", found)


def test_planner_refusing_the_largest_share_gives_a_smaller_one():
    planner = FakePlanner(refuse=lambda v: (v.get("cuda_memory_fraction") or 0) > 0.9)
    advice = advise(queued(), tgi(cuda_memory_fraction=0.8), planner)
    [memory] = [s for s in advice.suggestions if s.rule == "queue_memory_headroom"]
    assert memory.change == {"cuda_memory_fraction": 0.9}
    assert any("cuda_memory_fraction 1.0" in note and "does not fit" in note for note in advice.notes)


def test_planner_refusing_every_share_gives_none():
    planner = FakePlanner(refuse=lambda v: (v.get("gpu_memory_utilization") or 0) > 0.8)
    found = suggest(queued(), vllm(gpu_memory_utilization=0.8), planner)
    assert "queue_memory_headroom" not in rules(found)


def test_queue_without_full_kv_does_not_ask_for_memory():
    found = suggest(
        queued(kv_cache_usage_max=0.4, batch_tokens_max=20_000), tgi(cuda_memory_fraction=0.8), FakePlanner()
    )
    assert "queue_memory_headroom" not in rules(found) and "fp8_kv_cache" not in rules(found)


def test_tgi_kv_bound_read_from_batch_tokens_against_the_planner():
    # No kv_cache_usage from TGI: its batch tokens against the planner's max_batch_total_tokens tell.
    steps = queued(kv_cache_usage_max=None, batch_tokens_max=78_000)
    found = suggest(steps, tgi(cuda_memory_fraction=0.8), FakePlanner(kv_tokens=90_000))  # 80,000 tokens now
    assert "queue_memory_headroom" in rules(found)
    steps = queued(kv_cache_usage_max=None, batch_tokens_max=30_000)
    assert "queue_memory_headroom" not in rules(suggest(steps, tgi(cuda_memory_fraction=0.8), FakePlanner()))


def test_full_share_already_gives_no_memory_suggestion():
    found = suggest(queued(), tgi(cuda_memory_fraction=1.0), FakePlanner())
    assert "queue_memory_headroom" not in rules(found)


def test_vllm_queue_at_max_num_seqs_raises_it():
    steps = queued(kv_cache_usage_max=0.5, batch_size_max=256)
    found = suggest(steps, vllm(max_num_seqs=256), FakePlanner())
    [seqs] = [s for s in found if s.rule == "queue_more_sequences"]
    assert seqs.change == {"max_num_seqs": 1024}
    assert "256" in seqs.why


def test_vllm_max_num_seqs_not_raised_past_batched_tokens():
    # vLLM's check: max_num_batched_tokens >= max_num_seqs; 4x and 2x break it, 1.5x (384) passes.
    steps = queued(kv_cache_usage_max=0.5, batch_size_max=256)
    advice = advise(steps, vllm(max_num_seqs=256, max_num_batched_tokens=400), FakePlanner())
    [seqs] = [s for s in advice.suggestions if s.rule == "queue_more_sequences"]
    assert seqs.change == {"max_num_seqs": 384}
    assert any("Max batched tokens" in note for note in advice.notes)


def test_vllm_batch_below_max_num_seqs_is_not_the_cap():
    steps = queued(kv_cache_usage_max=0.5, batch_size_max=40)
    assert "queue_more_sequences" not in rules(suggest(steps, vllm(max_num_seqs=256), FakePlanner()))


# --- the KV cache is the limit: fp8 -----------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [tgi(), vllm()])
def test_full_kv_cache_with_a_queue_suggests_fp8(spec):
    found = suggest(queued(), spec, FakePlanner())
    [fp8] = [s for s in found if s.rule == "fp8_kv_cache"]
    assert fp8.change == {"kv_cache_dtype": FP8_KV}
    assert "+100 %" in fp8.effect
    get_backend(spec["backend"]).check_spec(
        {"quantize": "", "dtype": "", "extra_env": {}, "cuda_memory_fraction": 1.0, **spec, **fp8.change}, {}
    )


def test_fp8_not_suggested_when_already_fp8():
    assert "fp8_kv_cache" not in rules(suggest(queued(), vllm(kv_cache_dtype="fp8_e5m2"), FakePlanner()))


def test_fp8_refused_by_the_planner_is_not_suggested():
    advice = advise(queued(), tgi(), FakePlanner(refuse=lambda v: bool(v.get("kv_cache_dtype"))))
    assert "fp8_kv_cache" not in rules(advice.suggestions)
    assert any("kv_cache_dtype" in note for note in advice.notes)


def test_no_queue_no_fp8_even_with_a_full_cache():
    steps = queued(queue_size_mean=0.2, queue_time_ms_mean=5.0)
    assert "fp8_kv_cache" not in rules(suggest(steps, tgi(), FakePlanner()))


# --- prefill dominates TTFT at long prompts ---------------------------------------------------------------------


def long_prompts(**extra) -> list[dict]:
    peak = {
        "concurrency": 16,
        "prompt_tokens_mean": 3000,
        "ttft_ms_p50": 1200.0,
        "itl_ms_p50": 15.0,
        "prefill_time_ms_mean": 1000.0,
        "queue_size_mean": 0.5,
        "output_tokens_per_s": 700.0,
    }
    return [calm()[0], peak | extra]


def test_tgi_prefill_dominating_raises_max_batch_prefill_tokens():
    found = suggest(long_prompts(), tgi(), FakePlanner())
    [prefill] = [s for s in found if s.rule == "prefill_budget"]
    assert prefill.change == {"max_batch_prefill_tokens": 16384}
    assert "1,000 ms" in prefill.why and "48000" in prefill.why


def test_tgi_prefill_capped_by_max_batch_total_tokens():
    # TGI refuses a prefill budget above max_batch_total_tokens: the planner's 10,000 KV tokens cap it.
    found = suggest(long_prompts(), tgi(max_batch_prefill_tokens=4096), FakePlanner(kv_tokens=9_000))
    [prefill] = [s for s in found if s.rule == "prefill_budget"]
    assert prefill.change == {"max_batch_prefill_tokens": 10_000}


def test_vllm_prefill_dominating_raises_max_num_batched_tokens():
    found = suggest(long_prompts(), vllm(max_num_batched_tokens=2048), FakePlanner())
    [prefill] = [s for s in found if s.rule == "prefill_budget"]
    assert prefill.change == {"max_num_batched_tokens": 8192}
    assert_own_fields("vllm", found)


def test_prefill_planner_refusing_big_budget_takes_smaller():
    planner = FakePlanner(refuse=lambda v: (v.get("max_num_batched_tokens") or 0) > 4096)
    found = suggest(long_prompts(), vllm(max_num_batched_tokens=2048), planner)
    [prefill] = [s for s in found if s.rule == "prefill_budget"]
    assert prefill.change == {"max_num_batched_tokens": 4096}


@pytest.mark.parametrize(
    "extra",
    [
        {"prompt_tokens_mean": 300},  # short prompts: decode, not prefill
        {"prefill_time_ms_mean": 100.0},  # prefill is a small part of the TTFT
        {"concurrency": 1},  # one prompt at a time fits the budget already
    ],
)
def test_prefill_rule_stays_quiet(extra):
    assert "prefill_budget" not in rules(suggest(long_prompts(**extra), tgi(), FakePlanner()))


def test_prefill_judged_from_ttft_and_itl_without_server_timing():
    steps = long_prompts(prefill_time_ms_mean=None)
    assert "prefill_budget" in rules(suggest(steps, tgi(), FakePlanner()))
    steps = long_prompts(prefill_time_ms_mean=None, ttft_ms_p50=100.0)
    assert "prefill_budget" not in rules(suggest(steps, tgi(), FakePlanner()))


# --- one GPU saturated, a peer free: shard ------------------------------------------------------------------


def saturated(**extra) -> list[dict]:
    low = {"concurrency": 16, "output_tokens_per_s": 1000.0, "gpu_utilization_max": 0.8, "queue_size_mean": 0.1}
    high = {"concurrency": 64, "output_tokens_per_s": 1040.0, "gpu_utilization_max": 0.98, "queue_size_mean": 0.5}
    return [low, high | extra]


@pytest.mark.parametrize("spec", [tgi(), vllm()])
def test_saturated_gpu_with_a_free_peer_shards(spec):
    found = suggest(saturated(), spec, FakePlanner(), host=HostView(free_peer_gpus=1, num_heads=32, num_kv_heads=8))
    [shard] = [s for s in found if s.rule == "shard_onto_peer"]
    assert shard.change == {"num_shard": 2}
    assert "98 %" in shard.why and "1,000" in shard.why and "1,040" in shard.why


def test_shard_count_divides_the_heads():
    # 3 GPUs do not split 32 heads: from 2 with three free peers the next count that does is 4; with one, none.
    host = HostView(free_peer_gpus=3, num_heads=32, num_kv_heads=8)
    [shard] = [
        s for s in suggest(saturated(), tgi(num_shard=2), FakePlanner(), host=host) if s.rule == "shard_onto_peer"
    ]
    assert shard.change == {"num_shard": 4}
    host = HostView(free_peer_gpus=1, num_heads=32, num_kv_heads=8)
    assert "shard_onto_peer" not in rules(suggest(saturated(), tgi(num_shard=2), FakePlanner(), host=host))


def test_vllm_shard_checked_against_the_checkpoint_heads():
    # The backend's own check reads the checkpoint's heads even when the host view does not know them.
    checkpoint = {"config": {"num_attention_heads": 28}}
    found = suggest(
        saturated(), vllm(num_shard=1), FakePlanner(), checkpoint=checkpoint, host=HostView(free_peer_gpus=2)
    )
    [shard] = [s for s in found if s.rule == "shard_onto_peer"]
    assert shard.change == {"num_shard": 2}
    advice = advise(
        saturated(), vllm(num_shard=2), FakePlanner(), checkpoint=checkpoint, host=HostView(free_peer_gpus=1)
    )
    assert "shard_onto_peer" not in rules(advice.suggestions)
    assert any("attention heads" in note for note in advice.notes)


@pytest.mark.parametrize(
    ("steps", "host", "spec"),
    [
        (saturated(), HostView(free_peer_gpus=0), tgi()),  # no free peer
        (saturated(gpu_utilization_max=0.6), HostView(free_peer_gpus=1), tgi()),  # GPU not saturated
        (saturated(output_tokens_per_s=1900.0), HostView(free_peer_gpus=1), tgi()),  # throughput still rising
        (saturated(), HostView(free_peer_gpus=1), tgi(gpu_indexes=[0])),  # GPUs chosen by hand
    ],
)
def test_shard_rule_stays_quiet(steps, host, spec):
    assert "shard_onto_peer" not in rules(suggest(steps, spec, FakePlanner(), host=host))


def test_shard_refused_by_the_planner():
    planner = FakePlanner(refuse=lambda v: (v.get("num_shard") or 1) > 1)
    found = suggest(saturated(), vllm(), planner, host=HostView(free_peer_gpus=1))
    assert "shard_onto_peer" not in rules(found)


# --- requests refused for their length ----------------------------------------------------------------------


def too_long(status: str, **extra) -> list[dict]:
    peak = {"concurrency": 4, "prompt_tokens_max": 6000, "output_tokens_max": 500, "errors": {status: 7}}
    return [calm()[0], peak | extra]


def test_tgi_length_rejections_raise_input_and_total_tokens():
    found = suggest(too_long("http_422"), tgi(), FakePlanner())
    [length] = [s for s in found if s.rule == "longer_requests"]
    assert length.change == {"max_input_tokens": 6668, "max_total_tokens": 7168, "max_batch_prefill_tokens": 6668}
    assert "7 requests" in length.why and "6000" in length.why
    assert_own_fields("tgi", found)


def test_vllm_length_rejections_raise_max_model_len():
    found = suggest(too_long("http_400"), vllm(max_model_len=4096), FakePlanner())
    [length] = [s for s in found if s.rule == "longer_requests"]
    assert length.change == {"max_model_len": 7168}


def test_vllm_length_past_the_model_context_is_not_suggested():
    checkpoint = {"config": {"max_position_embeddings": 4096}}
    advice = advise(too_long("http_400"), vllm(max_model_len=4096), FakePlanner(), checkpoint=checkpoint)
    assert "longer_requests" not in rules(advice.suggestions)
    assert any("longer than the model's context" in note for note in advice.notes)


def test_length_refused_by_the_planner_is_not_suggested():
    planner = FakePlanner(refuse=lambda v: (v.get("max_total_tokens") or 0) > 4096)
    assert "longer_requests" not in rules(suggest(too_long("http_422"), tgi(), planner))


def test_other_errors_are_not_read_as_length():
    assert "longer_requests" not in rules(suggest(too_long("http_503"), tgi(), FakePlanner()))
    # Prompts within the limits: the 422s had another cause.
    steps = too_long("http_422", prompt_tokens_max=1000, output_tokens_max=100)
    assert "longer_requests" not in rules(suggest(steps, tgi(), FakePlanner()))


# --- the real planner ---------------------------------------------------------------------------------------


def llama_8b() -> ModelMetadata:
    return ModelMetadata(config=json.loads((MODEL_CONFIGS / "llama-3.1-8b-instruct.json").read_text()), source="llama")


def test_sizing_planner_grows_the_kv_cache_with_the_share_and_fp8():
    plan = sizing_planner(llama_8b(), gpu_memory_bytes=80 * GB)
    half, full = plan(tgi(cuda_memory_fraction=0.5)), plan(tgi(cuda_memory_fraction=1.0))
    fp8 = plan(tgi(cuda_memory_fraction=0.5, kv_cache_dtype=FP8_KV))
    assert half.fits and full.kv_tokens > 2 * half.kv_tokens
    assert fp8.kv_tokens == pytest.approx(2 * half.kv_tokens, rel=0.01)
    assert not plan(tgi(cuda_memory_fraction=0.2)).fits  # the weights alone take more than 20 % of 80 GB
    low, high = plan(vllm(gpu_memory_utilization=0.5)), plan(vllm(gpu_memory_utilization=0.9))
    assert low.fits and high.kv_tokens > low.kv_tokens and low.limits["max_num_seqs"]
    assert not plan(vllm(gpu_memory_utilization=0.12)).fits


def test_engine_with_the_sizing_planner_takes_only_what_fits():
    # On a 24 GB GPU vLLM cannot have 0.95 of it (its CUDA context and the memory it keeps free come on top): the
    # planner refuses that and the engine offers 0.9, which it takes.
    plan = sizing_planner(llama_8b(), gpu_memory_bytes=24 * GB)
    advice = advise(queued(), vllm(gpu_memory_utilization=0.8, max_model_len=8192), plan)
    [memory] = [s for s in advice.suggestions if s.rule == "queue_memory_headroom"]
    assert memory.change == {"gpu_memory_utilization": 0.9}
    assert any("gpu_memory_utilization 0.95" in note and "does not fit" in note for note in advice.notes)
    assert "fp8_kv_cache" in rules(advice.suggestions)


def test_tgi_length_past_the_model_context_is_refused_by_the_planner():
    config = json.loads((MODEL_CONFIGS / "deepseek-llm-7b-base.json").read_text())  # a 4,096-token context
    plan = sizing_planner(ModelMetadata(config=config, source="deepseek"), gpu_memory_bytes=80 * GB)
    advice = advise(too_long("http_422"), tgi(max_input_tokens=2048, max_total_tokens=4096), plan)
    assert "longer_requests" not in rules(advice.suggestions)
    assert any("exceeds the model's context" in note for note in advice.notes)
    steps = too_long("http_422", prompt_tokens_max=3000, output_tokens_max=500)
    [length] = [
        s
        for s in suggest(steps, tgi(max_input_tokens=2048, max_total_tokens=4096), plan)
        if s.rule == "longer_requests"
    ]
    # TGI's default prefill budget (4,096) already holds the longer prompt: it is left as it is.
    assert length.change == {"max_input_tokens": 3596, "max_total_tokens": 4096}


def test_tgi_shard_count_the_planner_refuses_is_not_suggested():
    # llama 8B has 32 heads: TGI cannot shard it over 3 GPUs, and the planner says so.
    plan = sizing_planner(llama_8b(), gpu_memory_bytes=80 * GB)
    advice = advise(saturated(), tgi(num_shard=2), plan, host=HostView(free_peer_gpus=1))
    assert "shard_onto_peer" not in rules(advice.suggestions)
    assert any("num_shard 3 is not allowed" in note for note in advice.notes)
    found = suggest(saturated(), tgi(num_shard=1), plan, host=HostView(free_peer_gpus=1))
    assert [s.change for s in found if s.rule == "shard_onto_peer"] == [{"num_shard": 2}]


def test_step_figures_read_from_stored_figures():
    step = StepFigures.from_dict({"ttft_ms_p50": 12.5, "has_errors": False, "window_s": 30.0, "concurrency": 4})
    assert (step.ttft_ms_p50, step.concurrency, step.queue_size_mean) == (12.5, 4, None)


def test_tgi_overloaded_requests_raise_max_concurrent_requests():
    steps = [calm()[0], {"concurrency": 200, "errors": {"http_429": 60}, "queue_size_mean": 0.5}]
    [admit] = [
        s
        for s in suggest(steps, tgi(max_concurrent_requests=128), FakePlanner())
        if s.rule == "more_concurrent_requests"
    ]
    assert admit.change == {"max_concurrent_requests": 256}
    assert "60 requests" in admit.why
    assert "more_concurrent_requests" not in rules(suggest(steps, tgi(max_concurrent_requests=256), FakePlanner()))
    assert "more_concurrent_requests" not in rules(suggest(steps, vllm(), FakePlanner()))

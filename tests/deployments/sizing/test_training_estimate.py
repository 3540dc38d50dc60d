"""The training memory estimate: hand-computed figures for a Llama 3.2 1B-shaped config on a CUDA GPU (every
tensor in the dtype the fine-tune program gives it: no fp32 master copy, AdamW's moments in the parameter's dtype,
LoRA adapters fp32) and the verdict against placed GPUs with its suggestions. The estimate against the fine-tune
program's measured peaks: test_training_estimate_sft.py."""

from __future__ import annotations

import json

import pytest

from bench.bench_training_memory import estimate_for
from deployments.sizing import GB, SizingError
from deployments.sizing.params import count_parameters
from deployments.sizing.plan import GpuCapacity, HostCapacity
from deployments.sizing.training import TrainingSetup, estimate_training, lora_trainable_params
from deployments.sizing.training_plan import plan_training
from tests.support.fixtures import FIXTURES

# Llama 3.2 1B's shape: h 2048, 16 layers, 32 heads, 8 KV heads (head_dim 64), MLP 8192, vocab 128256, tied.
LLAMA_1B = {
    "model_type": "llama",
    "hidden_size": 2048,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 8192,
    "vocab_size": 128256,
    "tie_word_embeddings": True,
    "max_position_embeddings": 131072,
}
# embedding 128256*2048 = 262,668,288; per layer q,o 2048^2 each, k,v 2048*512 each, gate,up,down 2048*8192
# each = 60,817,408, x16 = 973,078,528; norms (2*16+1)*2048 = 67,584.
PARAMS = 1_235_814_400
CUDA_CONTEXT = 730_000_000
# A sequence of 1,024 tokens, one per micro batch.
ONE_K = {"micro_batch_size": 1, "max_seq_len": 1024}
# The loss step of TRL's fused LM head (1,024 tokens, one CUDA tile of 1024 x 32768 vocab entries in the training
# dtype), the scored hidden states with their fp32 gradient and its cast (1024 x 2048 x 8 bytes in bf16 and in fp32
# alike), and in a full fine-tune the tied embedding's fp32 gradient (128256 x 2048 x 4) with its bf16 cast (x 2).
HIDDEN_GRADS = 1024 * 2048 * 8  # 16,777,216
LORA_HEAD = 1024 * 32768 * 2 + HIDDEN_GRADS  # 83,886,080
FULL_HEAD_BF16 = LORA_HEAD + 128256 * 2048 * 6  # 1,659,895,808
FULL_HEAD_FP32 = 1024 * 32768 * 4 + HIDDEN_GRADS + 128256 * 2048 * 4  # 1,201,668,096
# Under bf16 RMSNorm keeps its two inputs upcast to fp32: 2h elements x 2 more bytes per token per layer.
NORM_UPCAST = 2 * 2048 * 2


def test_parameter_count_of_the_config():
    assert count_parameters(LLAMA_1B).total == PARAMS


def test_full_fine_tune_fp32():
    est = estimate_training(LLAMA_1B, TrainingSetup(method="full", precision="fp32", **ONE_K))
    assert est.trainable_params == PARAMS
    assert est.weights == 4 * PARAMS == 4_943_257_600
    assert est.gradients == 4 * PARAMS
    assert est.optimizer == 8 * PARAMS == 9_886_515_200
    assert est.master == 0  # fp32 weights are their own master copy
    # Per token per layer 8h + 2kv + 4i = 50,176 elements, 4 bytes each.
    assert est.activations_per_token_per_layer == 200_704
    assert est.activations == 1024 * 16 * 200_704 + FULL_HEAD_FP32 == 4_490_002_432
    assert est.overhead == CUDA_CONTEXT
    # No accumulation: all gradients plus the first layer's activations (1024 x 200,704) outweigh the activations.
    assert est.peak_phase == "end of backward"
    assert est.total == 4 * PARAMS + 8 * PARAMS + CUDA_CONTEXT + 4 * PARAMS + 1024 * 200_704 == 20_708_551_296


def test_full_fine_tune_bf16_is_pure_bf16_as_the_program_loads_the_model():
    est = estimate_training(LLAMA_1B, TrainingSetup(method="full", precision="bf16", **ONE_K))
    # bf16 weights and gradients, AdamW's two moments bf16 too (the parameter's dtype), no fp32 master copy.
    assert (est.weights, est.gradients, est.master) == (2 * PARAMS, 2 * PARAMS, 0)
    assert est.optimizer == 2 * 2 * PARAMS
    # Half of fp32's 200,704, plus the norms' fp32 inputs: 100,352 + 8,192.
    assert est.activations_per_token_per_layer == 100_352 + NORM_UPCAST == 108_544
    assert est.activations == 1024 * 16 * 108_544 + FULL_HEAD_BF16 == 3_438_280_704
    # The activations outweigh every gradient plus the first layer's activations (2 x PARAMS + 1024 x 108,544).
    assert est.peak_phase == "backward" and 2 * PARAMS + 1024 * 108_544 == 2_582_777_856 < est.activations
    assert est.total == 2 * PARAMS + 4 * PARAMS + CUDA_CONTEXT + 3_438_280_704 == 11_583_167_104


def test_gradient_accumulation_keeps_gradients_beside_activations():
    one = estimate_training(LLAMA_1B, TrainingSetup(method="full", precision="bf16", **ONE_K))
    four = estimate_training(LLAMA_1B, TrainingSetup(method="full", precision="bf16", gradient_accumulation=4, **ONE_K))
    assert four.total - one.total == 2 * PARAMS  # the bf16 gradients of earlier micro-batches


def test_lora_r16_on_q_and_v():
    # q: 16 x (2048 + 2048) = 65,536; v: 16 x (2048 + 512) = 40,960; per layer 106,496, x16 layers.
    assert lora_trainable_params(count_parameters(LLAMA_1B), 16, ["q_proj", "v_proj"]) == 1_703_936
    est = estimate_training(LLAMA_1B, TrainingSetup(method="lora", precision="bf16", lora_r=16, **ONE_K))
    assert est.trainable_params == 1_703_936
    # The frozen base in bf16, the adapters fp32 (peft upcasts them): their gradients fp32, AdamW 2 x 4 bytes.
    assert est.weights == 2 * PARAMS + 4 * 1_703_936 == 2_478_444_544
    assert (est.gradients, est.optimizer, est.master) == (4 * 1_703_936, 8 * 1_703_936, 0) == (6_815_744, 13_631_488, 0)
    # Frozen linears keep no inputs: 2h + q + 2kv + q + 3i = 33,792, + h for the q/v adapters' input, + 2r; bf16,
    # plus the norms' fp32 inputs.
    assert est.activations_per_token_per_layer == (33_792 + 2048 + 32) * 2 + NORM_UPCAST == 79_936
    assert est.activations == 1024 * 16 * 79_936 + LORA_HEAD == 1_393_557_504
    assert est.total == 2_478_444_544 + 13_631_488 + CUDA_CONTEXT + 1_393_557_504 == 4_615_633_536


def test_qlora_base_weights_are_4_bit():
    est = estimate_training(LLAMA_1B, TrainingSetup(method="qlora", precision="bf16", **ONE_K))
    # 973,078,528 linear weights at 0.5 byte + one absmax byte (+ 4/256) per block of 64; embedding and norms fp32
    # (prepare_model_for_kbit_training upcasts them); the adapters bf16 (TRL casts them).
    linears = 973_078_528 // 2 + round(973_078_528 / 64 * (1 + 4 / 256))
    assert est.weights == linears + 4 * (262_668_288 + 67_584) + 2 * 1_703_936 == 1_556_332_544
    assert est.trainable_params == 1_703_936
    assert (est.gradients, est.optimizer) == (2 * 1_703_936, 2 * 2 * 1_703_936)  # bf16 gradients and moments


def test_gradient_checkpointing_keeps_only_layer_inputs_and_one_layer():
    plain = estimate_training(LLAMA_1B, TrainingSetup(method="lora", **ONE_K))
    checkpointed = estimate_training(LLAMA_1B, TrainingSetup(method="lora", gradient_checkpointing=True, **ONE_K))
    # 16 layer inputs of h x 2 bytes per token, plus one layer's 79,936 bytes per token recomputed in backward.
    assert checkpointed.activations == 1024 * (16 * 2048 * 2 + 79_936) + LORA_HEAD == 232_849_408
    # 15 layers' activations fewer, 16 layer inputs more.
    assert plain.activations - checkpointed.activations == 1024 * (15 * 79_936 - 16 * 2048 * 2) == 1_160_708_096
    assert plain.total - checkpointed.total == 1_160_708_096


def test_eager_attention_adds_the_softmax_scores():
    sdpa = estimate_training(LLAMA_1B, TrainingSetup(method="lora", **ONE_K))
    eager = estimate_training(LLAMA_1B, TrainingSetup(method="lora", attention="eager", **ONE_K))
    # 32 heads x 1024 keys per token: fp32 softmax (4 bytes) and its bf16 cast (2 bytes), in every layer.
    assert eager.activations - sdpa.activations == 1024 * 16 * 32 * 1024 * 6


def gpu_host(name: str, count: int, memory: int, free: int | None = None) -> HostCapacity:
    return HostCapacity(name, [GpuCapacity(i, "GPU", memory, memory if free is None else free) for i in range(count)])


def test_a_fitting_run_is_placed_by_the_placement_engine():
    inventory = [gpu_host("big", 2, 80 * GB), gpu_host("small", 2, 24 * GB)]
    verdict = plan_training(LLAMA_1B, TrainingSetup(method="lora", **ONE_K), inventory=inventory, gpu_count=2)
    assert verdict.fits is True
    assert (verdict.host, verdict.gpu_indexes) == ("small", (0, 1))  # best fit keeps the 80 GB GPUs free
    assert verdict.reason is None and verdict.suggestions == []


def test_a_run_that_cannot_fit_is_refused_with_the_reason_and_what_would_fit():
    setup = TrainingSetup(method="full", precision="bf16", micro_batch_size=4, max_seq_len=2048)
    verdict = plan_training(LLAMA_1B, setup, inventory=[gpu_host("node", 4, 12 * GB)], gpu_count=4)
    assert verdict.fits is False and verdict.host is None
    # 12 GB less the 5 % the caching allocator may waste: 11.4 GB usable on each GPU.
    assert verdict.reason.text() == "needs 24 GB per GPU at its peak; the most 4 GPU(s) on one host offer is 11 GB each"
    texts = [s.note.text() for s in verdict.suggestions]
    assert [t.split(" ")[0] for t in texts] == ["enable", "train", "use", "use", "shorten", "together:", "more"]
    assert "gradient checkpointing" in texts[0]
    assert "LoRA adapter (r=16)" in texts[1] and "QLoRA" in texts[2]
    assert texts[3] == "use a micro batch of 1 with gradient accumulation 4 (same batch)"
    assert texts[4].startswith("shorten max sequence length to 256 tokens")
    assert all(s.total < verdict.estimate.total for s in verdict.suggestions[:6])
    # No single change is enough on 12 GB; together, as far as needed, they fit.
    assert [s.fits for s in verdict.suggestions[:5]] == [False] * 5
    assert texts[5] == (
        "together: gradient checkpointing, method qlora, micro batch 4 with gradient accumulation 1, "
        "max sequence length 2048"
    )
    assert verdict.suggestions[5].fits is True and verdict.suggestions[5].total <= 0.95 * 12 * GB
    assert "do not help" in texts[6] and verdict.suggestions[6].fits is None
    assert verdict.as_dict()["suggestions"][0]["text"] == texts[0]


def test_on_bigger_gpus_a_single_change_is_enough():
    setup = TrainingSetup(method="full", precision="bf16", micro_batch_size=4, max_seq_len=2048)
    verdict = plan_training(LLAMA_1B, setup, inventory=[gpu_host("node", 4, 24 * GB)], gpu_count=4)
    fitting = [s.note.text() for s in verdict.suggestions if s.fits]
    assert fitting == [
        "enable gradient checkpointing (slower by about a third, far fewer activations)",
        "train a LoRA adapter (r=16) instead of every weight",
        "use QLoRA: 4-bit base weights with a LoRA adapter (r=16)",
        "use a micro batch of 2 with gradient accumulation 2 (same batch)",
        "shorten max sequence length to 1024 tokens (longer rows are cut or refused)",
    ]


def test_qlora_is_refused_on_a_cpu_host():
    with pytest.raises(SizingError) as refused:
        plan_training(LLAMA_1B, TrainingSetup(method="qlora", device="cpu", **ONE_K), host_memory_bytes=64 * GB)
    assert refused.value.field == "method"
    assert "QLoRA needs a CUDA GPU" in str(refused.value) and "choose LoRA" in str(refused.value)


def test_a_cpu_run_is_checked_against_the_host_memory():
    setup = TrainingSetup(method="lora", precision="fp32", device="cpu", **ONE_K)
    assert plan_training(LLAMA_1B, setup, host_memory_bytes=64 * GB).fits is True
    refused = plan_training(LLAMA_1B, setup, host_memory_bytes=8 * GB)
    assert refused.fits is False and "the host has 8.0 GB" in refused.reason.text()
    assert not any("more GPUs" in s.note.text() for s in refused.suggestions)
    assert estimate_training(LLAMA_1B, setup).master == 0


def test_a_cpu_run_is_estimated_in_fp32_whatever_precision_was_asked():
    # The program trains in fp32 on a CPU (finetune_train.choose_precision), so bf16 asked there changes nothing.
    asked = estimate_training(LLAMA_1B, TrainingSetup(method="full", precision="bf16", device="cpu", **ONE_K))
    fp32 = estimate_training(LLAMA_1B, TrainingSetup(method="full", precision="fp32", device="cpu", **ONE_K))
    assert (asked.weights, asked.optimizer, asked.total) == (4 * PARAMS, 8 * PARAMS, fp32.total)


def test_an_unknown_target_module_names_the_model_layers():
    with pytest.raises(SizingError) as refused:
        estimate_training(LLAMA_1B, TrainingSetup(method="lora", lora_target_modules=("c_attn",)))
    assert refused.value.field == "lora_target_modules"
    assert "c_attn" in str(refused.value) and "q_proj" in str(refused.value)


# --- the probe's own loop on CPU --------------------------------------------------------------------------
# tests/fixtures/training-memory/cpu-probe.jsonl measured bench/train_memory_probe.py's loop, whose loss is
# `model(labels=...)` (the full fp32 logits), not the program's fused LM head; the estimate describes the program
# and is compared with its peaks in test_training_estimate_sft.py. The loop's runs still pin the model's size.

MEASURED = [
    json.loads(line) for line in (FIXTURES / "training-memory" / "cpu-probe.jsonl").read_text().splitlines() if line
]


@pytest.mark.parametrize(
    "run",
    MEASURED,
    ids=[f"{r['method']}-b{r['micro_batch']}-s{r['seq_len']}-ckpt{int(r['gradient_checkpointing'])}" for r in MEASURED],
)
def test_the_estimate_counts_the_parameters_the_cpu_loop_trained(run):
    est = estimate_for(run)
    assert est.params == run["params"] and est.trainable_params == run["trainable_params"]
    # The fp32 model the loop built, as resident memory right after building it.
    assert abs(run["after_model_rss_bytes"] - run["baseline_rss_bytes"] - est.weights) <= 0.03 * est.weights

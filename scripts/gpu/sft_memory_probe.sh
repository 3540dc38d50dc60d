#!/usr/bin/env bash
# The fine-tune program's own training peak on a CUDA GPU (issue 14): bench/train_memory_probe.py --trainer sft
# (workers/jobs/finetune_train.py's model, data, SFTConfig and TRL SFTTrainer) on a random ~1B Llama (Llama 3.2
# 1B's shape, saved once in bf16 as the program loads it), micro batch 4 x 1024 tokens, 3 optimizer steps, LoRA
# r=16 on q/v and full, with and without gradient checkpointing, one fresh process each. From the repository root:
#
#     scripts/gpu/sft_memory_probe.sh      one JSON line per run in $OUT/cuda-sft.jsonl, the log in $OUT/log.txt
#
# Where the interpreter lacks TRL (the device machine's python3), carry the wheels of trl, datasets, dill,
# multiprocess and fsspec in .whl/sft/ (scripts/gpu/README.md; bitsandbytes is not needed here).
# tests/fixtures/training-memory/cuda-h200-sft.json was assembled from its output.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python3}"
OUT="${OUT:-$(mktemp -d /tmp/sft-memory-out.XXXXXX)}"
mkdir -p "$OUT"
if ! "$PY" -c "import trl, datasets" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/sft/*.whl || exit 1
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
# Nothing outside the machine can be reached: no library may wait on the Hub.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
LLAMA_1B='{"model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 8192, "vocab_size": 128256, "tie_word_embeddings": true, "max_position_embeddings": 131072}'
MODEL_DIR="${MODEL_DIR:-/tmp/llama-1b-random}"
: >"$OUT/cuda-sft.jsonl"
for setup in "lora --checkpointing" "full --checkpointing" "lora" "full"; do
    set -- $setup
    echo "== $* $(date +%T)" | tee -a "$OUT/log.txt"
    timeout "${RUN_TIMEOUT_S:-120}" "$PY" bench/train_memory_probe.py --trainer sft --device cuda --method "$@" \
        --config "$LLAMA_1B" --micro-batch 4 --seq-len 1024 --steps 3 --model-dir "$MODEL_DIR" \
        2>>"$OUT/log.txt" | tail -n 1 | tee -a "$OUT/cuda-sft.jsonl"
done

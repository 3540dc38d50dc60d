#!/usr/bin/env bash
# The fine-tune checks that need a CUDA GPU (QLoRA through the fine-tune program, the training memory estimate
# against torch.cuda.max_memory_allocated), from the repository root:
#
#     scripts/gpu/finetune_checks.sh                  results as JSON under $OUT (default: a new /tmp folder)
#     PYTHON=.venv-ml/bin/python scripts/gpu/finetune_checks.sh    locally: the CUDA parts are skipped
#
# Where the interpreter lacks TRL (the device machine's python3), the wheels carried in .whl/ (trl, datasets,
# bitsandbytes and their missing needs; see scripts/gpu/README.md) are installed under /tmp/site first.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python3}"
OUT="${OUT:-$(mktemp -d /tmp/finetune-checks-out.XXXXXX)}"
mkdir -p "$OUT"
if ! "$PY" -c "import trl, datasets" 2>/dev/null; then
    if ! compgen -G ".whl/*.whl" >/dev/null; then
        echo "this python has no trl/datasets and .whl/ carries no wheels" >&2
        exit 1
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
"$PY" scripts/gpu/finetune_checks.py --out "$OUT" "$@" 2>&1 | tee "$OUT/log.txt"

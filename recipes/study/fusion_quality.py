"""Fusion quality on real data: each epoch checkpoint of a run vs the uniform soup vs delta-guided fusion.

Evaluates STS-B dev Spearman and the STS-derived paraphrase-retrieval nDCG@10 of every checkpoint, of the uniform
Model Soup (p=0) and of delta-guided fusion for a small sweep of p and granularity, and writes a Markdown table.

    codiemb train --config recipes/default/stsb_en.yaml --num_train_epochs 3 --output_dir outputs/stsb3
    python recipes/study/fusion_quality.py --run-dir outputs/stsb3 --base packaged:all-minilm-l6-v2 \
        --sts-dev ../shared/data/stsb-en/dev.tsv --output recipes/study/results/fusion_quality.md
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from sentence_transformers import SentenceTransformer

from hf_codiemb.data import ir_task_from_sts_pairs, load_sts_dataset
from hf_codiemb.evaluation import evaluate_ir, evaluate_sts
from hf_codiemb.fusion import delta_fuse, fuse
from hf_codiemb.model_names import resolve_model_path

logger = logging.getLogger("fusion_quality")


def scores(model_path: str, sts, ir) -> tuple[float, float]:
    model = SentenceTransformer(model_path, device="cpu")
    spearman = evaluate_sts(model, sts, "stsb-dev")["spearman_cosine"]
    ndcg = evaluate_ir(model, *ir, "stsb-dev-paraphrase-ir")["ndcg@10"]
    return spearman, ndcg


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True, help="A training output folder with checkpoint-* folders.")
    parser.add_argument("--base", required=True, help="The pre-trained model the run started from.")
    parser.add_argument("--sts-dev", required=True)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    base = resolve_model_path(args.base)
    checkpoints = sorted(Path(args.run_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    if len(checkpoints) < 2:
        raise SystemExit(f"{args.run_dir} has {len(checkpoints)} checkpoints; fusion needs at least 2")
    sts = load_sts_dataset(args.sts_dev)
    ir = ir_task_from_sts_pairs(sts)
    rows = [("base (no training)", *scores(base, sts, ir))]
    for checkpoint in checkpoints:
        rows.append((checkpoint.name, *scores(str(checkpoint), sts, ir)))
    with tempfile.TemporaryDirectory() as tmp:
        soup = Path(tmp) / "uniform"
        fuse([str(c) for c in checkpoints], soup, base=base, method="uniform", show_progress=False)
        rows.append(("uniform soup (p=0)", *scores(str(soup), sts, ir)))
        for p in (0.5, 1.0, 2.0):
            for granularity in ("element", "tensor"):
                out = Path(tmp) / f"delta-{p}-{granularity}"
                delta_fuse(base, [str(c) for c in checkpoints], out, p=p, granularity=granularity)
                rows.append((f"delta p={p} {granularity}", *scores(str(out), sts, ir)))
    lines = [
        "| model | STS-B dev Spearman | STS-B dev paraphrase-IR nDCG@10 |",
        "|---|---|---|",
        *[f"| {name} | {s:.4f} | {n:.4f} |" for name, s, n in rows],
    ]
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text("\n".join(lines) + "\n")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

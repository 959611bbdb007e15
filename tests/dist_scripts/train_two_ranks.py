"""Run by tests/test_distributed_trainer.py under `torchrun --nproc_per_node 2` (gloo, CPU).

Trains CoDiEmbTrainer for one epoch on an IR and an STS dataset with unequal per-task batch sizes, gradient
accumulation and cross-device gathering, and writes what every rank saw at every micro-batch to OUT/rank{r}.json.
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

from hf_codiemb import CoDiEmbTrainer, CoDiEmbTrainingArguments

WORDS = ["apple", "river", "engine", "garden", "violin", "planet", "market", "winter", "doctor", "camera", "ocean", "bridge"]


def sentence(rng: random.Random, n: int = 6) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


class RecordingTrainer(CoDiEmbTrainer):
    """Records the dataset and batch size of every micro-batch this rank trains on."""

    seen: list

    def training_step(self, model, inputs, num_items_in_batch=None):
        first_ids = next(value for key, value in inputs.items() if key.endswith("_input_ids"))
        self.seen.append({"step": self.state.global_step, "dataset": inputs["dataset_name"], "size": len(first_ids)})
        return super().training_step(model, inputs, num_items_in_batch)


def main() -> None:
    out = Path(sys.argv[1])
    rank = int(os.environ["RANK"])
    rng = random.Random(0)
    ir = Dataset.from_dict(
        {
            "query": [f"query {i} {sentence(rng, 3)}" for i in range(40)],
            "positives": [[sentence(rng), sentence(rng)] for _ in range(40)],
            "negatives": [[sentence(rng) for _ in range(3)] for _ in range(40)],
        }
    )
    sts = Dataset.from_dict(
        {
            "sentence1": [sentence(rng) for _ in range(60)],
            "sentence2": [sentence(rng) for _ in range(60)],
            "score": [rng.uniform(0, 5) for _ in range(60)],
        }
    )
    model = make_tiny_model(out / f"model_rank{rank}")  # same seed on every rank: identical weights
    args = CoDiEmbTrainingArguments(
        output_dir=str(out / "run"),
        ir_batch_size=3,
        sts_batch_size=5,
        num_positives=2,
        num_negatives=2,
        gradient_accumulation_steps=2,
        num_train_epochs=1,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=7,
        use_cpu=True,
        ddp_backend="gloo",
        disable_tqdm=True,
    )
    trainer = RecordingTrainer(model=model, args=args, train_dataset={"toy_ir": ir, "toy_sts": sts})
    trainer.seen = []
    trainer.train()
    record = {
        "rank": rank,
        "world_size": args.world_size,
        "seen": trainer.seen,
        "sampler_len": len(trainer.task_batch_sampler),
        "schedule": [trainer.task_batch_sampler.specs[i].name for i in trainer.task_batch_sampler.schedule()],
        "log_history": trainer.state.log_history,
        "global_step": trainer.state.global_step,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()

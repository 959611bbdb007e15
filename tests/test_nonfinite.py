"""A non-finite training loss stops training with the step, dataset and loss component named, or, with
``skip_nonfinite_batches``, skips that optimizer update and counts it in the logs (issue 10, item 6)."""

from __future__ import annotations

import math
import random

import pytest
import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformer
from tiny_models import make_tiny_model
from transformers import TrainerCallback

from hf_codiemb import CoDiEmbTrainer, CoDiEmbTrainingArguments
from hf_codiemb.trainer import NonFiniteLossError

WORDS = ["apple", "river", "engine", "garden", "violin", "planet", "market", "winter", "doctor", "camera", "ocean",
         "bridge"]  # fmt: skip


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def datasets() -> dict[str, Dataset]:
    rng = random.Random(0)
    ir = Dataset.from_dict(
        {
            "query": [sentence(rng, 3) for _ in range(16)],
            "positives": [[sentence(rng, 4)] for _ in range(16)],
            "negatives": [[sentence(rng, 4) for _ in range(2)] for _ in range(16)],
        }
    )
    s1 = [sentence(rng, 5) for _ in range(32)]
    sts = Dataset.from_dict(
        {"sentence1": s1, "sentence2": [sentence(rng, 5) for _ in s1], "score": [rng.uniform(0, 5) for _ in s1]}
    )
    return {"toy_ir": ir, "toy_sts": sts}


class StepCounter(TrainerCallback):
    """Counts optimizer steps as they begin and keeps a copy of the weights after each one."""

    def __init__(self, model: SentenceTransformer) -> None:
        self.model, self.current, self.weights = model, 0, {}

    def on_step_begin(self, args, state, control, **kwargs) -> None:
        self.current += 1

    def on_step_end(self, args, state, control, **kwargs) -> None:
        self.weights[self.current] = {name: p.detach().clone() for name, p in self.model.named_parameters()}


class PoisonedLoss(torch.nn.Module):
    """The wrapped loss, with one component multiplied by ``factor`` (NaN or inf) from its ``at_call``-th call on."""

    def __init__(self, inner: torch.nn.Module, counter: StepCounter, at_call: int, component: str, factor: float):
        super().__init__()
        self.inner, self.model, self.counter = inner, inner.model, counter
        self.at_call, self.component, self.factor = at_call, component, factor
        self.calls, self.poisoned_steps = 0, []

    def forward(self, features, labels):
        output = self.inner(features, labels)
        self.calls += 1
        if self.calls != self.at_call:
            return output
        self.poisoned_steps.append(self.counter.current)
        if isinstance(output, dict):
            return {key: value * self.factor if key == self.component else value for key, value in output.items()}
        return output * self.factor


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    make_tiny_model(path)
    return path / "model"


def build(tiny_model_dir, tmp_path, dataset: str, component: str, factor: float, at_call: int, **overrides):
    args = CoDiEmbTrainingArguments(
        **{
            "output_dir": str(tmp_path / "run"), "ir_batch_size": 4, "sts_batch_size": 8, "num_positives": 1,
            "num_negatives": 2, "max_steps": 8, "learning_rate": 1e-3, "lr_scheduler_type": "constant",
            "logging_steps": 1, "save_strategy": "no", "report_to": [], "seed": 0, "use_cpu": True,
            "disable_tqdm": True, **overrides,
        }
    )  # fmt: skip
    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    counter = StepCounter(model)
    losses = {name: CoDiEmbTrainer.default_loss_factory(task, args)(model) for name, task in
              [("toy_ir", "ir"), ("toy_sts", "sts")]}  # fmt: skip
    losses[dataset] = poisoned = PoisonedLoss(losses[dataset], counter, at_call, component, factor)
    trainer = CoDiEmbTrainer(model=model, args=args, train_dataset=datasets(), loss=losses, callbacks=[counter])
    return trainer, counter, poisoned


@pytest.mark.parametrize(
    "dataset,component,factor,named",
    [
        ("toy_sts", "pearson", float("nan"), "toy_sts/pearson = nan, toy_sts/loss = nan"),
        ("toy_ir", None, float("inf"), "toy_ir/loss = inf"),
    ],
    ids=["sts-component-nan", "ir-loss-inf"],
)
def test_nonfinite_loss_stops_training_naming_step_dataset_and_component(
    tiny_model_dir, tmp_path, dataset, component, factor, named
):
    trainer, counter, poisoned = build(tiny_model_dir, tmp_path, dataset, component, factor, at_call=2)
    with pytest.raises(NonFiniteLossError) as caught:
        trainer.train()
    [step] = poisoned.poisoned_steps
    assert step > 1
    message = str(caught.value)
    assert message.startswith(f"Non-finite training loss at optimizer step {step} (epoch ")
    assert f"dataset {dataset!r}: {named}. " in message
    assert "skip_nonfinite_batches=true" in message
    # Stopped before the optimizer saw it: no step ended after the one before, and the weights are finite.
    assert max(counter.weights) == step - 1
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


@pytest.mark.parametrize("accumulation", [1, 2], ids=["no-accumulation", "accumulation-2"])
def test_skip_nonfinite_batches_skips_the_update_and_counts_it(tiny_model_dir, tmp_path, accumulation):
    # With accumulation 2, the 3rd STS batch is the 1st micro-batch of an update: the whole update is skipped.
    trainer, counter, poisoned = build(
        tiny_model_dir, tmp_path, "toy_sts", "pearson", float("nan"), at_call=3,
        skip_nonfinite_batches=True, gradient_accumulation_steps=accumulation,
    )  # fmt: skip
    trainer.train()
    [step] = poisoned.poisoned_steps
    assert trainer.state.global_step == 8 and 1 < step < 8
    weights = counter.weights
    for name, before in weights[step - 1].items():
        assert torch.equal(weights[step][name], before), name  # the update of that step did not happen
    assert any(not torch.equal(weights[step + 1][n], weights[step][n]) for n in weights[step])  # training went on
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    # The optimizer's own state skipped it too: AdamW counted 7 of the 8 updates for every parameter.
    assert {int(state["step"]) for state in trainer.optimizer.state.values()} == {7}
    # Counted in the logs from that step on; the skipped batch's loss values are not logged.
    logs = {entry["step"]: entry for entry in trainer.state.log_history if "loss" in entry}
    assert [s for s, e in logs.items() if "nonfinite_batches_skipped" in e] == list(range(step, 9))
    assert all(logs[s]["nonfinite_batches_skipped"] == logs[s]["toy_sts/nonfinite_batches_skipped"] == 1
               for s in range(step, 9))  # fmt: skip
    if accumulation == 1:  # (with 2, the update's other, finite micro-batch is logged)
        assert "toy_sts/loss" not in logs[step] and "toy_sts/pearson" not in logs[step]
    assert all(math.isfinite(entry["loss"]) for entry in logs.values())
    assert trainer.nonfinite_batches_skipped == {"toy_sts": 1}


@pytest.mark.distributed
@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_nonfinite_loss_on_one_rank_stops_or_skips_on_every_rank(tmp_path, mode):
    import json
    from pathlib import Path

    from conftest import run_torchrun

    script = Path(__file__).parent / "dist_scripts" / "nonfinite_two_ranks.py"
    proc = run_torchrun([str(script), str(tmp_path), mode], timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    step = rank1["poisoned_step"]
    assert "poisoned_step" not in rank0 and step > 1
    if mode == "stop":
        # Rank 1 names the component; rank 0, whose loss was finite, stops too (no hang) and says why.
        assert rank1["error"].startswith(f"Non-finite training loss at optimizer step {step} ")
        assert "dataset 'toy_ir': toy_ir/loss = nan" in rank1["error"]
        assert "dataset 'toy_ir': finite here, non-finite on another process" in rank0["error"]
        assert rank0["global_step"] == rank1["global_step"] == step - 1
        return
    # Both ranks skipped the same update and stayed identical.
    assert "error" not in rank0 and "error" not in rank1
    assert rank0["global_step"] == rank1["global_step"] == 6
    assert rank0["adam_steps"] == rank1["adam_steps"] == [5]
    assert rank0["skipped"] == rank1["skipped"] == {"toy_ir": 1}
    for rank in (rank0, rank1):
        assert rank["weights"][str(step)] == rank["weights"][str(step - 1)]
    assert rank0["weights"]["6"] == rank1["weights"]["6"]

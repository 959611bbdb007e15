"""Resuming: a resumed run reproduces the uninterrupted run's losses; interrupted checkpoint saves are skipped (a real
`kill -9` during a save); `codiemb train` honours --resume_from_checkpoint and refuses to overwrite checkpoints
(issue 10, items 3-5)."""

from __future__ import annotations

import json
import logging
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer
from tiny_models import make_tiny_model

from hf_codiemb import CoDiEmbTrainer, CoDiEmbTrainingArguments
from hf_codiemb.checkpoints import (
    CheckpointError,
    checkpoint_problem,
    delete_previous_checkpoints,
    prepare_output_dir,
    resolve_resume_checkpoint,
)
from hf_codiemb.collator import CoDiEmbDataCollator
from hf_codiemb.errors import OutputExistsError

TESTS = Path(__file__).resolve().parent
KILL_SCRIPT = TESTS / "resume_scripts" / "train_killed_during_save.py"
WORDS = ["apple", "river", "engine", "garden", "violin", "planet", "market", "winter", "doctor", "camera", "ocean",
         "bridge"]  # fmt: skip


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def ir_dataset(n: int, seed: int) -> Dataset:
    """IR rows with 3 positives and 5 negatives: sampling 2 of each changes the loss (which ones, in which order)."""
    rng = random.Random(seed)
    return Dataset.from_dict(
        {
            "query": [f"{WORDS[i % 12]} {sentence(rng, 2)}" for i in range(n)],
            "positives": [[f"{WORDS[i % 12]} {sentence(rng, 3)}" for _ in range(3)] for i in range(n)],
            "negatives": [[sentence(rng, 4) for _ in range(5)] for _ in range(n)],
        }
    )


def sts_dataset(n: int, seed: int) -> Dataset:
    rng = random.Random(seed)
    s1 = [sentence(rng, 5) for _ in range(n)]
    s2 = [" ".join(text.split()[: rng.randint(1, 5)]) for text in s1]
    return Dataset.from_dict({"sentence1": s1, "sentence2": s2, "score": [rng.uniform(0, 5) for _ in range(n)]})


class LossRecordingTrainer(CoDiEmbTrainer):
    """Records the full-precision loss of every optimizer step (gradient_accumulation_steps=1)."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.step_losses[self.state.global_step + 1] = loss.item()
        return loss


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny")
    make_tiny_model(path)  # BERT with dropout 0.1: the torch RNG matters too
    return path / "model"


def exact_args(output_dir: Path) -> CoDiEmbTrainingArguments:
    return CoDiEmbTrainingArguments(
        output_dir=str(output_dir), ir_batch_size=4, sts_batch_size=8, num_positives=2, num_negatives=2,
        num_train_epochs=2, learning_rate=1e-3, logging_steps=1, save_strategy="steps", save_steps=7,
        eval_strategy="steps", eval_steps=5, report_to=[], seed=0, use_cpu=True, disable_tqdm=True,
    )  # fmt: skip


def exact_trainer(model_dir: Path, output_dir: Path) -> LossRecordingTrainer:
    trainer = LossRecordingTrainer(
        model=SentenceTransformer(str(model_dir), device="cpu"),
        args=exact_args(output_dir),
        train_dataset={"toy_ir": ir_dataset(24, 0), "toy_sts": sts_dataset(32, 1)},  # 6 + 4 batches per epoch
        eval_dataset={"toy_ir": ir_dataset(8, 2)},  # evaluation samples too; it must not move the training sampling
    )
    trainer.step_losses = {}
    return trainer


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, tmp_path_factory) -> tuple[LossRecordingTrainer, Path]:
    output_dir = tmp_path_factory.mktemp("exact") / "run"
    trainer = exact_trainer(tiny_model_dir, output_dir)
    trainer.train()
    assert sorted(trainer.step_losses) == list(range(1, 21))
    return trainer, output_dir


def logged(history: list[dict], key: str, after: int) -> dict[int, float]:
    return {entry["step"]: entry[key] for entry in history if key in entry and entry["step"] > after}


@pytest.mark.parametrize("checkpoint_step", [7, 14], ids=["mid-epoch-1", "mid-epoch-2"])
def test_resumed_run_reproduces_the_uninterrupted_losses(uninterrupted, tiny_model_dir, tmp_path, checkpoint_step):
    full, full_dir = uninterrupted
    # The resumed run works in a copy (the uninterrupted run's folder serves both parametrisations).
    run_dir = tmp_path / "run"
    checkpoint = run_dir / f"checkpoint-{checkpoint_step}"
    shutil.copytree(full_dir / checkpoint.name, checkpoint)
    resumed = exact_trainer(tiny_model_dir, run_dir)
    resumed.train(resume_from_checkpoint=str(checkpoint))

    expected = {step: loss for step, loss in full.step_losses.items() if step > checkpoint_step}
    assert sorted(resumed.step_losses) == sorted(expected)
    # IR and STS steps both follow the checkpoint (the schedule mixes them), and IR steps sample 2 of 3 positives and
    # 2 of 5 negatives per row: without restoring the collator's sampling they differ from the first IR step on.
    for step, loss in expected.items():
        assert resumed.step_losses[step] == pytest.approx(loss, rel=0, abs=1e-6), f"step {step}"
    # The logged per-step, per-dataset and evaluation losses agree as well.
    for key in ("loss", "toy_ir/loss", "toy_sts/loss", "toy_sts/pearson", "eval_loss"):
        assert logged(resumed.state.log_history, key, checkpoint_step) == logged(
            full.state.log_history, key, checkpoint_step
        ), key
    assert logged(full.state.log_history, "toy_ir/loss", checkpoint_step)
    assert logged(full.state.log_history, "toy_sts/loss", checkpoint_step)
    # And so do the final weights.
    for name, tensor in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], tensor, rtol=0, atol=1e-6, msg=name)


def test_collator_sampling_is_a_function_of_seed_epoch_and_batch_index():
    rows = [{"query": f"q{i}", "positives": [f"p{i}{j}" for j in range(4)], "negatives": [f"n{i}{j}" for j in range(6)]}
            for i in range(3)]  # fmt: skip

    def sampled(collator: CoDiEmbDataCollator) -> list[list[str]]:
        collator._rng = collator._next_batch_rng()
        return [list(collator.expand_ir_row(row).values()) for row in rows]

    def stream(epoch: int, first_batch: int, n: int, seed: int = 0) -> list:
        collator = CoDiEmbDataCollator(preprocess_fn=None, num_positives=2, num_negatives=3, seed=seed)
        collator.set_epoch(epoch, first_batch)
        return [sampled(collator) for _ in range(n)]

    epoch1 = stream(1, 0, 6)
    assert stream(1, 4, 2) == epoch1[4:]  # a run resumed at batch 4 samples what batches 4, 5 sampled
    assert stream(1, 0, 6) == epoch1  # no hidden state
    assert stream(2, 0, 6) != epoch1 and stream(1, 0, 6, seed=1) != epoch1
    assert len({str(batch) for batch in epoch1}) == 6  # every batch samples anew
    # Two processes: process r collates the epoch's batches r, r + 2, ... (accelerate's sharding).
    collator = CoDiEmbDataCollator(preprocess_fn=None, num_positives=2, num_negatives=3)
    collator.set_epoch(1, 1, num_processes=2, process_index=1)
    assert [sampled(collator) for _ in range(2)] == [epoch1[3], epoch1[5]]
    # Evaluation batches come from their own stream, restarted at every evaluation; training batches do not move.
    collator = CoDiEmbDataCollator(preprocess_fn=None, num_positives=2, num_negatives=3)
    collator.set_epoch(1, 0)
    first = sampled(collator)
    with collator.evaluation_sampling():
        evaluation = [sampled(collator) for _ in range(3)]
    with collator.evaluation_sampling():
        assert [sampled(collator) for _ in range(3)] == evaluation
    assert [first, sampled(collator)] == epoch1[:2]


# --------------------------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def complete_checkpoint(uninterrupted) -> Path:
    return uninterrupted[1] / "checkpoint-7"


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def shard_with_one_shard_missing(checkpoint: Path) -> None:
    (checkpoint / "model.safetensors").rename(checkpoint / "model-00001-of-00002.safetensors")
    shards = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps({"weight_map": shards}))


@pytest.mark.parametrize(
    "damage,problem",
    [
        (lambda c: (c / "trainer_state.json").unlink(), "no trainer_state.json (its save did not finish)"),
        (lambda c: truncate(c / "trainer_state.json"), "trainer_state.json is unreadable"),
        (lambda c: (c / "model.safetensors").unlink(), "no model weights"),
        (lambda c: truncate(c / "model.safetensors"), "model.safetensors is truncated"),
        (lambda c: (c / "modules.json").unlink(), "modules.json is missing or unreadable"),
        (lambda c: (c / "scheduler.pt").unlink(), "no scheduler.pt (its save did not finish)"),
        (lambda c: truncate(c / "optimizer.pt"), "optimizer.pt is truncated"),
        (lambda c: truncate(c / "rng_state.pth"), "rng_state.pth is truncated"),
        (shard_with_one_shard_missing, "lists missing shard(s) ['model-00002-of-00002.safetensors']"),
    ],
    ids=["no-state", "truncated-state", "no-weights", "truncated-weights", "no-modules", "no-scheduler",
         "truncated-optimizer", "truncated-rng", "missing-shard"],
)  # fmt: skip
def test_incomplete_checkpoints_are_recognised(complete_checkpoint, tmp_path, damage, problem):
    assert checkpoint_problem(complete_checkpoint) is None
    checkpoint = tmp_path / "checkpoint-7"
    shutil.copytree(complete_checkpoint, checkpoint)
    damage(checkpoint)
    assert problem in checkpoint_problem(checkpoint)


def test_model_only_checkpoint_is_complete(complete_checkpoint, tmp_path):
    checkpoint = tmp_path / "checkpoint-7"
    shutil.copytree(complete_checkpoint, checkpoint)
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        (checkpoint / name).unlink()
    assert checkpoint_problem(checkpoint) is None


def test_resume_last_skips_incomplete_checkpoints_and_says_why(complete_checkpoint, tmp_path, caplog):
    run = tmp_path / "run"
    for step in (3, 7):
        shutil.copytree(complete_checkpoint, run / f"checkpoint-{step}")
    shutil.copytree(complete_checkpoint, run / "checkpoint-11")
    (run / "checkpoint-11" / "trainer_state.json").unlink()
    shutil.copytree(complete_checkpoint, run / "checkpoint-100")
    truncate(run / "checkpoint-100" / "model.safetensors")
    (run / "checkpoint-not-a-step").mkdir()
    with caplog.at_level(logging.WARNING, logger="hf_codiemb.checkpoints"):
        for value in (True, "true", "last", "LAST", str(run)):
            assert resolve_resume_checkpoint(value, run) == str(run / "checkpoint-7")
    assert f"Skipping incomplete checkpoint {run / 'checkpoint-100'}: model.safetensors is truncated" in caplog.text
    assert f"Skipping incomplete checkpoint {run / 'checkpoint-11'}: no trainer_state.json" in caplog.text
    for value in (None, False, "", "false"):
        assert resolve_resume_checkpoint(value, run) is None
    assert resolve_resume_checkpoint(str(run / "checkpoint-3"), run) == str(run / "checkpoint-3")
    with pytest.raises(CheckpointError, match=r"checkpoint-11: cannot resume from it: no trainer_state.json .*"
                                              r"the latest complete checkpoint there is .*checkpoint-7"):  # fmt: skip
        resolve_resume_checkpoint(str(run / "checkpoint-11"), run)
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_resume_checkpoint(str(run / "checkpoint-12"), run)
    with pytest.raises(CheckpointError, match=r"nothing to resume in .*empty: it holds no checkpoint-N folder"):
        resolve_resume_checkpoint("last", tmp_path / "empty")


def test_new_run_into_a_used_output_dir_is_refused_unless_overwrite(tmp_path, caplog):
    run = tmp_path / "run"
    (run / "checkpoint-2").mkdir(parents=True)
    (run / "checkpoint-4").mkdir()
    args = CoDiEmbTrainingArguments(output_dir=str(run), report_to=[], use_cpu=True)
    with pytest.raises(OutputExistsError, match=r"holds 2 checkpoint\(s\) \(checkpoint-2, checkpoint-4\).*"
                                                r"--resume_from_checkpoint last.*--overwrite_output_dir"):  # fmt: skip
        prepare_output_dir(args)
    assert (run / "checkpoint-4").is_dir()
    model_only = tmp_path / "model"
    model_only.mkdir()
    (model_only / "modules.json").write_text("[]")
    with pytest.raises(OutputExistsError, match="holds a saved model"):
        prepare_output_dir(CoDiEmbTrainingArguments(output_dir=str(model_only), report_to=[], use_cpu=True))
    assert prepare_output_dir(CoDiEmbTrainingArguments(output_dir=str(tmp_path / "new"), report_to=[])) is None
    args = CoDiEmbTrainingArguments(output_dir=str(run), report_to=[], use_cpu=True, overwrite_output_dir=True)
    with caplog.at_level(logging.WARNING, logger="hf_codiemb.checkpoints"):
        assert prepare_output_dir(args) is None
        assert (run / "checkpoint-4").is_dir()  # deleted only once the data and model are checked:
        assert delete_previous_checkpoints(args, resume_from="x") == []  # not when resuming
        assert delete_previous_checkpoints(args, resume_from=None) == [run / "checkpoint-2", run / "checkpoint-4"]
    assert not any(run.iterdir())
    assert f"deleting {run / 'checkpoint-4'}" in caplog.text


# ------------------------------------------------------------------------------------------------------- the CLI
def write_recipe(tmp_path: Path, output_dir: Path) -> Path:
    make_tiny_model(tmp_path / "tiny")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model_name_or_path: {tmp_path / 'tiny' / 'model'}\n"
        "ir_train: [demo:ir_train.jsonl]\nsts_train: [demo:sts_train.jsonl]\n"
        "ir_batch_size: 8\nsts_batch_size: 16\nmax_steps: 4\nlearning_rate: 1.0e-3\n"
        "save_strategy: steps\nsave_steps: 2\nlogging_steps: 1\nreport_to: none\ndisable_tqdm: true\n"
        f"output_dir: {output_dir}\nuse_cpu: true\n"
    )
    return recipe


def train_in_subprocess(recipe: Path, steps_file: Path, kill_at_step: int, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(KILL_SCRIPT), str(steps_file), str(kill_at_step), "--", "--config", str(recipe), *flags],
        check=False, capture_output=True, text=True, timeout=300, cwd=TESTS.parent,
    )  # fmt: skip


def test_kill_9_during_a_checkpoint_save_then_resume_last_finishes_like_an_uninterrupted_run(tmp_path, capsys):
    from hf_codiemb.cli import main
    from hf_codiemb.commands.train import run as train_run

    out = tmp_path / "run"
    recipe = write_recipe(tmp_path, out)
    killed = train_in_subprocess(recipe, tmp_path / "steps_killed.txt", 4)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    # Killed while saving checkpoint-4: its weights are written, the rest is not.
    assert (out / "checkpoint-4" / "model.safetensors").is_file()
    assert not (out / "checkpoint-4" / "trainer_state.json").exists()
    assert "no trainer_state.json" in checkpoint_problem(out / "checkpoint-4")
    assert checkpoint_problem(out / "checkpoint-2") is None

    # A new run into that folder is refused before any work (one line, exit status 2); nothing is touched.
    with pytest.raises(OutputExistsError, match="--overwrite_output_dir"):
        train_run(["--config", str(recipe)])
    capsys.readouterr()
    assert main(["train", "--config", str(recipe)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"codiemb train: error: output_dir {out} already holds 2 checkpoint(s)") and "\n" not in error
    assert (out / "checkpoint-4" / "model.safetensors").is_file()

    resumed = train_in_subprocess(recipe, tmp_path / "steps_resumed.txt", 0, "--resume_from_checkpoint", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Skipping incomplete checkpoint {out / 'checkpoint-4'}: no trainer_state.json" in resumed.stderr
    assert f"Resuming training from {out / 'checkpoint-2'}" in resumed.stderr
    assert (tmp_path / "steps_resumed.txt").read_text().split() == ["3", "4"]  # not restarted at step 1
    for step in (2, 4):
        assert checkpoint_problem(out / f"checkpoint-{step}") is None

    # The same recipe without the interruption: the resumed run logged the same losses and saved the same model.
    clean = tmp_path / "clean"
    assert train_run(["--config", str(recipe), "--output_dir", str(clean)]) == 0
    history = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    clean_history = json.loads((clean / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    assert [entry["step"] for entry in history if "loss" in entry] == [1, 2, 3, 4]
    for key in ("loss", "ir_train/loss", "sts_train/loss"):
        assert logged(history, key, 2) == logged(clean_history, key, 2), key
    weights, clean_weights = load_file(out / "model.safetensors"), load_file(clean / "model.safetensors")
    for name, tensor in clean_weights.items():
        torch.testing.assert_close(weights[name], tensor, rtol=0, atol=1e-6, msg=name)


def test_dry_run_checks_the_output_dir_and_the_resume_value_without_deleting(tmp_path, capsys):
    from hf_codiemb.cli import main

    out = tmp_path / "out"
    recipe = write_recipe(tmp_path, out)
    (out / "checkpoint-2").mkdir(parents=True)
    # A new run into a used output_dir: the dry run refuses it as the real run would.
    assert main(["train", str(recipe), "--dry_run", "true"]) == 2
    assert "already holds 1 checkpoint(s)" in capsys.readouterr().err
    # With --overwrite_output_dir it passes, and (a dry run) deletes nothing.
    assert main(["train", str(recipe), "--dry_run", "true", "--overwrite_output_dir", "true"]) == 0
    assert (out / "checkpoint-2").is_dir()
    # An incomplete checkpoint to resume from is named before any work.
    assert main(["train", str(recipe), "--dry_run", "true", "--resume_from_checkpoint", str(out / "checkpoint-2")]) == 2
    assert "checkpoint-2: cannot resume from it" in capsys.readouterr().err

"""`codiemb train` under DeepSpeed ZeRO (the paper's engine), on 2 CPU ranks (gloo): the same model as plain DDP.

Two failures this guards against, both met on the first DeepSpeed run of the recipes:
- the middle-layer term of STS steps (``multi_layer_weight``, on by default as in the reference) indexed the model
  it was given, a ``DeepSpeedEngine``, which forwards attributes but not ``model[0]``;
- the GradCache IR loss (``ir_mini_batch_size``) back-propagates each mini-batch on its own, and ZeRO's gradient
  hooks (ZeRO-2, or ZeRO-1 with ``overlap_comm`` / ``contiguous_gradients`` as ``ds_zero1.json``) refused the second
  gradient of a parameter in one step ("Gradient computed twice for this partition").
Each run trains IR and STS steps (the middle-layer term included) with gradient accumulation and activation
checkpointing; the ZeRO runs must end with the weights of the DDP run trained on the same data, seed and loss.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import free_port
from safetensors.torch import load_file
from test_distributed_cli import run_launcher
from tiny_models import make_tiny_model

REPO = Path(__file__).resolve().parents[1]

pytest.importorskip("deepspeed", reason="DeepSpeed is in the dev extra (pip install -e '.[dev]')")

# The launched runs are behind -m slow for now: in 15 repeated runs on 2026-12-08, two failed at the end of training,
# when the main process reloads the saved model for the final evaluation ("Unrecognized processing class" in the
# output folder: its tokenizer files were not there yet), a race between the ranks' saves under DeepSpeed that is not
# fixed yet. The ZeRO-3 refusal launches nothing and stays in the default run.

# What every recipe here shares: the tiny model, the demo data, small batches, no evaluation before training.
RECIPE_HEAD = (
    "ir_train: [demo:ir_train.jsonl]\nsts_train: [demo:sts_train.jsonl]\nsts_eval: [demo:sts_dev.jsonl]\n"
    "ir_eval_from_sts: false\nmax_eval_records: 8\nir_batch_size: 4\nsts_batch_size: 8\nnum_negatives: 2\n"
    "report_to: [none]\nevaluate_before: false\n"
)


def write_recipe(tmp_path: Path, settings: str) -> Path:
    """``tmp_path/recipe.yaml``: a new tiny model, :data:`RECIPE_HEAD` and the test's own ``settings`` (YAML lines)."""
    make_tiny_model(tmp_path / "tiny")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model_name_or_path: {tmp_path / 'tiny' / 'model'}\n{RECIPE_HEAD}{settings}")
    return recipe


def zero_config(tmp_path: Path, stage: int) -> Path:
    """The shipped ``ds_zero1.json`` with another ZeRO stage, written to ``tmp_path/ds_zero<stage>.json``."""
    config = json.loads((REPO / "recipes/accelerate/ds_zero1.json").read_text())
    config["zero_optimization"]["stage"] = stage
    path = tmp_path / f"ds_zero{stage}.json"
    path.write_text(json.dumps(config))
    return path


def train(tmp_path: Path, name: str, *flags: str) -> Path:
    out = tmp_path / name
    run_launcher(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(free_port()), "-m", "hf_codiemb.cli", "train", "--config", str(tmp_path / "recipe.yaml"),
         "--output_dir", str(out), *flags]
    )  # fmt: skip
    return out


@pytest.mark.distributed
@pytest.mark.slow
def test_zero_1_and_2_train_the_cached_ir_loss_and_the_middle_layer_term_as_ddp_does(tmp_path):
    write_recipe(
        tmp_path,
        "max_train_records: 48\nir_mini_batch_size: 2\nmax_steps: 4\nsave_strategy: steps\nsave_steps: 4\n"
        "logging_steps: 1\neval_strategy: 'no'\ngradient_accumulation_steps: 2\n"
        "activation_checkpointing: true\n",  # as the paper recipes
    )
    shipped = json.loads((REPO / "recipes/accelerate/ds_zero1.json").read_text())["zero_optimization"]
    assert shipped["stage"] == 1 and shipped["overlap_comm"] and shipped["contiguous_gradients"]  # hooks on

    ddp = train(tmp_path, "ddp")
    runs = {
        "zero1": train(tmp_path, "zero1", "--deepspeed", "recipes/accelerate/ds_zero1.json"),
        "zero2": train(tmp_path, "zero2", "--deepspeed", str(zero_config(tmp_path, 2))),
    }
    expected = load_file(ddp / "model.safetensors")
    start = load_file(tmp_path / "tiny" / "model" / "model.safetensors")
    moved = max((expected[key] - start[key]).abs().max().item() for key in expected if key in start)
    assert moved > 1e-4  # the runs train: a difference of 1e-6 below is not "nothing happened"
    for name, out in [("ddp", ddp), *runs.items()]:
        history = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
        tasks = {key for entry in history for key in entry if key.endswith("_train/loss")}
        assert tasks == {"ir_train/loss", "sts_train/loss"}, (name, history)  # both kinds of step ran
    for name, out in runs.items():
        # DeepSpeed's own checkpoint: the optimizer states sharded over the two ranks (ZeRO), not DDP's optimizer.pt.
        shards = sorted(path.name for path in (out / "checkpoint-4" / "global_step4").glob("*optim_states.pt"))
        assert len(shards) == 2 and "zero_pp_rank_1" in shards[1], (name, shards)
        weights = load_file(out / "model.safetensors")
        assert weights.keys() == expected.keys()
        for key, value in expected.items():
            torch.testing.assert_close(weights[key], value, atol=1e-5, rtol=0, msg=lambda text, name=name, key=key: f"{name}: {key}: {text}")


@pytest.mark.distributed
@pytest.mark.slow
def test_accelerate_launch_with_the_shipped_zero1_config_trains(tmp_path):
    """The paper's launch line (recipes/accelerate/deepspeed_zero1.yaml, ``accelerate launch``) on 2 CPU processes:
    one job, ZeRO-1's sharded optimizer states in the checkpoint, IR (GradCache) and STS steps."""
    recipe = write_recipe(
        tmp_path,
        "max_train_records: 48\nir_mini_batch_size: 2\nmax_steps: 4\nsave_strategy: steps\nsave_steps: 4\n"
        f"logging_steps: 1\noutput_dir: {tmp_path / 'out'}\n",
    )
    output = run_launcher(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "recipes/accelerate/deepspeed_zero1.yaml",
         "--num_processes", "2", "--main_process_port", str(free_port()), "-m", "hf_codiemb.cli", "train",
         "--config", str(recipe)]
    )  # fmt: skip
    assert output.count("Model saved to") == 1
    shards = sorted(path.name for path in (tmp_path / "out" / "checkpoint-4" / "global_step4").glob("*optim_states.pt"))
    assert len(shards) == 2, shards
    history = json.loads((tmp_path / "out" / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    assert {key for entry in history for key in entry if key.endswith("_train/loss")} == {"ir_train/loss", "sts_train/loss"}


def test_zero_3_is_refused_before_anything_is_written(tmp_path):
    """ZeRO-3 fails at model loading or saving (see check_deepspeed): one line naming the field, no output folder.
    In a subprocess: transformers keeps the DeepSpeed configuration of parsed arguments in a process-wide reference."""
    import subprocess

    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "hf_codiemb.cli", "train", "recipes/default/config.yaml", "--deepspeed",
         str(zero_config(tmp_path, 3)), "--output_dir", str(out), "--max_train_records", "16"],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert "ZeRO-3 is not supported" in error and "deepspeed" in error and "Traceback" not in proc.stderr, error
    assert not out.exists()


@pytest.mark.distributed
@pytest.mark.slow
def test_lora_adapters_start_and_end_the_same_under_zero_1_as_under_ddp(tmp_path):
    """LoRA adapters are created before the Trainer: `codiemb train` seeds first, so DeepSpeed's set-up (which draws
    random numbers DDP's does not) no longer changes their random initialisation (lora_A differed by 0.1 before)."""
    write_recipe(
        tmp_path,
        "max_train_records: 32\nmax_steps: 2\nsave_strategy: 'no'\neval_strategy: 'no'\nlora_r: 4\nlora_alpha: 8\n",
    )
    ddp = load_file(train(tmp_path, "ddp") / "adapter_model.safetensors")
    zero1 = load_file(train(tmp_path, "zero1", "--deepspeed", "recipes/accelerate/ds_zero1.json") / "adapter_model.safetensors")
    assert ddp.keys() == zero1.keys() and any("lora_A" in key for key in ddp)
    for key, value in ddp.items():
        torch.testing.assert_close(zero1[key], value, atol=1e-5, rtol=0, msg=lambda text, key=key: f"{key}: {text}")


@pytest.mark.distributed
@pytest.mark.slow
def test_a_run_resumed_from_its_zero_1_checkpoint_ends_like_the_uninterrupted_run(tmp_path):
    """Paper-scale runs are long: a ZeRO-1 run (GradCache IR loss) resumed from its step-2 checkpoint (DeepSpeed's
    sharded optimizer states, the RNG states, the batch order) ends with the weights of the run that was not
    interrupted."""
    import shutil

    write_recipe(
        tmp_path,
        "max_train_records: 48\nir_mini_batch_size: 2\nmax_steps: 4\nsave_strategy: steps\nsave_steps: 2\n"
        "eval_strategy: 'no'\n",
    )
    zero1 = ("--deepspeed", "recipes/accelerate/ds_zero1.json")
    whole = train(tmp_path, "whole", *zero1)
    assert (whole / "checkpoint-2" / "global_step2").is_dir()
    shutil.copytree(whole / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")  # as if stopped after step 2
    resumed = train(tmp_path, "resumed", *zero1, "--resume_from_checkpoint", "last")
    expected, weights = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    start = load_file(whole / "checkpoint-2" / "model.safetensors")
    assert max((expected[key] - start[key]).abs().max().item() for key in expected) > 1e-5  # steps 3-4 moved it
    for key, value in expected.items():
        torch.testing.assert_close(weights[key], value, atol=1e-6, rtol=0, msg=lambda text, key=key: f"{key}: {text}")

